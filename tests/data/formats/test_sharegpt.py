"""ShareGPT JSONL: both forms (conversations from/value, messages role/content), image paths and base64 data URIs,
ids and extra fields survive import and export."""

from __future__ import annotations

import base64
import json
import shutil

import pytest
from helpers import FORMAT_FIXTURES, assert_round_trip, import_format

from vlmtune.data.formats.base import content_name
from vlmtune.data.store import BadRecord

FIX = FORMAT_FIXTURES / "sharegpt"
IMG, TEXT = {"type": "image"}, lambda t: {"type": "text", "text": t}


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_import_maps_every_field(tmp_path):
    samples = import_format("sharegpt", FIX / "train.jsonl", tmp_path / "d")
    assert [s.id for s in samples] == ["train-1", "train-2", "train-3", "chat-7", "train-5"]
    assert {(s.split, s.source, s.task) for s in samples} == {("train", "sharegpt", "vqa")}
    demo, system, b64, text_only, two = samples

    assert demo.images == ["images/mllm_demo_data/1.jpg"] * 2 and demo.meta == {}
    assert demo.messages == [
        {"role": "user", "content": [IMG, TEXT("Who are they?")]},
        {"role": "assistant", "content": [TEXT("They're Kane and Gretzka from Bayern Munich.")]},
        {"role": "user", "content": [TEXT("What are they doing?"), IMG]},
        {"role": "assistant", "content": [TEXT("They are celebrating on the soccer field.")]},
    ]
    # the top-level "system" field is the system turn; an image after the text stays after it
    assert system.messages[0] == {"role": "system", "content": [TEXT("You are a helpful assistant.")]}
    assert system.messages[1]["content"] == [TEXT("Describe this picture."), IMG]
    assert system.target == "A green square." and system.images == ["images/mllm_demo_data/2.jpg"]

    uri = _lines(FIX / "train.jsonl")[2]["images"][0]
    data = base64.b64decode(uri.split(",", 1)[1])
    assert b64.images == [content_name(data, ".png")] and (tmp_path / "d" / b64.images[0]).read_bytes() == data
    assert b64.question == "¿De qué color es?" and b64.target == "Azul."

    assert text_only.images == [] and text_only.meta == {"tag": "chitchat"} and text_only.target == "こんにちは"
    assert text_only.messages[0] == {"role": "system", "content": [TEXT("Be brief.")]}
    assert two.messages[0]["content"] == [IMG, IMG, TEXT("What is the difference between the two images?")]
    assert two.images == ["images/mllm_demo_data/2.jpg", "images/mllm_demo_data/3.jpg"]
    assert (tmp_path / "d" / "images" / "mllm_demo_data" / "3.jpg").read_bytes() == (
        FIX / "mllm_demo_data" / "3.jpg").read_bytes()


def test_images_dir_option(tmp_path):
    shutil.copy(FIX / "train.jsonl", tmp_path / "train.jsonl")
    with pytest.raises(BadRecord, match="1.jpg: image file not found"):
        import_format("sharegpt", tmp_path / "train.jsonl", tmp_path / "nope")
    assert len(import_format("sharegpt", tmp_path / "train.jsonl", tmp_path / "d", images=FIX)) == 5


def test_round_trip(tmp_path):
    samples = assert_round_trip("sharegpt", FIX, tmp_path)
    assert len(samples) == 5
    exported = _lines(tmp_path / "exported" / "train.jsonl")
    assert [r["id"] for r in exported] == [s.id for s in samples]
    assert exported[0]["messages"][2] == {"role": "user", "content": "What are they doing?\n<image>"}
    assert exported[1]["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert exported[2]["images"] == [samples[2].images[0]]  # the base64 image as a file under images/
    assert exported[3]["tag"] == "chitchat" and "images" not in exported[3]
    assert (tmp_path / "exported" / "images" / "mllm_demo_data" / "1.jpg").is_file()


def test_bad_records_are_named_and_skipped(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIX, src)
    rows = _lines(FIX / "train.jsonl")
    rows[0]["images"] = rows[0]["images"][:1]  # 2 placeholders, 1 image
    rows[1]["conversations"][1]["value"] = ""  # empty answer
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + [
        '{"messages": [{"role": "user", "content": "Hi"}',  # malformed JSON
        "",  # a blank line is no record
        json.dumps({"messages": [{"role": "user", "content": "<image>?"}, {"role": "assistant", "content": "x"}],
                    "images": ["../../etc/passwd"]}),
        json.dumps({"messages": [{"role": "user", "content": "<image>?"}, {"role": "assistant", "content": "x"}],
                    "images": ["mllm_demo_data/404.jpg"]}),
        json.dumps({"messages": [{"role": "user", "content": "<image>?"}, {"role": "assistant", "content": "x"}],
                    "images": ["https://example.com/cat.jpg"]}),
        json.dumps({"messages": [{"role": "user", "content": "<image>?"}, {"role": "assistant", "content": "x"}],
                    "images": ["data:image/png;base64,!!not base64!!"]}),
        json.dumps({"messages": [{"role": "tool", "content": "{}"}, {"role": "assistant", "content": "x"}]}),
        json.dumps({"id": "chat-7", "messages": [{"role": "user", "content": "Again?"},
                                                 {"role": "assistant", "content": "Yes."}]}),
    ]
    (src / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(BadRecord, match=r"train.jsonl:1: line 1: 2 <image> placeholders but 1 image"):
        import_format("sharegpt", src, tmp_path / "stop")
    samples = import_format("sharegpt", src, tmp_path / "skip", skip_bad=True)
    assert [s.id for s in samples] == ["train-3", "chat-7", "train-5", "chat-7-2"]  # a repeated id gets -2
    rejected = [json.loads(line) for line in (tmp_path / "skip" / "rejected.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejected] == [1, 2, 6, 8, 9, 10, 11, 12]
    errors = [r["error"] for r in rejected]
    assert "turn 1: empty gpt answer" in errors[1]
    assert "malformed JSON" in errors[2]
    assert "escapes the dataset directory" in errors[3]
    assert "404.jpg: image file not found" in errors[4]
    assert "never fetched" in errors[5]
    assert "image 0: invalid base64 image data" in errors[6]
    assert "turn 0: expected {'role': 'user' | 'assistant' | 'system'" in errors[7]
