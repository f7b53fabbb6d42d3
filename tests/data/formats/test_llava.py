"""LLaVA conversation JSON: <image> placement, multi-turn, multi-image and text-only records survive import and
export."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import FORMAT_FIXTURES, assert_round_trip, import_format

from vlmtune.data.formats.llava import placeholder_text, user_parts
from vlmtune.data.store import BadRecord

FIX = FORMAT_FIXTURES / "llava"
JSON = FIX / "llava_v1_5_mix665k.json"
IMG, TEXT = {"type": "image"}, lambda t: {"type": "text", "text": t}


def test_import_maps_every_field(tmp_path):
    samples = import_format("llava", JSON, tmp_path / "d")
    by_id = {s.id: s for s in samples}
    assert [s.id for s in samples] == ["000000033471", "000000033471-2", "2354786", "i6IyJda_0", "689852649"]
    assert {s.split for s in samples} == {"llava_v1_5_mix665k"} and {s.source for s in samples} == {"llava"}
    assert {s.task for s in samples} == {"vqa"}

    bus = by_id["000000033471"]
    assert bus.images == ["images/coco/train2017/000000033471.jpg"] and bus.meta == {} and bus.answers is None
    assert bus.messages == [
        {"role": "user", "content": [IMG, TEXT("What are the colors of the bus in the image?")]},
        {"role": "assistant", "content": [TEXT("The bus in the image is white and red.")]},
        {"role": "user", "content": [TEXT("What feature can be seen on the back of the bus?")]},
        {"role": "assistant", "content": [TEXT("The back of the bus features an advertisement.")]},
    ]
    assert bus.target == "The back of the bus features an advertisement."
    # a repeated id gets -2; an image placeholder after the text is an image part after it
    after = by_id["000000033471-2"]
    assert after.messages[0]["content"] == [
        TEXT("What is the number on the bus?\nAnswer the question using a single word or phrase."), IMG]
    assert after.images == bus.images and after.target == "12"

    cafe = by_id["2354786"]  # a leading system turn is kept
    assert cafe.messages[0] == {"role": "system", "content": [TEXT("Réponds en français.")]}
    assert cafe.question == "De quelle couleur est le café ?" and cafe.target == "Noir ☕"

    text_only = by_id["i6IyJda_0"]
    assert text_only.images == [] and text_only.meta == {"model": ""}
    assert text_only.messages[0] == {"role": "user", "content": [TEXT("Write a haiku about autumn.")]}

    two = by_id["689852649"]  # a list of images, placeholders in two turns, one between two pieces of text
    assert two.images == ["images/ocr_vqa/images/689852649.jpg", "images/coco/train2017/000000052846.jpg"]
    assert two.messages[2]["content"] == [TEXT("Compare it with this photo:"), IMG, TEXT("Which one is brighter?")]
    assert (tmp_path / "d" / "images" / "gqa" / "images" / "2354786.jpg").read_bytes() == (
        FIX / "gqa" / "images" / "2354786.jpg").read_bytes()


def test_images_dir_option_and_directory_source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(JSON, src / "mix.json")
    with pytest.raises(BadRecord, match="image file not found"):  # images are looked for next to the JSON
        import_format("llava", src / "mix.json", tmp_path / "nope")
    assert len(import_format("llava", src / "mix.json", tmp_path / "a", images=FIX)) == 5
    samples = import_format("llava", FIX, tmp_path / "b")  # a directory: its *.json files, images relative to it
    assert [s.id for s in samples][:2] == ["000000033471", "000000033471-2"]
    # the same records as JSON lines
    (src / "mix.jsonl").write_text("".join(json.dumps(r) + "\n" for r in json.loads(JSON.read_text())))
    lines = import_format("llava", src / "mix.jsonl", tmp_path / "c", images=FIX)
    assert [s.to_json() | {"split": "mix"} for s in samples] == [s.to_json() for s in lines]


def test_placeholders_round_trip_through_text():
    for text, parts in [("<image>\nWhat is it?", [IMG, TEXT("What is it?")]),
                        ("What is it?\n<image>", [TEXT("What is it?"), IMG]),
                        ("<image>\n<image>\nSame?", [IMG, IMG, TEXT("Same?")]),
                        ("A\n<image>\nB", [TEXT("A"), IMG, TEXT("B")])]:
        assert user_parts(text) == parts
        assert placeholder_text({"role": "user", "content": parts}) == text
    assert user_parts("<image>Who are they?") == [IMG, TEXT("Who are they?")]


def test_round_trip(tmp_path):
    samples = assert_round_trip("llava", JSON, tmp_path)
    assert len(samples) == 5
    exported = json.loads((tmp_path / "exported" / "llava_v1_5_mix665k.json").read_text())
    assert [r["id"] for r in exported] == [s.id for s in samples]
    assert exported[1]["conversations"][0]["value"] == ("What is the number on the bus?\nAnswer the question using a "
                                                        "single word or phrase.\n<image>")
    assert exported[3] == json.loads(JSON.read_text())[3]  # text-only record, extra field "model" written back
    assert exported[4]["image"] == ["ocr_vqa/images/689852649.jpg", "coco/train2017/000000052846.jpg"]
    assert (tmp_path / "exported" / "ocr_vqa" / "images" / "689852649.jpg").is_file()


def test_bad_records_are_named_and_skipped(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIX, src)
    rows = json.loads(JSON.read_text())
    rows[0]["conversations"][0]["value"] += " <image>"  # 2 placeholders, 1 image
    rows[1]["conversations"][1]["value"] = "  "  # empty answer
    rows.append({"id": "gpt-img", "conversations": [{"from": "human", "value": "Hi"},
                                                    {"from": "gpt", "value": "<image> is a token"}]})
    rows.append({"id": "order", "conversations": [{"from": "gpt", "value": "Hi"}, {"from": "human", "value": "Yo"}]})
    rows.append({"id": "open", "conversations": [{"from": "human", "value": "Hi"}]})
    rows.append({"id": "escape", "image": "../../etc/passwd", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "x"}]})
    rows.append({"id": "missing", "image": "coco/train2017/none.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "x"}]})
    rows.append("not an object")
    rows.append({"id": "sys", "conversations": [{"from": "system", "value": "See <image>"},
                                                {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "x"}]})
    (src / "llava_v1_5_mix665k.json").write_text(json.dumps(rows))
    with pytest.raises(BadRecord, match=r"llava_v1_5_mix665k.json:1: record 1 \(id '000000033471'\): "
                                        r"2 <image> placeholders but 1 image"):
        import_format("llava", src / "llava_v1_5_mix665k.json", tmp_path / "stop")
    samples = import_format("llava", src / "llava_v1_5_mix665k.json", tmp_path / "skip", skip_bad=True)
    assert [s.id for s in samples] == ["2354786", "i6IyJda_0", "689852649"]
    rejected = [json.loads(line) for line in (tmp_path / "skip" / "rejected.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejected] == [1, 2, 6, 7, 8, 9, 10, 11, 12]
    errors = [r["error"] for r in rejected]
    assert "turn 1: empty gpt answer" in errors[1]
    assert "turn 1: a literal <image> in a gpt answer" in errors[2]
    assert "turn 0: expected 'human', got 'gpt'" in errors[3]
    assert "must end with a gpt answer" in errors[4]
    assert "escapes the dataset directory" in errors[5]
    assert "none.jpg: image file not found" in errors[6]
    assert "a record must be a JSON object" in errors[7]
    assert "turn 0: a literal <image> in a system turn" in errors[8]


def test_malformed_json_file_is_named(tmp_path):
    (tmp_path / "broken.json").write_text('[{"id": "1", ')
    with pytest.raises(BadRecord, match=r"broken.json:0: malformed JSON"):
        import_format("llava", tmp_path / "broken.json", tmp_path / "d")
