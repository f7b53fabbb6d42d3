"""ChartQA: human and augmented questions per split, the data tables (exact text) and annotations survive import and
export; chart names that repeat across splits stay apart."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import FORMAT_FIXTURES, assert_round_trip, import_format

from vlmtune.data.store import BadRecord

FIX = FORMAT_FIXTURES / "chartqa" / "ChartQA Dataset"


def test_import_dataset_root(tmp_path):
    samples = import_format("chartqa", FIX, tmp_path / "d")
    assert [s.id for s in samples] == ["test-human-0", "train-human-0", "train-human-1", "train-augmented-0",
                                       "train-augmented-1", "val-human-0", "val-augmented-0"]
    by_id = {s.id: s for s in samples}
    s = by_id["train-human-0"]
    assert s.task == "chartqa" and s.source == "chartqa" and s.split == "train" and s.answers is None
    assert s.messages == [
        {"role": "user",
         "content": [{"type": "image"}, {"type": "text", "text": "What is the value for Côte d'Ivoire?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "62"}]}]
    assert s.images == ["images/train/41699051005347.png"]
    annotation = (FIX / "train" / "annotations" / "41699051005347.json").read_text(encoding="utf-8")
    assert s.meta == {"subset": "human", "imgname": "41699051005347.png",
                      "table": "Entity,Value\nCôte d'Ivoire,62\nGhana,48\nNigeria,55\n",
                      "chart_type": "v_bar", "annotation": annotation}
    aug = by_id["train-augmented-0"]
    assert aug.question == "How many users were there in 2017?" and aug.target == "8.2"
    assert aug.meta["subset"] == "augmented" and "annotation" not in aug.meta
    assert aug.meta["table"].startswith("Characteristic,Number of users in millions\r\n2016,3.1\r\n")  # exact
    assert by_id["test-human-0"].meta == {"subset": "human", "imgname": "multi_col_20396.png"}  # no table file
    # the same chart name in train and val: two images, each the split's own
    assert by_id["val-human-0"].images == ["images/val/two_col_1.png"]
    for split in ("train", "val"):
        assert (tmp_path / "d" / "images" / split / "two_col_1.png").read_bytes() == (
            FIX / split / "png" / "two_col_1.png").read_bytes()


def test_one_split_folder_or_file(tmp_path):
    samples = import_format("chartqa", FIX / "val", tmp_path / "a")
    assert [s.id for s in samples] == ["val-human-0", "val-augmented-0"]
    assert samples[1].meta["table"] == "Characteristic,Share of respondents\nYes,71%\nNo,29%\n"
    samples = import_format("chartqa", FIX / "train" / "train_augmented.json", tmp_path / "b")
    assert [s.id for s in samples] == ["train-augmented-0", "train-augmented-1"]
    images = tmp_path / "charts"  # --images replaces the split's png/ folder
    images.mkdir()
    shutil.copy(FIX / "test" / "png" / "multi_col_20396.png", images / "two_col_1.png")
    samples = import_format("chartqa", FIX / "val", tmp_path / "c", images=images)
    assert len(samples) == 2 and "table" in samples[0].meta
    assert (tmp_path / "c" / "images" / "val" / "two_col_1.png").read_bytes() == (images / "two_col_1.png").read_bytes()
    with pytest.raises(ValueError, match="give one split folder"):
        import_format("chartqa", FIX, tmp_path / "e", images=images)


def test_round_trip(tmp_path):
    samples = assert_round_trip("chartqa", FIX, tmp_path)
    assert len(samples) == 7
    exported = tmp_path / "exported"
    for rel in ("train/tables/two_col_1.csv", "train/tables/41699051005347.csv", "val/tables/two_col_1.csv",
                "train/annotations/41699051005347.json", "val/png/two_col_1.png"):
        assert (exported / rel).read_bytes() == (FIX / rel).read_bytes(), rel
    assert not (exported / "test" / "tables").exists()
    assert json.loads((exported / "train" / "train_human.json").read_text(encoding="utf-8")) == json.loads(
        (FIX / "train" / "train_human.json").read_text(encoding="utf-8"))


def test_bad_records_are_named_and_skipped(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIX, src)
    file = src / "train" / "train_human.json"
    rows = json.loads(file.read_text(encoding="utf-8"))
    rows[1]["label"] = " "  # an empty answer
    rows += [{"imgname": "two_col_99.png", "query": "Missing chart?", "label": "1"},
             {"imgname": "../../../etc/passwd", "query": "Escape?", "label": "1"},
             {"imgname": "two_col_1.png", "query": "", "label": "1"},
             {"imgname": "two_col_1.png", "query": "No label?"},
             "not a record"]
    file.write_text(json.dumps(rows), encoding="utf-8")
    (src / "val" / "val_augmented.json").write_text("[{", encoding="utf-8")
    with pytest.raises(BadRecord, match=r"train_human.json:2: sample 'train-human-1': empty answer"):
        import_format("chartqa", src, tmp_path / "stop")
    samples = import_format("chartqa", src, tmp_path / "skip", skip_bad=True)
    assert [s.id for s in samples] == ["test-human-0", "train-human-0", "train-augmented-0", "train-augmented-1",
                                       "val-human-0"]
    rejected = [json.loads(line) for line in (tmp_path / "skip" / "rejected.jsonl").read_text().splitlines()]
    assert [(r["file"].rsplit("/", 1)[-1], r["line"]) for r in rejected] == [
        ("train_human.json", 2), ("train_human.json", 3), ("train_human.json", 4), ("train_human.json", 5),
        ("train_human.json", 6), ("train_human.json", 7), ("val_augmented.json", 0)]
    errors = [r["error"] for r in rejected]
    assert "empty answer" in errors[0] and "two_col_99.png: image file not found" in errors[1]
    assert "escapes" in errors[2] and "missing or empty 'query'" in errors[3]
    assert "two_col_1.png: missing 'label'" in errors[4] and "must be a JSON object" in errors[5]
    assert "malformed JSON" in errors[6]


def test_malformed_annotation_is_a_bad_record(tmp_path):
    src = tmp_path / "train"
    shutil.copytree(FIX / "train", src)
    (src / "annotations" / "41699051005347.json").write_text('{"type": ', encoding="utf-8")
    samples = import_format("chartqa", src, tmp_path / "d", skip_bad=True)
    assert [s.id for s in samples] == ["train-human-1", "train-augmented-0"]
    errors = (tmp_path / "d" / "rejected.jsonl").read_text()
    assert "malformed annotation annotations/41699051005347.json" in errors


def test_export_of_samples_from_elsewhere(tmp_path):
    """A VQA sample without ChartQA meta: imgname from its image, subset "human", no table."""
    from vlmtune.data.formats import get_format
    from vlmtune.data.sample import Sample, assistant, user

    image = FIX / "test" / "png" / "multi_col_20396.png"
    sample = Sample(id="q1", messages=[user("How many bars?"), assistant("3")], images=["images/x/chart.png"],
                    split="val")
    info = get_format("chartqa").write([(sample, [image])], tmp_path / "out")
    assert info == {"splits": {"val": 1}, "tables": 0}
    assert json.loads((tmp_path / "out" / "val" / "val_human.json").read_text()) == [
        {"imgname": "chart.png", "query": "How many bars?", "label": "3"}]
    assert (tmp_path / "out" / "val" / "png" / "chart.png").read_bytes() == image.read_bytes()
