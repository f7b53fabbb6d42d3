"""`vlmtune data split / stats / show-mask`."""

from __future__ import annotations

import json
import shutil

from helpers import FORMAT_FIXTURES, import_format
from PIL import Image

from vlmtune.cli import main
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.stats import split_dataset
from vlmtune.data.store import read_samples, write_jsonl


def _dataset(root):
    """60 questions over 24 images: 1-3 questions per image, a byte copy of image 0 under another name, and a
    two-image sample that ties images 5 and 6 together."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(24):
        Image.new("RGB", (10, 8 + i), (10 * i, 0, 0)).save(root / f"images/{i}.png")
        for q in range(2 + i % 2):
            rows.append(Sample(id=f"s{i}-{q}", messages=[user(f"Question {q}?"), assistant(f"a{i}")],
                               images=[f"images/{i}.png"]))
    rows = rows[:58]
    shutil.copy(root / "images/0.png", root / "images/copy-of-0.png")
    rows.append(Sample(id="copy", messages=[user("Again?"), assistant("a0")], images=["images/copy-of-0.png"]))
    rows.append(Sample(id="pair", messages=[user("Same?", n_images=2), assistant("no")],
                       images=["images/5.png", "images/6.png"]))
    write_jsonl(root / "manifest.jsonl", [r.to_json() for r in rows])
    return rows


def _content_splits(root):
    """image bytes -> splits of the samples that use them."""
    where: dict[bytes, set] = {}
    for s in read_samples(root)[0]:
        for rel in s.images:
            where.setdefault((root / rel).read_bytes(), set()).add(s.split)
    return where


def test_split_by_image_never_shares_an_image_and_meets_the_ratios(tmp_path, capsys):
    root = tmp_path / "d"
    rows = _dataset(root)
    assert main(["data", "split", str(root), "--ratios", "0.6,0.2,0.2", "--seed", "3"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(len(splits) == 1 for splits in _content_splits(root).values())
    assert sum(info["splits"].values()) == 60 and info["groups"] == 23  # 24 images, copy joined to 0, 5+6 tied
    for name, share in (("train", 36), ("val", 12), ("test", 12)):
        assert abs(info["splits"][name] - share) <= info["largest_group"], info
    after = read_samples(root)[0]
    assert [s.id for s in after] == [r.id for r in rows]  # same samples, same order; only the split changed
    assert [s.messages for s in after] == [r.messages for r in rows]
    first = [s.split for s in after]
    split_dataset(root, (0.6, 0.2, 0.2), seed=3)
    assert [s.split for s in read_samples(root)[0]] == first  # deterministic
    split_dataset(root, (0.6, 0.2, 0.2), seed=4)
    assert [s.split for s in read_samples(root)[0]] != first


def test_split_by_sample_separates_questions_of_one_image(tmp_path):
    root = tmp_path / "d"
    _dataset(root)
    info = split_dataset(root, (0.5, 0.5), by="sample")
    assert info["splits"] == {"train": 30, "val": 30}
    assert any(len(s) > 1 for s in _content_splits(root).values())


def test_bad_ratios_are_refused(tmp_path, capsys):
    assert main(["data", "split", str(tmp_path), "--ratios", "0.8,0.3"]) == 2
    assert "summing to 1" in capsys.readouterr().err


def test_stats_of_an_imported_dataset(tmp_path, capsys):
    import_format("vizwiz", FORMAT_FIXTURES / "vizwiz", tmp_path / "d")
    assert main(["data", "stats", str(tmp_path / "d")]) == 0
    st = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert st["samples"] == 6 and st["splits"] == {"train": 3, "val": 2, "test": 1}
    assert st["images"] == 6 and st["image_sizes"] == {"24x18": 6}
    assert st["references_per_sample"] == {"1": 1, "10": 5}  # the test question has none; the rest ten answers
    assert dict(map(tuple, st["top_answers"]))["phone"] == 1 and st["distinct_answers"] == 5


def test_show_mask_marks_exactly_the_answers(tmp_path, capsys):
    from vlmtune.models import FAMILIES

    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (20, 20), "red").save(root / "images/a.png")
    rows = [Sample(id="one", messages=[user("What colour?"), assistant("red")], images=["images/a.png"]),
            Sample(id="two", messages=[user("What colour?"), assistant("red"), user("Describe the image.", 0),
                                       assistant("a red square")], images=["images/a.png"], task="caption")]
    write_jsonl(root / "manifest.jsonl", [r.to_json() for r in rows])
    tiny = FAMILIES["llava"].tiny()
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.processor.save_pretrained(tmp_path / "m")
    assert main(["data", "show-mask", str(root), "--model", str(tmp_path / "m"), "--n", "2"]) == 0
    out = capsys.readouterr().out
    blocks = out.split("== ")[1:]
    assert blocks[0].count("[[") == 1 and "[[ red</s>]]" in blocks[0] and "<image x" in blocks[0]
    assert blocks[1].count("[[") == 2 and "[[ a red square</s>]]" in blocks[1]
    assert "What colour?" in blocks[0].split("[[")[0]  # the prompt is shown, unmarked
    summary = json.loads(out.strip().splitlines()[-1])["samples"]
    assert [s["trained_text"] for s in summary] == [" red</s>", " red</s> a red square</s>"]
