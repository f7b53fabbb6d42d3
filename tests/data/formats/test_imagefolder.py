"""Hugging Face imagefolder: split folders, metadata.jsonl and metadata.csv, VQA and caption rows, meta columns, ids
for several questions on one image, and metadata.jsonl written back per split."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import FORMAT_FIXTURES, assert_round_trip, import_format

from vlmtune.data.store import BadRecord

FIX = FORMAT_FIXTURES / "imagefolder"
VQA = FIX / "vqa"
CAPTIONS = FIX / "captions"


def _messages(question, answer=None):
    turns = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return turns + ([{"role": "assistant", "content": [{"type": "text", "text": answer}]}] if answer else [])


def test_split_folders(tmp_path):
    samples = import_format("imagefolder", VQA, tmp_path / "d")
    assert [(s.split, s.id) for s in samples] == [
        ("train", "train/0001"), ("train", "train/0001#2"), ("train", "train/charts/0002"),  # two questions, one image
        ("val", "val/0001"), ("val", "val/0004"), ("test", "test/0003")]
    by_id = {s.id: s for s in samples}
    assert by_id["train/0001"].to_json() == {
        "id": "train/0001", "messages": _messages("What colour is the square?", "red"),
        "images": ["images/train/0001.png"], "task": "vqa", "source": "imagefolder", "split": "train",
        "meta": {"question_type": "what color"}}
    assert by_id["train/0001#2"].images == ["images/train/0001.png"]
    assert by_id["train/0001#2"].answers == ["1", "one", "1"] and by_id["train/0001#2"].target == "1"
    chart = by_id["train/charts/0002"]
    assert chart.question == "¿De qué color es el fondo?" and chart.target == "verde"
    assert chart.answers == ["verde", "green", "verde claro"]
    assert chart.images == ["images/train/charts/0002.png"]
    assert chart.meta == {"question_type": "what color", "difficulty": 2}  # JSON types kept
    val = by_id["val/0004"]  # from metadata.csv: quoting undone, other cells kept as text
    assert val.messages == _messages('What does the label say: "gris"?', "gris") and val.answers is None
    assert by_id["val/0001"].question == "Is it blue, or green?" and val.meta == {"question_type": "what"}
    test = by_id["test/0003"]
    assert test.messages == _messages("What is shown?") and test.answers is None
    copied = (tmp_path / "d" / "images" / "val" / "0001.png").read_bytes()
    assert copied == (VQA / "validation" / "0001.png").read_bytes() != (VQA / "train" / "0001.png").read_bytes()


def test_caption_folder(tmp_path):
    samples = import_format("imagefolder", CAPTIONS, tmp_path / "d")
    assert [s.id for s in samples] == ["0001", "sub/0002", "17"]
    assert samples[0].to_json() == {
        "id": "0001", "messages": _messages("Describe the image.", "a black square"), "images": ["images/0001.jpg"],
        "task": "caption", "references": ["a black square"], "source": "imagefolder"}
    assert samples[1].references == ["a white square", "a square, all white"] and samples[1].target == "a white square"
    assert samples[1].meta == {"license": "cc-by-4.0"} and samples[1].images == ["images/sub/0002.jpg"]
    # `caption` wins over `text`, which stays in meta; the id column is the Sample id
    assert samples[2].references == ["un carré violet"] and samples[2].meta == {"text": "purple square alt text"}
    assert all(s.split is None for s in samples)


def test_one_metadata_file(tmp_path):
    samples = import_format("imagefolder", VQA / "validation" / "metadata.csv", tmp_path / "d")
    assert [(s.id, s.split) for s in samples] == [("val/0001", "val"), ("val/0004", "val")]  # split from its folder
    elsewhere = tmp_path / "meta" / "metadata.jsonl"
    elsewhere.parent.mkdir()
    shutil.copy(CAPTIONS / "metadata.jsonl", elsewhere)
    samples = import_format("imagefolder", elsewhere, tmp_path / "e", images=CAPTIONS)
    assert [s.id for s in samples] == ["0001", "sub/0002", "17"]


def test_round_trip_split_folders(tmp_path):
    assert len(assert_round_trip("imagefolder", VQA, tmp_path)) == 6
    out = tmp_path / "exported"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "test/0003.png", "test/metadata.jsonl", "train/0001.png", "train/charts/0002.png", "train/metadata.jsonl",
        "validation/0001.png", "validation/0004.png", "validation/metadata.jsonl"]
    rows = [json.loads(line) for line in (out / "train" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows == [
        {"file_name": "0001.png", "question": "What colour is the square?", "answer": "red",
         "question_type": "what color"},
        {"file_name": "0001.png", "id": "train/0001#2", "question": "How many squares are there?",
         "answers": ["1", "one", "1"], "question_type": "how many"},
        {"file_name": "charts/0002.png", "question": "¿De qué color es el fondo?",
         "answers": ["verde", "green", "verde claro"], "question_type": "what color", "difficulty": 2}]


def test_round_trip_captions(tmp_path):
    assert len(assert_round_trip("imagefolder", CAPTIONS, tmp_path)) == 3
    rows = (tmp_path / "exported" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(r) for r in rows] == [
        {"file_name": "0001.jpg", "text": "a black square"},
        {"file_name": "sub/0002.jpg", "captions": ["a white square", "a square, all white"], "license": "cc-by-4.0"},
        {"file_name": "0003.jpg", "id": "17", "caption": "un carré violet", "text": "purple square alt text"}]


def test_caption_column_priority_and_nulls_survive_export(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(CAPTIONS, src)
    (src / "metadata.jsonl").write_text(
        json.dumps({"file_name": "0001.jpg", "captions": ["one"], "caption": "two", "text": "three"}) + "\n"
        + json.dumps({"file_name": "0003.jpg", "text": "5", "answer": "not a question", "question": None,
                      "captions": None}) + "\n"
        + json.dumps({"file_name": "0001.jpg", "id": "q", "question": "Dark?", "answers": ["yes"], "answer": None,
                      "text": None}) + "\n", encoding="utf-8")
    samples = assert_round_trip("imagefolder", src, tmp_path)
    assert samples[0].references == ["one"] and samples[0].meta == {"caption": "two", "text": "three"}
    # nulls: a caption row's null question and captions are dropped; a VQA row's null text is meta
    assert samples[1].references == ["5"] and samples[1].task == "caption" and samples[1].meta == {
        "answer": "not a question"}
    assert samples[2].task == "vqa" and samples[2].target == "yes" and samples[2].meta == {"text": None}


def _rejected(out):
    return {r["line"]: r["error"] for r in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}


def test_bad_rows_are_named_and_skipped(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(VQA, src)
    bad = ['{"file_name": "0001.png", "question": "Empty?", "answer": "  "}',  # line 4
           '{"file_name": "0001.png", "question": "Truncated?", "answer": ',  # 5
           '{"question": "Where is the image?", "answer": "x"}',  # 6
           '{"file_name": "0099.png", "question": "Missing?", "answer": "x"}',  # 7
           '{"file_name": "../../../etc/passwd", "question": "Escape?", "answer": "x"}',  # 8
           '{"file_name": "0001.png", "question": "Types?", "answers": "one"}',  # 9
           '{"file_name": "0001.png", "label": 3}',  # 10
           '["not", "an", "object"]']  # 11
    with open(src / "train" / "metadata.jsonl", "a", encoding="utf-8") as f:
        f.write("\n".join(bad) + "\n")
    with open(src / "validation" / "metadata.csv", "a", encoding="utf-8") as f:
        f.write('0001.png,"Too few fields?"\n0004.png,,gris,what\n')  # lines 4 and 5
    with pytest.raises(BadRecord, match=r"train/metadata.jsonl:4: 0001.png: empty 'answer'"):
        import_format("imagefolder", src, tmp_path / "stop")
    samples = import_format("imagefolder", src, tmp_path / "skip", skip_bad=True)
    assert len(samples) == 6
    rejected = [json.loads(line) for line in (tmp_path / "skip" / "rejected.jsonl").read_text().splitlines()]
    errors = {(r["file"].rsplit("/", 2)[-2], r["line"]): r["error"] for r in rejected}
    assert sorted(errors) == [("train", n) for n in range(4, 12)] + [("validation", 4), ("validation", 5)]
    assert "malformed JSON" in errors["train", 5]
    assert errors["train", 6] == "missing 'file_name'"
    assert "0099.png: image file not found" in errors["train", 7]
    assert "escapes" in errors["train", 8]
    assert errors["train", 9] == "0001.png: 'answers' must be a non-empty list"
    assert errors["train", 10] == "0001.png: no 'question' nor 'captions' / 'caption' / 'text' column"
    assert errors["train", 11] == "a row must be a JSON object"
    assert errors["validation", 4] == "expected 4 comma-separated fields, got 2"
    assert errors["validation", 5] == "0004.png: empty or non-text 'question'"


def test_layout_errors(tmp_path):
    (tmp_path / "bare" / "train").mkdir(parents=True)
    shutil.copy(CAPTIONS / "0001.jpg", tmp_path / "bare" / "train" / "0001.jpg")
    with pytest.raises(FileNotFoundError, match="no metadata.jsonl or metadata.csv"):
        import_format("imagefolder", tmp_path / "bare", tmp_path / "none")
    src = tmp_path / "both"
    shutil.copytree(CAPTIONS, src)
    (src / "metadata.csv").write_text("file_name,text\n0001.jpg,a black square\n")
    with pytest.raises(ValueError, match="holds both metadata.jsonl and metadata.csv"):
        import_format("imagefolder", src, tmp_path / "out")


def test_csv_quoting_bom_and_line_numbers(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(CAPTIONS, src)
    (src / "metadata.jsonl").unlink()
    (src / "metadata.csv").write_bytes(
        '\ufefffile_name,text,photographer\n'
        '0001.jpg,"a black square,\nseen from above",Zoë\n'  # lines 2-3: one record
        '0003.jpg,,Zoë\n'.encode())  # line 4: empty caption
    with pytest.raises(BadRecord, match=r"metadata.csv:4: 0003.jpg: empty 'text'"):
        import_format("imagefolder", src, tmp_path / "stop")
    samples = import_format("imagefolder", src, tmp_path / "skip", skip_bad=True)
    assert [(s.id, s.target, s.meta) for s in samples] == [
        ("0001", "a black square,\nseen from above", {"photographer": "Zoë"})]


def test_top_level_and_any_split_folder_round_trip(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(CAPTIONS, src)
    (src / "dev").mkdir()
    shutil.copy(CAPTIONS / "0001.jpg", src / "dev" / "x.jpg")
    (src / "dev" / "metadata.jsonl").write_text('{"file_name": "x.jpg", "question": "Dark?", "answer": "yes"}\n')
    samples = assert_round_trip("imagefolder", src, tmp_path)
    assert [(s.id, s.split) for s in samples] == [("0001", None), ("sub/0002", None), ("17", None),
                                                  ("dev/x", "dev")]
    assert (tmp_path / "exported" / "metadata.jsonl").is_file()
    assert (tmp_path / "exported" / "dev" / "metadata.jsonl").is_file()
