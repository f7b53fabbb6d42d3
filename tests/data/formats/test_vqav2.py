"""VQAv2 questions + annotations files: joined by question_id, the ten raw answers, multiple_choice_answer as target,
question/answer types and confidences survive import and export; one image file per COCO image."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import FORMAT_FIXTURES, assert_round_trip, import_format
from PIL import Image

from vlmtune.data.formats import export_dataset, get_format
from vlmtune.data.formats.vqav2 import split_of, subtype_of
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.store import BadRecord, write_dataset

FIX = FORMAT_FIXTURES / "vqav2"
TRAIN_Q = "v2_OpenEnded_mscoco_train2014_questions.json"
TRAIN_A = "v2_mscoco_train2014_annotations.json"


def test_import_directory_layout(tmp_path):
    samples = import_format("vqav2", FIX, tmp_path / "d")
    # question files in name order (test-dev2015, train2014, val2014), questions in file order
    assert [s.id for s in samples] == ["1000", "9000", "9001", "9002", "25000", "42000", "42001"]
    by_id = {s.id: s for s in samples}
    s = by_id["9000"]  # its annotation is not the first in the annotations file: joined by question_id
    assert s.split == "train" and s.task == "vqa" and s.source == "vqav2"
    assert s.images == ["images/COCO_train2014_000000000009.jpg"]
    assert s.question == "What is on the plate?" and s.target == "cake"
    assert s.answers == ["cake"] * 5 + ["dessert"] * 3 + ["crème brûlée", "food"]
    assert s.meta == {"question_type": "what is on the", "answer_type": "other", "image_id": 9, "question_id": 9000,
                      "answer_confidence": ["yes"] * 5 + ["maybe"] * 3 + ["yes", "no"]}
    # the target is multiple_choice_answer; answers stay raw ("Yes" is not lower-cased)
    assert by_id["9002"].target == "yes" and by_id["9002"].answers[6] == "Yes"
    assert by_id["9001"].target == "2" and by_id["9001"].answers[:2] == ["two", "2"]  # not the first answer
    assert by_id["9001"].meta["answer_type"] == "number" and by_id["42001"].split == "val"
    test = by_id["1000"]  # test-dev: no annotations file, test2015 images
    assert test.split == "test-dev" and test.answers is None and test.messages[-1]["role"] == "user"
    assert test.question == "¿Qué hay en la mesa?" and test.images == ["images/COCO_test2015_000000000001.jpg"]
    assert test.meta == {"image_id": 1, "question_id": 1000}
    stored = sorted(p.name for p in (tmp_path / "d" / "images").iterdir())
    assert stored == ["COCO_test2015_000000000001.jpg", "COCO_train2014_000000000009.jpg",
                      "COCO_train2014_000000000025.jpg", "COCO_val2014_000000000042.jpg"]  # shared images once
    assert (tmp_path / "d" / "images" / "COCO_val2014_000000000042.jpg").read_bytes() == (
        FIX / "val2014" / "COCO_val2014_000000000042.jpg").read_bytes()


def test_split_names():
    for subtype, split in [("train2014", "train"), ("val2014", "val"), ("test2015", "test"),
                           ("test-dev2015", "test-dev"), ("minival2014", "minival")]:
        assert split_of(subtype) == split and subtype_of(split) == subtype


def test_questions_file_in_questions_and_annotations_folders(tmp_path):
    root = tmp_path / "vqa"
    (root / "Questions").mkdir(parents=True)
    (root / "Annotations").mkdir()
    shutil.copy(FIX / TRAIN_Q, root / "Questions")
    shutil.copy(FIX / TRAIN_A, root / "Annotations")
    shutil.copytree(FIX / "train2014", root / "train2014")
    samples = import_format("vqav2", root / "Questions" / TRAIN_Q, tmp_path / "d")
    assert [s.id for s in samples] == ["9000", "9001", "9002", "25000"]
    assert all(s.answers and len(s.answers) == 10 for s in samples)
    # --images: the image folder itself, or the COCO root holding train2014/
    for images in (FIX / "train2014", FIX):
        out = tmp_path / f"d-{images.name}"
        again = import_format("vqav2", root / "Questions" / TRAIN_Q, out, images=images)
        assert [s.to_json() for s in again] == [s.to_json() for s in samples]


def test_round_trip(tmp_path):
    samples = assert_round_trip("vqav2", FIX, tmp_path)
    assert len(samples) == 7
    exported = tmp_path / "exported"
    assert not (exported / "v2_mscoco_test-dev2015_annotations.json").exists()
    assert (exported / "test2015" / "COCO_test2015_000000000001.jpg").is_file()
    # the exported files are the official ones, up to the order of the annotations
    for name in (TRAIN_Q, "v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json"):
        assert json.loads((exported / name).read_text()) == json.loads((FIX / name).read_text()), name
    anns = json.loads((exported / TRAIN_A).read_text())["annotations"]
    official = {a["question_id"]: a for a in json.loads((FIX / TRAIN_A).read_text())["annotations"]}
    assert anns == [official[q] for q in (9000, 9001, 9002, 25000)]


def test_export_of_another_source(tmp_path):
    """Samples without VQAv2 ids get an image id per image and question ids image_id * 1000 + n; non-JPEG images are
    re-encoded, since VQAv2 image names end in .jpg."""
    img = Image.new("RGB", (20, 10), (0, 128, 255))
    samples = [Sample("a", [user("Colour?"), assistant("blue")], ["images/x.png"], split="train"),
               Sample("b", [user("How many?"), assistant("3")], ["images/x.png"], split="train",
                      answers=["3", "three"]),
               Sample("c", [user("What is it?"), assistant("kite")], ["images/y.png"], split="train")]
    write_dataset(tmp_path / "ds", [(s, [img]) for s in samples])
    export_dataset(get_format("vqav2"), tmp_path / "ds", tmp_path / "out")
    questions = json.loads((tmp_path / "out" / TRAIN_Q).read_text())["questions"]
    assert questions == [{"image_id": 1, "question": "Colour?", "question_id": 1000},
                         {"image_id": 1, "question": "How many?", "question_id": 1001},
                         {"image_id": 2, "question": "What is it?", "question_id": 2000}]
    anns = json.loads((tmp_path / "out" / TRAIN_A).read_text())["annotations"]
    assert [a["answer_type"] for a in anns] == ["other", "number", "other"]
    assert anns[1]["answers"] == [{"answer": "3", "answer_confidence": "yes", "answer_id": 1},
                                  {"answer": "three", "answer_confidence": "yes", "answer_id": 2}]
    with Image.open(tmp_path / "out" / "train2014" / "COCO_train2014_000000000001.jpg") as im:
        assert im.format == "JPEG" and im.size == (20, 10)
    back = import_format("vqav2", tmp_path / "out", tmp_path / "back")
    assert [(s.id, s.target, s.answers) for s in back] == [("1000", "blue", ["blue"]), ("1001", "3", ["3", "three"]),
                                                           ("2000", "kite", ["kite"])]


def test_bad_records_are_named_and_skipped(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIX, src)
    qfile = json.loads((src / TRAIN_Q).read_text())
    qfile["questions"].insert(1, {"image_id": 9, "question": "Unannotated?", "question_id": 9999})  # no annotation
    qfile["questions"].append({"image_id": 9, "question": " ", "question_id": 9003})  # empty question
    qfile["questions"].append({"image_id": 77, "question": "Missing image?", "question_id": 77000})
    qfile["questions"].append({"image_id": 9, "question": "No id?"})  # malformed
    (src / TRAIN_Q).write_text(json.dumps(qfile))
    afile = json.loads((src / TRAIN_A).read_text())
    afile["annotations"].append({**afile["annotations"][0], "image_id": 77, "question_id": 77000})
    (src / TRAIN_A).write_text(json.dumps(afile))
    afile = json.loads((src / "v2_mscoco_val2014_annotations.json").read_text())
    afile["annotations"][1]["multiple_choice_answer"] = ""  # question 42001: empty answer
    afile["annotations"][0]["answers"][3]["answer"] = " "  # question 42000: an empty human answer
    (src / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(afile))
    escape = {**qfile, "data_subtype": "../../etc", "questions": qfile["questions"][:1]}  # a folder escaping src
    (src / "v2_OpenEnded_mscoco_x2014_questions.json").write_text(json.dumps(escape))
    with pytest.raises(BadRecord, match=rf"{TRAIN_Q}:2: question 1: question_id 9999: no annotation in {TRAIN_A}"):
        import_format("vqav2", src, tmp_path / "stop")
    samples = import_format("vqav2", src, tmp_path / "skip", skip_bad=True)
    assert [s.id for s in samples] == ["1000", "9000", "9001", "9002", "25000"]
    rejected = [json.loads(line) for line in (tmp_path / "skip" / "rejected.jsonl").read_text().splitlines()]
    errors = "\n".join(f"{r['file'].rsplit('/', 1)[-1]}:{r['line']}: {r['error']}" for r in rejected)
    assert len(rejected) == 7, errors
    assert f"{TRAIN_Q}:6: question 5: question_id 9003: missing or empty 'question'" in errors
    assert "sample '77000': " in errors and "COCO_train2014_000000000077.jpg: image file not found" in errors
    assert f"{TRAIN_Q}:8: question 7: missing or non-integer 'question_id'" in errors
    assert "v2_OpenEnded_mscoco_val2014_questions.json:1: sample '42000': empty entry in answers" in errors
    assert "v2_OpenEnded_mscoco_val2014_questions.json:2: sample '42001': empty answer" in errors
    assert "v2_OpenEnded_mscoco_x2014_questions.json:0: data_subtype '../../etc': expected a name like" in errors
