"""OpenAI chat fine-tuning JSONL: image_url parts (base64 data URIs, relative paths, file:// URLs) in their place among
the text, system messages, detail and weight survive import and export; http(s) URLs are never fetched."""

from __future__ import annotations

import base64
import json
import shutil

import pytest
from helpers import FORMAT_FIXTURES, assert_round_trip, import_format

from vlmtune.data.formats import export_dataset, get_format
from vlmtune.data.formats.base import content_name
from vlmtune.data.store import BadRecord

FIX = FORMAT_FIXTURES / "openai"
IMG, TEXT = {"type": "image"}, lambda t: {"type": "text", "text": t}


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _name(uri: str) -> str:
    """The dataset path a data URI imports to."""
    head, b64 = uri.split(",", 1)
    return content_name(base64.b64decode(b64), ".jpg" if "jpeg" in head else ".png")


def test_import_base64_lines(tmp_path):
    samples = import_format("openai", FIX / "train.jsonl", tmp_path / "d")
    assert [s.id for s in samples] == ["train-1", "train-2", "train-3", "train-4"]
    assert {(s.split, s.source, s.task) for s in samples} == {("train", "openai", "vqa")}
    rows = _lines(FIX / "train.jsonl")
    art, square, two, text_only = samples

    # OpenAI's own example: the text and the image in two user messages, merged into one user turn in order
    assert art.messages == [
        {"role": "system", "content": [TEXT("You are an assistant that identifies and describes artworks.")]},
        {"role": "user", "content": [TEXT("Describe this artwork."), IMG]},
        {"role": "assistant", "content": [TEXT("This is a painting of a lighthouse.")]},
    ]
    art_uri = rows[0]["messages"][2]["content"][0]["image_url"]["url"]
    assert art.images == [_name(art_uri)] and art.images[0].startswith("images/") and art.meta == {}
    assert (tmp_path / "d" / art.images[0]).read_bytes() == base64.b64decode(art_uri.split(",", 1)[1])

    assert square.messages[0]["content"] == [TEXT("What colour is the square?"), IMG]
    assert square.messages[1] == {"role": "assistant", "content": [TEXT("Rouge — écarlate.")]}
    assert square.target == "Red." and square.meta == {"image_detail": ["low"], "weight": [0, 1]}

    assert two.messages[0]["content"] == [IMG, IMG, TEXT("Which image is brighter?")]
    assert two.images == [_name(p["image_url"]["url"]) for p in rows[2]["messages"][0]["content"][:2]]
    assert two.meta == {"image_detail": [None, "high"]}

    assert text_only.images == [] and text_only.question == "日本の首都は？" and text_only.target == "東京です。"


def test_round_trip_base64(tmp_path):
    samples = assert_round_trip("openai", FIX / "train.jsonl", tmp_path)
    assert len(samples) == 4
    exported = _lines(tmp_path / "exported" / "train.jsonl")
    assert all("id" not in r for r in exported)  # line numbers give the ids back: pure OpenAI lines
    first = _lines(FIX / "train.jsonl")
    assert exported[1] == first[1] | {"messages": first[1]["messages"][:3] + [
        {"role": "assistant", "content": "Red.", "weight": 1}]}
    assert exported[2] == first[2] and exported[3] == first[3]
    assert exported[0]["messages"][1]["content"][1] == first[0]["messages"][2]["content"][0]  # merged, same URI


