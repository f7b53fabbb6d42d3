"""The on-disk dataset: round trip, atomic writes, and bad input named by file and line."""

import json

import pytest
from PIL import Image

from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.store import MANIFEST, BadRecord, iter_records, read_samples, write_dataset


def _sample(i, split="train", answer="red"):
    return Sample(id=f"s{i}", messages=[user("What colour?"), assistant(answer)], images=[f"images/{i}.png"],
                  answers=[answer], split=split, source="t")


def _write(root, n=4):
    items = [(_sample(i, "train" if i % 2 else "test"), [Image.new("RGB", (8, 8), (i * 40, 0, 0))]) for i in range(n)]
    write_dataset(root, items)
    return root


def test_round_trip_and_splits(tmp_path):
    _write(tmp_path)
    everything, bad = read_samples(tmp_path)
    assert [s.id for s in everything] == ["s0", "s1", "s2", "s3"] and not bad
    train, _ = read_samples(tmp_path, split="train")
    assert [s.id for s in train] == ["s1", "s3"]
    assert everything[1] == _sample(1, "train")
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files left behind"


def _lines(root):
    return (root / MANIFEST).read_text().splitlines()


def _set_lines(root, lines):
    (root / MANIFEST).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("corrupt, expected", [
    ("missing_image", "image file not found"),
    ("corrupt_image", "cannot decode image"),
    ("truncated_image", "cannot decode image"),
    ("malformed_json", "malformed JSON"),
    ("empty_answer", "empty answer"),
    ("escape", "escapes the dataset directory"),
    ("absolute", "must be relative"),
    ("slot_mismatch", "image slot"),
    ("unknown_field", "unknown field"),
])
def test_bad_record_names_file_and_line(tmp_path, corrupt, expected):
    root = _write(tmp_path)
    lines = _lines(root)
    row = json.loads(lines[2])  # line 3: sample s2
    if corrupt == "missing_image":
        (root / "images/2.png").unlink()
    elif corrupt == "corrupt_image":
        (root / "images/2.png").write_bytes(b"not a png at all")
    elif corrupt == "truncated_image":
        data = (root / "images/2.png").read_bytes()
        (root / "images/2.png").write_bytes(data[: len(data) // 2])
    elif corrupt == "malformed_json":
        lines[2] = lines[2][:-5]
    elif corrupt == "empty_answer":
        row["messages"][1]["content"][0]["text"] = "   "
    elif corrupt == "escape":
        row["images"] = ["../outside.png"]
    elif corrupt == "absolute":
        row["images"] = ["/etc/passwd"]
    elif corrupt == "slot_mismatch":
        row["images"] = ["images/2.png", "images/1.png"]
    elif corrupt == "unknown_field":
        row["colour"] = "red"
    if corrupt not in ("malformed_json",) and "image" not in corrupt:
        lines[2] = json.dumps(row)
    _set_lines(root, lines)

    with pytest.raises(BadRecord) as e:
        read_samples(root)
    assert f"{MANIFEST}:3:" in str(e.value) and expected in str(e.value)

    good, bad = read_samples(root, skip_bad=True)
    assert [s.id for s in good] == ["s0", "s1", "s3"], "the rest is kept"
    assert [(b.line, expected in b.reason) for b in bad] == [(3, True)]
    assert bad[0].to_json()["raw"] == lines[2]


def test_iter_records_streams(tmp_path):
    _write(tmp_path, n=3)
    it = iter_records(tmp_path)
    assert next(it).id == "s0"  # a generator: nothing else read yet


def test_missing_manifest_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.jsonl"):
        read_samples(tmp_path)


def test_duplicate_ids_are_rejected(tmp_path):
    root = _write(tmp_path, n=2)
    lines = _lines(root)
    _set_lines(root, lines + [lines[0]])
    with pytest.raises(BadRecord, match="duplicate sample id 's0'"):
        read_samples(root)
