"""The import driver: streaming, resumable after a kill, bad records stop or are skipped, image names never clash."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vlmtune.data.formats.base import Format, ImageRef, Imported, import_dataset
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.store import BadRecord, read_samples


def _format(image_dir, n, kill_at=None, bad_at=(), clash_at=None):
    """A format of `n` one-question records over two images; `kill_at` raises like a killed process would."""

    def read(src, images):
        for i in range(n):
            if i == kill_at:
                raise KeyboardInterrupt("killed")
            if i in bad_at:
                yield BadRecord(src, i + 1, f"record {i}: malformed")
                continue
            name = "a.png" if i % 2 else "b.png"
            source = image_dir / ("b.png" if i == clash_at else name)
            sample = Sample(id=f"q{i}", messages=[user(f"Question {i}?"), assistant(f"answer {i}")],
                            images=[f"images/{name}"], split="train" if i % 10 else "val")
            yield Imported(sample, [ImageRef(path=source)], src, i + 1)

    return Format("fake", "test format", "-", read, lambda items, dest: {})


@pytest.fixture()
def image_dir(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    Image.new("RGB", (8, 8), "red").save(d / "a.png")
    Image.new("RGB", (8, 9), "blue").save(d / "b.png")
    return d


def test_a_killed_import_resumes_where_it_stopped(tmp_path, image_dir):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        import_dataset(_format(image_dir, 2500, kill_at=1700), image_dir, out, progress=False)
    assert not (out / "manifest.jsonl").exists()  # only a complete import has a manifest
    state = json.loads((out / ".import-state.json").read_text())
    assert state["records"] == 1000  # the last saved state; records 1000-1699 were written after it
    with open(out / "manifest.jsonl.partial", "a") as f:
        f.write('{"id": "half a li')  # what a kill mid-write leaves
    info = import_dataset(_format(image_dir, 2500), image_dir, out, progress=False)
    samples, bad = read_samples(out)
    assert not bad and [s.id for s in samples] == [f"q{i}" for i in range(2500)]
    assert info["samples"] == 2500 and info["splits"] == {"val": 250, "train": 2250}
    assert not (out / ".import-state.json").exists() and not (out / "manifest.jsonl.partial").exists()
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        import_dataset(_format(image_dir, 3), image_dir, out, progress=False)


def test_a_bad_record_stops_and_the_rerun_with_skip_bad_continues(tmp_path, image_dir):
    out = tmp_path / "out"
    fmt = _format(image_dir, 30, bad_at=(12, 20))
    with pytest.raises(BadRecord, match=r"src:13: record 12: malformed \(--skip-bad skips"):
        import_dataset(fmt, image_dir, out, progress=False)
    assert json.loads((out / ".import-state.json").read_text())["records"] == 12
    with pytest.raises(ValueError, match="holds an unfinished import of fake"):
        import_dataset(Format("other", "", "-", fmt.read, fmt.write), image_dir, out, progress=False)
    info = import_dataset(fmt, image_dir, out, skip_bad=True, progress=False)
    assert info["samples"] == 28 and info["rejected"] == 2
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejected] == [13, 21]


def test_two_different_images_under_one_name_are_refused(tmp_path, image_dir):
    out = tmp_path / "out"
    info = import_dataset(_format(image_dir, 6, clash_at=3), image_dir, out, skip_bad=True, progress=False)
    assert info["rejected"] == 1
    error = json.loads((out / "rejected.jsonl").read_text())["error"]
    assert "sample 'q3': images/a.png: another image" in error and "a.png) is already stored" in error