def test_paths_and_file_urls(tmp_path):
    samples = import_format("openai", FIX / "local", tmp_path / "d")  # a directory: its *.jsonl files
    assert [s.id for s in samples] == ["val-1", "val-2"] and {s.split for s in samples} == {"val"}
    cat, sky = samples
    assert cat.images == ["images/photos/cat.jpg"]
    assert cat.messages[0]["content"] == [TEXT("What is in the photo?"), IMG]
    assert sky.images == ["images/photos/sky.png"] and sky.messages[1]["content"] == [IMG, TEXT("Weather?")]
    assert sky.meta == {"image_detail": ["low"]}
    assert (tmp_path / "d" / "images/photos/cat.jpg").read_bytes() == (FIX / "local/photos/cat.jpg").read_bytes()

    # file:// URLs inside the source directory, and relative paths resolved in --images
    src = tmp_path / "src"
    shutil.copytree(FIX / "local", src)
    rows = _lines(src / "val.jsonl")
    rows[0]["messages"][0]["content"][1]["image_url"]["url"] = (src / "photos" / "cat.jpg").as_uri()
    (src / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [s.to_json() for s in import_format("openai", src / "val.jsonl", tmp_path / "e")] == [
        s.to_json() for s in samples]
    shutil.copy(FIX / "local" / "val.jsonl", tmp_path / "val.jsonl")
    assert len(import_format("openai", tmp_path / "val.jsonl", tmp_path / "f", images=FIX / "local")) == 2


def test_round_trip_from_paths_inlines_the_images(tmp_path):
    """Export inlines every image, so the re-import names them by content; a second round trip is then exact."""
    first = import_format("openai", FIX / "local", tmp_path / "a")
    export_dataset(get_format("openai"), tmp_path / "a", tmp_path / "x1")
    assert [p.name for p in (tmp_path / "x1").iterdir()] == ["val.jsonl"]  # one self-contained file
    url = _lines(tmp_path / "x1" / "val.jsonl")[0]["messages"][0]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    second = import_format("openai", tmp_path / "x1", tmp_path / "b")
    for a, b in zip(first, second, strict=True):
        names = [content_name((tmp_path / "a" / rel).read_bytes(), rel[rel.rfind("."):]) for rel in a.images]
        assert b.to_json() == a.to_json() | {"images": names}
        for old, new in zip(a.images, b.images, strict=True):
            assert (tmp_path / "a" / old).read_bytes() == (tmp_path / "b" / new).read_bytes()
    assert_round_trip("openai", tmp_path / "x1", tmp_path / "again")


def test_ids_survive_export_from_another_source(tmp_path):
    samples = import_format("sharegpt", FORMAT_FIXTURES / "sharegpt", tmp_path / "s")
    export_dataset(get_format("openai"), tmp_path / "s", tmp_path / "x")
    rows = _lines(tmp_path / "x" / "train.jsonl")
    assert ["id" in r for r in rows] == [False, False, False, True, False]  # only "chat-7" is not "train-<line>"
    again = import_format("openai", tmp_path / "x", tmp_path / "o")
    assert [s.id for s in again] == [s.id for s in samples]
    assert [s.messages for s in again] == [s.messages for s in samples]


def test_bad_records_are_named_and_skipped(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIX / "local", src)
    good = _lines(src / "val.jsonl")

    def vqa(url, answer="x"):
        return json.dumps({"messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "?"}]},
            {"role": "assistant", "content": answer}]})

    lines = [json.dumps(good[0]),
             vqa("https://example.com/cat.jpg"),
             vqa("../../etc/passwd"),
             vqa((tmp_path / "outside.jpg").as_uri()),
             vqa("photos/404.jpg"),
             vqa("photos/cat.jpg", answer=" "),
             json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [
                 {"type": "image_url", "image_url": {"url": "photos/cat.jpg"}}]}]}),
             json.dumps({"messages": [{"role": "user", "content": "Hi"}]}),
             json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                                      {"role": "system", "content": "Late"}, {"role": "user", "content": "?"},
                                      {"role": "assistant", "content": "!"}]}),
             '{"messages": [',
             json.dumps(good[1])]
    (src / "val.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(BadRecord, match=r"val.jsonl:2: line 2: image 0: https://example.com/cat.jpg is an http\(s\) "
                                        r"URL; URLs are never fetched"):
        import_format("openai", src, tmp_path / "stop")
    samples = import_format("openai", src, tmp_path / "skip", skip_bad=True)
    assert [s.id for s in samples] == ["val-1", "val-11"]
    rejected = [json.loads(line) for line in (tmp_path / "skip" / "rejected.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejected] == list(range(2, 11))
    errors = [r["error"] for r in rejected]
    assert "never fetched" in errors[0]
    assert "escapes the dataset directory" in errors[1] and "escapes the dataset directory" in errors[2]
    assert "404.jpg: image file not found" in errors[3]
    assert "message 1: empty or missing text" in errors[4]
    assert "message 1: unsupported assistant content part" in errors[5]
    assert "must end with an assistant message" in errors[6]
    assert "message 2: a system message after the conversation started" in errors[7]
    assert "malformed JSON" in errors[8]


def test_read_messages_is_the_one_reading_of_the_message_shape():
    """The format and the server (serve.app.parse_messages) both read messages with read_messages: roles and parts
    in order, a string content as one text part, each image handed to the caller with where it is."""
    from vlmtune.data.formats.openai import MessageError, read_messages

    seen = []
    turns = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": [{"type": "text", "text": "Which?"},
                                          {"type": "image_url", "image_url": {"url": "a.png", "detail": "low"}},
                                          {"type": "image_url", "image_url": "b.png"}]},
             {"role": "assistant", "content": " "}]
    out = list(read_messages(turns, lambda url, detail, k, j: seen.append((url, detail, k, j)), blank_text=True))
    assert out == [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                   {"role": "user", "content": [{"type": "text", "text": "Which?"}, {"type": "image"},
                                                {"type": "image"}]},
                   {"role": "assistant", "content": [{"type": "text", "text": " "}]}]
    assert seen == [("a.png", "low", 1, 1), ("b.png", None, 1, 2)]
    with pytest.raises(MessageError, match="message 2: empty or missing text") as e:
        list(read_messages(turns, lambda *a: None))  # a blank text is refused unless blank_text
    assert e.value.where == "messages[2].content[0]"
    turns[2]["content"] = [{"type": "image_url", "image_url": {"url": "c.png"}}]
    with pytest.raises(MessageError, match=r"message 2: unsupported assistant content part \(images are accepted "
                                           r"in user messages only\)") as e:
        list(read_messages(turns, lambda *a: None))
    assert e.value.where == "messages[2].content[0]"
