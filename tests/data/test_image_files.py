"""Image paths that are not a readable regular file, and images too thin to feed a processor: each record is named
(file:line, sample id, the path and why) and skippable, in `data check`, training, eval and predict; a FIFO is never
opened (it would block the reader until something writes to it, i.e. forever).

    fifo       images/fifo.png is a FIFO              dir        images/dir.png is a directory
    nul        a NUL in the path (JSON "\\u0000")      surrogate  a lone surrogate in the path (JSON "\\udcff")
    bytes      a raw 0xff byte in the manifest line   thin       a 2x300 PNG: 150:1, over the 50:1 limit
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading

import pytest
from helpers import save_builtin, tiny_run_cfg
from PIL import Image

from vlmtune.cli import main
from vlmtune.config import RunCfg
from vlmtune.data.images import (
    MAX_ASPECT_RATIO,
    ImageError,
    check_image_cost,
    load_image,
    read_image_file,
    resolve_inside,
)
from vlmtune.data.store import BadRecord

BAD = {  # sample id -> what its error must say
    "fifo": "fifo.png: not a regular file (a FIFO (named pipe))",
    "dir": "dir.png: not a regular file (a directory)",
    "nul": "image path 'images/nul\\x00.png' contains a NUL character",
    "surrogate": "image path 'images/\\udcff.png' is not valid UTF-8 text",
    "bytes": "sample 'bytes': not valid UTF-8: byte 0xff",
    "thin": "2x300 pixels has an aspect ratio of 150.0:1, over the limit of 50:1",
}
GOOD = 48  # the fashion fixture's samples, lines 1-48; the bad ones follow in the order of BAD


class FifoGuard:
    """Opens `path` for writing whenever a reader has opened it: a reader blocked in open() is released (it then
    reads an empty file) and the open is recorded, so a regression fails instead of hanging the suite."""

    def __init__(self, path):
        os.mkfifo(path)
        self.path, self.opened, self.stop = path, 0, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self):
        while not self.stop.wait(0.01):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while no reader has it open
            except OSError as e:
                if e.errno not in (errno.ENXIO, errno.ENOENT):
                    raise
                continue
            self.opened += 1
            os.close(fd)

    def close(self):
        self.stop.set()
        self.thread.join()


@pytest.fixture
def data(tmp_path, fashion_dir):
    """The fashion fixture (48 good samples, lines 1-48) plus one bad record per kind (lines 49-54), every one in the
    train split; `guard` watches the FIFO."""
    out = tmp_path / "data"
    shutil.copytree(fashion_dir, out)
    guard = FifoGuard(out / "images" / "fifo.png")
    (out / "images" / "dir.png").mkdir()
    Image.new("RGB", (2, 300), "red").save(out / "images" / "thin.png")
    template = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    paths = {"fifo": "images/fifo.png", "dir": "images/dir.png", "nul": "images/nul\x00.png",
             "surrogate": "images/\udcff.png", "bytes": "images/BYTE.png", "thin": "images/thin.png"}
    lines = []
    for name, path in paths.items():
        row = {**template, "id": name, "images": [path], "split": "train"}
        lines.append(json.dumps(row).encode().replace(b"BYTE", b"\xff"))  # json.dumps escapes \0 and \udcff
    with open(out / "manifest.jsonl", "ab") as f:
        f.write(b"".join(line + b"\n" for line in lines))
    yield out, guard
    guard.close()
    assert not guard.opened, "the FIFO was opened"


def only(data_dir, name: str):
    """The dataset with the good records and only the bad record `name` (kept on its own line number)."""
    lines = (data_dir / "manifest.jsonl").read_bytes().splitlines(keepends=True)
    keep = [line if i < GOOD or i == GOOD + list(BAD).index(name) else b"\n" for i, line in enumerate(lines)]
    (data_dir / "manifest.jsonl").write_bytes(b"".join(keep))


def test_only_regular_files_are_read(tmp_path):
    guard = FifoGuard(tmp_path / "fifo.png")
    try:
        with pytest.raises(ImageError, match=r"fifo.png: not a regular file \(a FIFO \(named pipe\)\)"):
            load_image(tmp_path / "fifo.png")
        with pytest.raises(ImageError, match=r"not a regular file \(a directory\)"):
            load_image(tmp_path)
        with pytest.raises(ImageError, match=r"/dev/null: not a regular file \(a character device\)"):
            read_image_file("/dev/null")
        with pytest.raises(ImageError, match="image file not found"):
            load_image(tmp_path / "missing.png")
    finally:
        guard.close()
    assert not guard.opened


def test_paths_that_are_not_text_are_refused(tmp_path):
    with pytest.raises(ImageError, match=r"'a\\x00.png' contains a NUL character"):
        resolve_inside(tmp_path, "a\x00.png")
    for rel in ("\udcff.png", "\ud800.png"):  # an undecodable byte; a surrogate no file system name can hold
        with pytest.raises(ImageError, match="is not valid UTF-8 text"):
            resolve_inside(tmp_path, rel)
    assert resolve_inside(tmp_path, "ção.png") == tmp_path.resolve() / "ção.png"


def test_thin_images_are_refused_from_the_header(tmp_path, monkeypatch):
    """The 1x100000 PNG of the issue (a few hundred bytes; ~4 GB once a processor scales its short side up) is
    refused before a pixel is decoded."""
    Image.new("L", (1, 100_000)).save(tmp_path / "thin.png")
    Image.new("L", (50, 1)).save(tmp_path / "ok.png")
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("pixels decoded"))
    with pytest.raises(ImageError, match=r"thin.png: 1x100000 pixels has an aspect ratio of 100000.0:1, over the "
                                         r"limit of 50:1"):
        load_image(tmp_path / "thin.png")
    monkeypatch.undo()
    assert load_image(tmp_path / "ok.png").size == (50, 1), "50:1 itself is allowed"
    assert load_image(tmp_path / "thin.png", max_aspect=200_000).size == (1, 100_000)


def test_image_cost_limits():
    from transformers import CLIPImageProcessor

    assert MAX_ASPECT_RATIO == 50
    clip = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                              do_center_crop=False)
    check_image_cost(336, 336, "x", image_processor=clip)
    with pytest.raises(ImageError, match=r"x: 7000x8000 pixels exceeds the limit of 50000000"):
        check_image_cost(7000, 8000, "x")
    with pytest.raises(ImageError, match=r"x: 3x200 pixels has an aspect ratio of 66.7:1, over the limit of 50:1"):
        check_image_cost(3, 200, "x")
    with pytest.raises(ImageError, match=r"x: 3x200 pixels has an aspect ratio of 66.7:1, over the limit of 60:1"):
        check_image_cost(3, 200, "x", max_aspect=60)
    # 20x800 (40:1) is within the aspect limit, but CLIP scales its short side to 336: 336x13440
    with pytest.raises(ImageError, match=r"x: 20x800 pixels becomes 336x13440 = 4515840 pixels in the model's image "
                                         r"processor, over the limit of 1000000"):
        check_image_cost(20, 800, "x", image_processor=clip, max_resized_pixels=1_000_000)


def test_data_check_names_every_record(data, tmp_path, capsys):
    root, _ = data
    out = tmp_path / "report.json"
    assert main(["data", "check", str(root), "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    found = {e["line"]: e for kind in report["errors"].values() for e in kind}
    assert sorted(found) == list(range(GOOD + 1, GOOD + 1 + len(BAD))), "every bad record, nothing else"
    for line, (name, why) in enumerate(BAD.items(), start=GOOD + 1):
        assert why in found[line]["message"], (name, found[line])
        assert f"'{name}'" in found[line]["message"] or found[line]["sample"] == name


@pytest.mark.parametrize("name", list(BAD))
def test_training_stops_before_step_0_naming_the_record(data, tmp_path, name):
    from vlmtune.train.loop import train

    root, _ = data
    only(root, name)
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, root))
    line = GOOD + 1 + list(BAD).index(name)
    with pytest.raises(BadRecord, match=rf"manifest.jsonl:{line}: ") as e:
        train(cfg)
    assert BAD[name] in str(e.value) and f"'{name}'" in str(e.value)
    assert not (cfg.run_dir / "checkpoints").exists(), "stopped before step 0"


def test_training_with_skip_bad_lists_them_and_trains_on_the_rest(data, tmp_path):
    from vlmtune.train.loop import train

    root, _ = data
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, root, data={"skip_bad": True},
                                        train={"max_steps": 2, "eval_every": 0, "save_every": 2}))
    train(cfg)
    rejected = {r["line"]: r for r in map(json.loads, (cfg.run_dir / "rejected.jsonl").read_text().splitlines())}
    assert sorted(rejected) == list(range(GOOD + 1, GOOD + 1 + len(BAD)))
    for line, why in enumerate(BAD.values(), start=GOOD + 1):
        assert why in rejected[line]["error"] and rejected[line]["file"].endswith("manifest.jsonl")
    assert (cfg.run_dir / "checkpoints" / "step-2").is_dir()


@pytest.mark.parametrize("verb", ["predict", "eval"])
def test_predict_and_eval_name_them_or_skip_them(data, tmp_path, capsys, verb):
    root, _ = data
    model = save_builtin(tmp_path / "model")
    out = tmp_path / ("p.jsonl" if verb == "predict" else "ev")
    args = [verb, "--model", str(model), "--data", str(root), "--split", "train", "--out", str(out),
            "--max-new-tokens", "1", "--limit", "2"]
    assert main(args) == 2
    assert f"manifest.jsonl:{GOOD + 1}: sample 'fifo'" in capsys.readouterr().err
    assert main(args + ["--skip-bad"]) == 0
    rejected = (out.parent if verb == "predict" else out) / "rejected.jsonl"
    lines = [json.loads(x)["line"] for x in rejected.read_text().splitlines()]
    assert lines == list(range(GOOD + 1, GOOD + 1 + len(BAD)))
