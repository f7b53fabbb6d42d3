"""VizWiz VQA JSON: the ten answers, their confidences, answer_type and answerable survive import and export."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import FORMAT_FIXTURES, assert_round_trip, import_format

from vlmtune.data.formats.vizwiz import majority
from vlmtune.data.store import BadRecord

FIX = FORMAT_FIXTURES / "vizwiz"


def test_import_directory_layout(tmp_path):
    samples = import_format("vizwiz", FIX, tmp_path / "d")
    by_id = {s.id: s for s in samples}
    assert sorted(by_id) == ["VizWiz_test_00000000", "VizWiz_train_00000000", "VizWiz_train_00000001",
                             "VizWiz_train_00000002", "VizWiz_val_00000000", "VizWiz_val_00000001"]
    s = by_id["VizWiz_train_00000000"]
    assert s.split == "train" and s.images == ["images/VizWiz_train_00000000.jpg"] and s.task == "vqa"
    assert s.question == "What is this?" and s.target == "phone"  # majority of 6 x phone, 3 x cell phone
    assert s.answers == ["phone"] * 6 + ["cell phone"] * 3 + ["unanswerable"]  # raw, never normalised
    assert s.meta == {"answer_confidence": ["yes"] * 6 + ["maybe"] * 3 + ["no"], "answer_type": "other",
                      "answerable": 1}
    assert by_id["VizWiz_val_00000001"].meta["answerable"] == 0
    test = by_id["VizWiz_test_00000000"]
    assert test.answers is None and test.messages[-1]["role"] == "user" and test.question == "Qué dice esta etiqueta?"
    assert (tmp_path / "d" / "images" / "VizWiz_val_00000000.jpg").read_bytes() == (
        FIX / "val" / "VizWiz_val_00000000.jpg").read_bytes()


def test_majority_ties_go_to_the_first_given():
    assert majority(["red", "dark red", "dark red", "red"]) == "red"
    assert majority(["3", "three", "three"]) == "three"


def test_single_file_with_images_dir(tmp_path):
    samples = import_format("vizwiz", FIX / "Annotations" / "val.json", tmp_path / "d", images=FIX / "val")
    assert [s.id for s in samples] == ["VizWiz_val_00000000", "VizWiz_val_00000001"]
    assert {s.split for s in samples} == {"val"}


def test_round_trip(tmp_path):
    samples = assert_round_trip("vizwiz", FIX, tmp_path)
    assert len(samples) == 6


def test_bad_records_are_named_and_skipped(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIX, src)
    rows = json.loads((src / "Annotations" / "train.json").read_text())
    rows[1]["answers"] = [{"answer": " ", "answer_confidence": "yes"}]  # an empty answer
    rows.append({"image": "VizWiz_train_00000099.jpg", "question": "Missing image?", "answers": [{"answer": "x"}]})
    rows.append({"image": "../../etc/passwd", "question": "Escape?", "answers": [{"answer": "x"}]})
    (src / "Annotations" / "train.json").write_text(json.dumps(rows))
    (src / "val" / "VizWiz_val_00000000.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(BadRecord, match=r"train.json:2: sample 'VizWiz_train_00000001': empty answer"):
        import_format("vizwiz", src, tmp_path / "stop")
    samples = import_format("vizwiz", src, tmp_path / "skip", skip_bad=True)
    assert len(samples) == 4  # 6 good - the empty answer - the corrupt jpeg
    rejected = [json.loads(line) for line in (tmp_path / "skip" / "rejected.jsonl").read_text().splitlines()]
    errors = "\n".join(r["error"] for r in rejected)
    assert len(rejected) == 4
    assert "empty answer" in errors and "VizWiz_train_00000099.jpg: image file not found" in errors
    assert "escapes" in errors and "VizWiz_val_00000000.jpg: cannot decode image" in errors
    assert not (tmp_path / "skip" / "images" / "VizWiz_val_00000000.jpg").exists()  # the corrupt file is not kept
    assert json.loads(rejected[0]["raw"])["id"] == "VizWiz_train_00000001"  # the rejected record, to fix and retry
