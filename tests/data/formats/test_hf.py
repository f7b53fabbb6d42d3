"""Hugging Face datasets: save_to_disk directories and parquet files (VQA, captions, chat) import to Samples with the
images stored by content, and the save_to_disk export re-imports to identical Samples."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import FORMAT_FIXTURES, assert_round_trip, import_format

from vlmtune.data.formats.base import content_name
from vlmtune.data.formats.hf import sniff
from vlmtune.data.store import BadRecord

FIX = FORMAT_FIXTURES / "hf"


def text(role, s):
    return {"role": role, "content": [{"type": "text", "text": s}]}


def test_save_to_disk_vqav2(tmp_path):
    import datasets

    samples = import_format("hf", FIX / "vqav2_disk", tmp_path / "d")
    assert [(s.id, s.split) for s in samples] == [("458752000", "train"), ("458752001", "train"),
                                                  ("262146000", "train"), ("262148000", "val"), ("262148001", "val")]
    s = samples[1]
    assert s.task == "vqa" and s.source == "hf" and s.answers == ["rojo", "red", "rojo"]
    assert s.messages == [{"role": "user", "content": [{"type": "image"},
                                                       {"type": "text", "text": "¿De qué color es el autobús?"}]},
                          text("assistant", "rojo")]
    assert s.meta == {"question_type": "what color is the", "multiple_choice_answer": "rojo", "image_id": 458752,
                      "answer_type": "other", "question_id": 458752001}
    # the target is multiple_choice_answer ("no"), not the majority of the answers ("yes")
    assert samples[4].target == "no" and samples[4].answers == ["no", "yes", "yes"]
    rows = datasets.load_from_disk(str(FIX / "vqav2_disk")).cast_column("image", datasets.Image(decode=False))
    first = rows["train"][0]["image"]  # PNG bytes under a .jpg path: the bytes decide the suffix
    assert first["path"].endswith(".jpg") and samples[0].images == [content_name(first["bytes"], ".png")]
    assert (tmp_path / "d" / samples[0].images[0]).read_bytes() == first["bytes"]
    assert samples[1].images[0].endswith(".jpg")
    assert samples[3].images == samples[4].images  # the same bytes are stored once


def test_one_saved_dataset_without_a_split_is_train(tmp_path):
    samples = import_format("hf", FIX / "vqav2_disk" / "validation", tmp_path / "d")
    assert [(s.id, s.split) for s in samples] == [("262148000", "train"), ("262148001", "train")]


def test_parquet_captions(tmp_path):
    samples = import_format("hf", FIX / "captions_parquet", tmp_path / "d")
    assert [(s.id, s.split) for s in samples] == [("train-0", "train"), ("train-1", "train"), ("val-0", "val")]
    s = samples[0]
    assert s.task == "caption" and s.references == ["A purple square on white.", "Un carré violet sur fond blanc."]
    prompt = [{"type": "image"}, {"type": "text", "text": "Describe the image."}]
    assert s.messages == [{"role": "user", "content": prompt}, text("assistant", "A purple square on white.")]
    assert s.meta == {"image_id": 9, "file_name": "000000000009.jpg", "license": "by"}  # ClassLabel by name
    assert [x.images[0].rsplit(".", 1)[1] for x in samples] == ["webp", "png", "gif"]
    one = import_format("hf", FIX / "captions_parquet" / "data" / "validation-00000-of-00001.parquet", tmp_path / "v")
    assert [(x.id, x.split, x.references) for x in one] == [("val-0", "val", s.references) for s in samples[2:]]


def test_parquet_chat(tmp_path):
    samples = import_format("hf", FIX / "chat.parquet", tmp_path / "d")
    assert [(s.id, s.split, len(s.images)) for s in samples] == [("chat-001", "train", 1), ("chat-002", "train", 2),
                                                                 ("chat-003", "train", 0)]
    assert samples[1].messages == [
        text("system", "Answer briefly."),
        {"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image"},
                                     {"type": "text", "text": "with"}, {"type": "image"}]},
        text("assistant", "The second is round.")]
    assert samples[0].messages[-1] == text("assistant", "Carré — a square.") and len(samples[0].messages) == 4
    assert samples[0].images[0] == samples[1].images[0] and samples[1].images[1].endswith(".bmp")
    assert samples[2].messages == [text("user", "Say hello."), text("assistant", "Hello!")] and samples[2].meta == {}


@pytest.mark.parametrize("name", ["vqav2_disk", "captions_parquet", "chat.parquet"])
def test_round_trip(tmp_path, name):
    import datasets

    samples = assert_round_trip("hf", FIX / name, tmp_path)
    exported = datasets.load_from_disk(str(tmp_path / "exported"))
    assert isinstance(exported, datasets.DatasetDict)
    assert sum(len(d) for d in exported.values()) == len(samples)
    image_col = "images" if name == "chat.parquet" else "image"
    feature = exported["train"].features[image_col]
    assert isinstance(getattr(feature, "feature", feature), datasets.Image)
    if name != "chat.parquet":
        assert list(exported) == ["train", "validation"]
    assert not (tmp_path / "exported" / ".hf-export").exists()


def _png(tmp_path, name, colour):
    from PIL import Image

    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 18), colour).save(path, "PNG")
    return path


def test_sharegpt_conversations_with_image_paths(tmp_path):
    src = tmp_path / "src"
    a = _png(src, "imgs/a.png", "red")
    b = _png(src, "imgs/b.jpeg", "blue")
    convs = [[{"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "Red."}],
             [{"from": "human", "value": "And this one?"}, {"from": "gpt", "value": "Bleu."}]]
    pq.write_table(pa.table({"image": ["imgs/a.png", str(b)], "conversations": convs}), src / "train.parquet")
    samples = import_format("hf", src / "train.parquet", tmp_path / "d")
    assert [s.id for s in samples] == ["train-0", "train-1"]
    image_then_text = [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]
    assert samples[0].messages == [{"role": "user", "content": image_then_text}, text("assistant", "Red.")]
    # no <image> in the conversation: the image opens the first user turn
    assert samples[1].messages[0] == {"role": "user", "content": [{"type": "image"},
                                                                  {"type": "text", "text": "And this one?"}]}
    assert samples[0].images == [content_name(a.read_bytes(), ".png")]  # a path-only image is named by content too
    assert samples[1].images == [content_name(b.read_bytes(), ".png")]  # PNG bytes, whatever the file name says
    assert_round_trip("hf", src / "train.parquet", tmp_path / "rt")


def test_bad_records_are_named_and_skipped(tmp_path):
    src = tmp_path / "src"
    good = _png(src, "imgs/good.png", "green").read_bytes()
    outside = _png(tmp_path, "outside.png", "red")

    def image(path=None, data=None):
        return {"bytes": data, "path": path}

    rows = [("What?", "green", image("imgs/good.png")),
            ("Empty answer?", " ", image(data=good)),
            ("Escape?", "x", image("../../../etc/passwd")),
            ("Missing?", "x", image("imgs/missing.png")),
            ("Null image?", "x", None),
            ("Unknown bytes?", "x", image(data=b"not an image at all")),
            ("Corrupt PNG?", "x", image(data=b"\x89PNG\r\n\x1a\n broken")),
            (None, "x", image(data=good)),
            ("Absolute inside?", "yes", image(str(src / "imgs" / "good.png"))),
            ("Absolute outside?", "x", image(str(outside)))]
    table = pa.table({"question": [r[0] for r in rows], "answer": [r[1] for r in rows],
                      "image": pa.array([r[2] for r in rows],
                                        pa.struct([("bytes", pa.binary()), ("path", pa.string())]))})
    (src / "valid").mkdir()
    pq.write_table(table, src / "valid" / "rows.parquet")  # the split from the folder name
    (src / "valid" / "zz.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(BadRecord, match=r"rows.parquet:2: sample 'val-1': empty answer"):
        import_format("hf", src, tmp_path / "stop")
    samples = import_format("hf", src, tmp_path / "skip", skip_bad=True)
    assert [(s.id, s.target) for s in samples] == [("val-0", "green"), ("val-8", "yes")]
    assert samples[0].images == samples[1].images == [content_name(good, ".png")]
    rejected = [json.loads(line) for line in (tmp_path / "skip" / "rejected.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejected] == [2, 3, 4, 5, 6, 7, 8, 10, 0]
    errors = [r["error"] for r in rejected]
    assert "empty answer" in errors[0] and "escapes" in errors[1] and "missing.png: image file not found" in errors[2]
    assert "missing image (null in column 'image')" in errors[3] and "unknown format" in errors[4]
    assert "cannot decode image" in errors[5] and "no question, caption or messages" in errors[6]
    assert "escapes" in errors[7] and all(r["file"].endswith("rows.parquet") for r in rejected[:-1])
    assert rejected[-1]["file"].endswith("zz.parquet") and "not a readable parquet file" in errors[-1]
    assert json.loads(rejected[1]["raw"]) == {"question": "Escape?", "answer": "x"}


def test_malformed_messages_are_bad_records(tmp_path):
    src = tmp_path / "chat.parquet"
    messages = [[{"role": "user", "content": "Hi"}, {"role": "robot", "content": "beep"}],
                [{"role": "user", "content": "Two <image> slots <image>"}],
                [{"role": "user", "content": "fine"}, {"role": "assistant", "content": "ok"}]]
    pq.write_table(pa.table({"id": ["a", "b", "c"], "messages": messages}), src)
    samples = import_format("hf", src, tmp_path / "d", skip_bad=True)
    assert [s.id for s in samples] == ["c"]
    errors = (tmp_path / "d" / "rejected.jsonl").read_text()
    assert "messages[1]: unknown role 'robot'" in errors and "2 image slot(s) in the messages but 0 image(s)" in errors


def test_sniff():
    assert sniff(b"\xff\xd8\xff\xe0rest") == ".jpg" and sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == ".webp"
    assert sniff(b"GIF89a") == ".gif" and sniff(b"BM\x00") == ".bmp" and sniff(b"II*\x00") == ".tif"
    assert sniff(b"<svg") is None


def test_export_of_mixed_samples_from_elsewhere(tmp_path):
    """VQA, caption and chat samples in one split: nulls where a row has no value, each row re-imports as its kind;
    non-scalar meta values are written as JSON text, and a meta key naming the image column is refused."""
    from vlmtune.data.formats import get_format
    from vlmtune.data.formats.hf import read
    from vlmtune.data.sample import Sample, assistant, user

    image = _png(tmp_path, "x.png", "red")
    vqa = Sample(id="q", messages=[user("How many?"), assistant("2")], images=["images/x.png"], answers=["2", "two"],
                 split="val", meta={"answer_confidence": ["yes", "no"], "n": 1})
    cap = Sample(id="c", messages=[user("Describe the image."), assistant("A box.")], images=["images/x.png"],
                 task="caption", references=["A box.", "Une boîte."], split="val", meta={"n": 2.5})
    chat = Sample(id="m", messages=[user("Hi", 0), assistant("Hello"), user("Look:"), assistant("Red.")],
                  images=["images/x.png"], split="val")
    info = get_format("hf").write([(vqa, [image]), (cap, [image]), (chat, [image])], tmp_path / "out")
    assert info == {"splits": {"val": 3}, "json_columns": ["answer_confidence"]}
    back = [rec.sample for rec in read(tmp_path / "out", None)]
    assert [(s.id, s.split, s.task) for s in back] == [("q", "val", "vqa"), ("c", "val", "caption"),
                                                       ("m", "val", "vqa")]
    assert back[0].messages == vqa.messages and back[0].answers == ["2", "two"]
    assert back[0].meta == {"answer_confidence": '["yes", "no"]', "n": 1.0}
    assert back[1].messages == cap.messages and back[1].references == cap.references and back[1].meta == {"n": 2.5}
    assert back[2].messages == [user("Hi", 0), assistant("Hello"), user("Look:", 1), assistant("Red.")]
    clash = Sample(id="z", messages=[user("?"), assistant("!")], images=["images/x.png"], meta={"image": "a.png"})
    with pytest.raises(ValueError, match="sample 'z': meta key 'image' clashes"):
        get_format("hf").write([(clash, [image])], tmp_path / "clash")
    cap.meta = {"messages": "not the text"}  # would make the row a chat on re-import
    with pytest.raises(ValueError, match="sample 'c': meta key 'messages' would be read back as the sample's text"):
        get_format("hf").write([(cap, [image])], tmp_path / "clash2")
