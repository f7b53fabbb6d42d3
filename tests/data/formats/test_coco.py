"""COCO captions files and Karpathy's dataset_coco.json: one caption Sample per image with every caption in file order,
the COCO ids and image fields (captions) or the Karpathy split, ids and tokens survive import and export, each variant
in its own layout."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import FORMAT_FIXTURES, assert_round_trip, import_format
from PIL import Image

from vlmtune.data.formats import export_dataset, get_format
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.store import BadRecord, write_dataset

FIX = FORMAT_FIXTURES / "coco"
KARPATHY = FIX / "karpathy" / "dataset_coco.json"
PROMPT = [{"type": "image"}, {"type": "text", "text": "Describe the image."}]


def test_captions_directory(tmp_path):
    samples = import_format("coco", FIX, tmp_path / "d")
    assert [(s.id, s.split) for s in samples] == [("9", "train"), ("25", "train"), ("42", "val"), ("73", "val")]
    s = samples[0]
    assert s.task == "caption" and s.source == "coco" and s.images == ["images/COCO_train2014_000000000009.jpg"]
    assert s.messages == [{"role": "user", "content": PROMPT},
                          assistant("Closeup of bins of food that include broccoli and bread.")]
    # the image's captions in file order (not by id; interleaved with another image's)
    assert s.references == ["Closeup of bins of food that include broccoli and bread.",
                            "A meal is presented in brightly colored plastic trays.",
                            "there are containers filled with different kinds of foods"]
    assert s.meta == {"image_id": 9, "caption_ids": [661977, 661611, 663627], "license": 3,
                      "coco_url": "http://images.cocodataset.org/train2014/COCO_train2014_000000000009.jpg",
                      "height": 18, "width": 24, "date_captured": "2013-11-19 20:40:11",
                      "flickr_url": "http://farm4.staticflickr.com/4001/9_abc_z.jpg"}
    assert samples[1].references[1] == "A giraffe standing up nearby a tree "  # raw, never stripped
    assert samples[2].target == "A café table with a crème brûlée and a spoon." and samples[2].answers is None
    assert (tmp_path / "d" / "images" / "COCO_val2014_000000000073.jpg").read_bytes() == (
        FIX / "val2014" / "COCO_val2014_000000000073.jpg").read_bytes()


def test_captions_file_and_images_dir(tmp_path):
    ann = FIX / "annotations" / "captions_val2014.json"
    default = import_format("coco", ann, tmp_path / "default")  # val2014/ found beside annotations/
    assert [s.id for s in default] == ["42", "73"] and {s.split for s in default} == {"val"}
    for images in (FIX / "val2014", FIX):  # the image folder itself, or the folder holding val2014/
        again = import_format("coco", ann, tmp_path / f"d-{images.name}", images=images)
        assert [s.to_json() for s in again] == [s.to_json() for s in default]


def test_karpathy_split_file(tmp_path):
    samples = import_format("coco", KARPATHY, tmp_path / "d", images=FIX)
    assert [(s.id, s.split, s.meta["karpathy_split"]) for s in samples] == [
        ("42", "test", "test"), ("73", "train", "restval"), ("9", "train", "train"), ("25", "val", "val")]
    s = samples[0]
    assert s.task == "caption" and s.source == "coco" and s.images == ["images/val2014/COCO_val2014_000000000042.jpg"]
    assert s.messages == [{"role": "user", "content": PROMPT},
                          assistant("A café table with a crème brûlée and a spoon.")]
    assert s.references == ["A café table with a crème brûlée and a spoon.", "Dessert served on a small white plate. "]
    assert s.meta == {"karpathy_split": "test", "cocoid": 42, "imgid": 0, "sentids": [770337, 771687],
                      "tokens": [["a", "café", "table", "with", "a", "crème", "brûlée", "and", "a", "spoon"],
                                 ["dessert", "served", "on", "a", "small", "white", "plate"]]}
    # the variant comes from the content, not the file name
    renamed = tmp_path / "splits.json"
    shutil.copy(KARPATHY, renamed)
    again = import_format("coco", renamed, tmp_path / "again", images=FIX)
    assert [x.to_json() for x in again] == [x.to_json() for x in samples]


def test_round_trip_captions(tmp_path):
    samples = assert_round_trip("coco", FIX, tmp_path)
    assert len(samples) == 4
    exported = tmp_path / "exported"
    assert not (exported / "dataset_coco.json").exists()
    for name in ("captions_train2014.json", "captions_val2014.json"):
        got, official = (json.loads((d / "annotations" / name).read_text()) for d in (exported, FIX))
        assert got["images"] == official["images"] and got["annotations"] == sorted(
            official["annotations"], key=lambda a: [i["id"] for i in official["images"]].index(a["image_id"]))


def test_round_trip_karpathy(tmp_path):
    samples = assert_round_trip("coco", KARPATHY, tmp_path, images=FIX)
    assert len(samples) == 4
    exported = tmp_path / "exported"
    assert json.loads((exported / "dataset_coco.json").read_text()) == json.loads(KARPATHY.read_text())
    assert (exported / "val2014" / "COCO_val2014_000000000073.jpg").is_file()
    assert not (exported / "annotations").exists()


def test_export_of_another_source(tmp_path):
    """Samples from elsewhere become COCO captions: one image record per image (its samples' captions together), new
    image and caption ids, height and width read from the image."""
    img = Image.new("RGB", (20, 10), (0, 128, 255))
    samples = [Sample("a", [user("Describe."), assistant("A blue square.")], ["images/x.png"], task="caption",
                      references=["A blue square.", "Blue."], split="train"),
               Sample("b", [user("Describe."), assistant("Sky blue.")], ["images/x.png"], task="caption",
                      split="train"),
               Sample("c", [user("Describe."), assistant("Another one.")], ["images/sub/y.png"], task="caption")]
    write_dataset(tmp_path / "ds", [(s, [img]) for s in samples])
    export_dataset(get_format("coco"), tmp_path / "ds", tmp_path / "out")
    train = json.loads((tmp_path / "out" / "annotations" / "captions_train2014.json").read_text())
    assert train["images"] == [{"file_name": "x.png", "height": 10, "width": 20, "id": 1}]
    assert train["annotations"] == [{"image_id": 1, "id": 1, "caption": "A blue square."},
                                    {"image_id": 1, "id": 2, "caption": "Blue."},
                                    {"image_id": 1, "id": 3, "caption": "Sky blue."}]
    rest = json.loads((tmp_path / "out" / "annotations" / "captions_all2014.json").read_text())
    assert rest["images"][0]["file_name"] == "sub/y.png" and rest["images"][0]["id"] == 2
    assert (tmp_path / "out" / "all2014" / "sub" / "y.png").is_file()
    back = import_format("coco", tmp_path / "out", tmp_path / "back")
    assert [(s.id, s.split, s.images, s.references) for s in back] == [
        ("2", "all", ["images/sub/y.png"], ["Another one."]),
        ("1", "train", ["images/x.png"], ["A blue square.", "Blue.", "Sky blue."])]


def test_bad_captions_are_named_and_skipped(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIX, src)
    path = src / "annotations" / "captions_val2014.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["caption"] = " "  # image 42: its first caption (the target) is empty
    data["images"] += [{"file_name": "COCO_val2014_000000000099.jpg", "id": 99},  # no such file
                       {"file_name": "../../secret.jpg", "id": 98},  # escapes the image folder
                       {"file_name": "COCO_val2014_000000000097.jpg"},  # no id
                       {"file_name": "COCO_val2014_000000000073.jpg", "id": 96}]  # no captions
    data["annotations"] += [{"image_id": 99, "id": 5, "caption": "Missing."},
                            {"image_id": 98, "id": 6, "caption": "Escaping."},
                            {"image_id": 73, "id": 7, "caption": 12},  # not a string
                            {"image_id": 12345, "id": 8, "caption": "No such image."}]
    path.write_text(json.dumps(data))
    with pytest.raises(BadRecord, match=r"captions_val2014.json:1: sample '42': empty caption"):
        import_format("coco", src, tmp_path / "stop")
    samples = import_format("coco", src, tmp_path / "skip", skip_bad=True)
    assert [s.id for s in samples] == ["9", "25"]
    rejected = [json.loads(line) for line in (tmp_path / "skip" / "rejected.jsonl").read_text().splitlines()]
    errors = "\n".join(f"{r['file'].rsplit('/', 1)[-1]}:{r['line']}: {r['error']}" for r in rejected)
    assert len(rejected) == 7, errors
    assert "COCO_val2014_000000000099.jpg: image file not found" in errors
    assert "captions_val2014.json:4: image 3: " in errors and "escapes" in errors
    assert "captions_val2014.json:5: image 4: missing or non-integer 'id'" in errors
    assert "captions_val2014.json:6: image 5: image id 96: no captions" in errors
    assert "image id 73: a caption needs an integer 'id' and a string 'caption'" in errors
    assert "captions_val2014.json:7: annotation 6: image_id 12345 names no image" in errors


def test_bad_karpathy_records_are_named_and_skipped(tmp_path):
    data = json.loads(KARPATHY.read_text())
    data["images"][1]["sentences"] = []
    data["images"][2]["filepath"] = "../.."
    data["images"][3]["sentences"][0]["raw"] = ""
    del data["images"][0]["cocoid"]
    (tmp_path / "dataset_coco.json").write_text(json.dumps(data))
    with pytest.raises(BadRecord, match=r"dataset_coco.json:1: image 0: missing or non-integer 'cocoid'"):
        import_format("coco", tmp_path / "dataset_coco.json", tmp_path / "stop", images=FIX)
    with pytest.raises(ValueError, match="no samples imported"):
        import_format("coco", tmp_path / "dataset_coco.json", tmp_path / "skip", images=FIX, skip_bad=True)
    rejected = [json.loads(line) for line in (tmp_path / "skip" / "rejected.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejected] == [1, 2, 3, 4]
    assert "cocoid 73: 'sentences' must be a non-empty list" in rejected[1]["error"]
    assert "escapes" in rejected[2]["error"] and "sample '25': empty caption" in rejected[3]["error"]


def test_neither_variant_is_named(tmp_path):
    (tmp_path / "instances_val2014.json").write_text(json.dumps(
        {"images": [], "annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1], "category_id": 3, "id": 1}]}))
    with pytest.raises(BadRecord, match=r"instances_val2014.json:0: a COCO instances/keypoints file, not captions"):
        import_format("coco", tmp_path / "instances_val2014.json", tmp_path / "d")
