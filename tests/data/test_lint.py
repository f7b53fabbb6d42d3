"""`vlmtune data check`: the image-token budget of a model for given image sizes."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vlmtune.cli import main
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import FAMILIES


@pytest.mark.parametrize("name", ["llava", "qwen2_vl", "idefics3", "llama4"])
def test_image_tokens_reported_for_a_saved_model_match_its_encode(name, tmp_path, capsys):
    family = FAMILIES[name]
    tiny = family.tiny()
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    assert main(["data", "check", "--model", str(tmp_path), "--image-size", "64x48", "--image-size", "200x100"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["family"] == name and set(report["image_tokens"]) == {"64x48", "200x100"}
    image_ids = getattr(tiny.processor, "image_token_ids", None) or [tiny.processor.image_token_id]
    sample = Sample(id="s", messages=[user("What colour?"), assistant("red")], images=["a.png"])
    for size, n in report["image_tokens"].items():
        w, h = map(int, size.split("x"))
        batch = family.encode(tiny.processor, [sample], [[Image.new("RGB", (w, h), "red")]], "generate", 4096)
        assert int(torch.isin(batch.inputs["input_ids"][0], torch.tensor(image_ids)).sum()) == n, size
    if name in ("qwen2_vl", "llama4"):  # the count depends on the size (Llama 4: its tiles; llava: fixed)
        assert len(set(report["image_tokens"].values())) == 2


def test_bad_arguments_are_named(tmp_path, capsys):
    assert main(["data", "check", "--image-size", "640x480"]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert main(["data", "check", "--model", str(tmp_path), "--image-size", "640by480"]) == 2
    assert "expected WIDTHxHEIGHT" in capsys.readouterr().err
    assert main(["data", "check", "--model", str(tmp_path / "nope"), "--image-size", "64x64"]) == 2
    assert f"no such run directory: {tmp_path / 'nope'}" in capsys.readouterr().err


# ---------------------------------------------------------------- the dataset linter

def _line(sid, images, question="What colour is the top?", answer="red", split="train", slots=None):
    content = [{"type": "image"}] * (len(images) if slots is None else slots) + [{"type": "text", "text": question}]
    return json.dumps({"id": sid, "images": images, "split": split, "messages": [
        {"role": "user", "content": content}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]})


@pytest.fixture()
def faulty(tmp_path):
    """A dataset with one of every fault the linter knows, and good samples around them."""
    import numpy as np

    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    rgb = Image.new("RGB", (40, 30), (200, 30, 30))
    rgb.save(root / "images/good.png")
    Image.new("RGB", (40, 30), (30, 30, 200)).save(root / "images/good2.png")
    (root / "images/leak.png").write_bytes((root / "images/good.png").read_bytes())  # same content, other name
    Image.new("CMYK", (40, 30), (0, 50, 50, 0)).save(root / "images/cmyk.jpg")
    Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)).save(root / "images/deep.png")
    pal = Image.new("P", (40, 30), 1)
    pal.info["transparency"] = 0
    pal.save(root / "images/palette.png", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    Image.new("RGB", (40, 30), "green").save(root / "images/rotated.jpg", exif=exif)
    png = (root / "images/good.png").read_bytes()
    (root / "images/truncated.png").write_bytes(png[: len(png) // 2])
    Image.new("L", (400, 300)).save(root / "images/bomb.png")  # over the test's pixel limit
    lines = [
        _line("ok-1", ["images/good.png"]),
        _line("ok-2", ["images/good2.png"], "Is there a pattern?", "no"),
        "{not json",
        _line("empty", ["images/good.png"], answer="  "),
        _line("escape", ["../outside.png"]),
        _line("missing", ["images/nope.png"]),
        _line("slots", ["images/good.png"], slots=2),
        _line("ok-1", ["images/good2.png"], "Again?"),  # duplicate id
        _line("corrupt", ["images/truncated.png"]),
        _line("bomb", ["images/bomb.png"]),
        _line("placeholder-answer", ["images/good2.png"], "What does the sign say?", "it says <image>"),
        _line("placeholder-text", ["images/good2.png"], "<image>\nWhat is it?"),
        _line("leak", ["images/leak.png"], split="test"),
        _line("cmyk", ["images/cmyk.jpg"]),
        _line("deep", ["images/deep.png"]),
        _line("palette", ["images/palette.png"]),
        _line("rotated", ["images/rotated.jpg"]),
        _line("twice", ["images/good.png"]),  # same image and prompt as ok-1
        _line("two-images", ["images/good.png", "images/good2.png"], "Which is red?", "the first"),
        _line("long", ["images/good2.png"], "Describe every detail of the garment. " * 12),
    ]
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _errors(report, kind):
    return {(e["line"], e["sample"]) for e in report["errors"].get(kind, [])}


def test_every_fault_is_found_and_named(faulty):
    from vlmtune.data.lint import check_dataset

    r = check_dataset(faulty, max_pixels=100_000, progress=False)
    assert not r["ok"]
    bad = {e["line"]: e["message"] for e in r["errors"]["bad_record"]}
    assert set(bad) == {3, 4, 5, 6, 7}
    assert "malformed JSON" in bad[3] and "empty answer" in bad[4] and "escapes" in bad[5]
    assert "not found" in bad[6] and "2 image slot(s) in messages but 1 image(s)" in bad[7]
    assert _errors(r, "duplicate_id") == {(8, "ok-1")}
    images = {e["sample"]: e["message"] for e in r["errors"]["image"]}
    assert set(images) == {"corrupt", "bomb"}
    assert "cannot decode" in images["corrupt"] and "exceeds the limit of 100000" in images["bomb"]
    assert _errors(r, "placeholder_in_answer") == {(11, "placeholder-answer")}
    assert _errors(r, "placeholder_in_text") == {(12, "placeholder-text")}
    assert _errors(r, "split_leak") == {(13, "leak")}
    assert "the same image as sample 'ok-1' of split 'train'" in r["errors"]["split_leak"][0]["message"]
    assert r["n_errors"] == 5 + 1 + 2 + 1 + 1 + 1
    modes = {e["sample"]: e["message"] for e in r["warnings"]["image_mode"]}
    assert set(modes) == {"cmyk", "deep", "palette"}
    assert "CMYK" in modes["cmyk"] and "16-bit" in modes["deep"] and "transparency" in modes["palette"]
    assert r["warnings"]["exif_orientation"][0]["sample"] == "rotated"
    assert "rotated on load to 30x40" in r["warnings"]["exif_orientation"][0]["message"]
    assert [w["sample"] for w in r["warnings"]["duplicate_sample"]] == ["twice"]
    assert tuple(r["answers"]["top"][0]) == ("red", 11) and r["splits"] == {"train": 13, "test": 1}


def test_model_token_lengths_and_family_limits(faulty, tmp_path):
    from vlmtune.data.lint import check_dataset
    from vlmtune.runs import load_processor

    tiny = FAMILIES["llava"].tiny()
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.processor.save_pretrained(tmp_path / "m")
    r = check_dataset(faulty, *load_processor(tmp_path / "m"), max_length=60, max_pixels=100_000, progress=False)
    t = r["tokens"]
    assert t["family"] == "llava" and t["max_length"] == 60
    # every sample whose images load (llava takes two images), but the two whose literal <image> text would break
    # encoding: refused by the record checks, they are not encoded at all
    assert sum(c for _, _, c in t["histogram"]) == 10
    assert _errors(r, "placeholder_in_answer") | _errors(r, "placeholder_in_text") == {
        (11, "placeholder-answer"), (12, "placeholder-text")}
    assert "encode" not in r["errors"]
    long = {x["sample"]: x["tokens"] for x in t["too_long"]}
    assert "long" in long and long["long"] > 60 and t["max"] == max(long.values())
    assert _errors(r, "too_long") >= {(20, "long")}
    # a family name checks what the family can take, without a processor
    r = check_dataset(faulty, FAMILIES["pix2struct"], max_pixels=100_000, progress=False)
    assert _errors(r, "family") == {(19, "two-images")} and "tokens" not in r


def test_cli_exit_status_and_report(faulty, fashion_dir, tmp_path, capsys):
    assert main(["data", "check", str(faulty)]) == 1
    report = json.loads((faulty / "check_report.json").read_text())
    assert report["n_errors"] > 0 and "bad_record" in report["errors"]
    assert "error bad_record x5: line 3" in capsys.readouterr().err
    out = tmp_path / "r.json"
    assert main(["data", "check", str(fashion_dir), "--out", str(out)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["ok"] and last["n_errors"] == 0 and json.loads(out.read_text())["samples"] == 48
