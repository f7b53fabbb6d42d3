"""Every importer that reads answers or captions takes strings only: a null answer is a bad record naming file and
record, not the training answer "None"; an object is not its repr; a number is not str() of it. And annotation files
nested deeper than Python's JSON parser can follow are bad records naming the file, never a RecursionError."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import FORMAT_FIXTURES, import_format
from PIL import Image

from vlmtune.data.store import MAX_JSON_DEPTH, BadRecord


def _rejected(out) -> dict[int, str]:
    return {r["line"]: r["error"] for r in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}


def test_vizwiz_answers_must_be_strings(tmp_path):
    src = tmp_path / "vizwiz"
    shutil.copytree(FORMAT_FIXTURES / "vizwiz", src)
    file = src / "Annotations" / "val.json"
    rows = json.loads(file.read_text())
    good = rows[0]
    wrong = [None, {"text": "three"}, 3, ["three"]]
    for value in wrong:
        row = json.loads(json.dumps(good))
        row["answers"][4]["answer"] = value
        rows.append(row)
    file.write_text(json.dumps(rows))
    first = len(rows) - len(wrong) + 1  # record numbers count from 1
    with pytest.raises(BadRecord) as e:
        import_format("vizwiz", file, tmp_path / "stop", images=src / "val")
    assert f"val.json:{first}: record {first - 1}: VizWiz_val_00000000.jpg: answers[4].answer must be a string, " \
           "got null None" in str(e.value)

    samples = import_format("vizwiz", file, tmp_path / "d", images=src / "val", skip_bad=True)
    assert len(samples) == len(rows) - len(wrong) and all(a != "None" for s in samples for a in s.answers)
    errors = _rejected(tmp_path / "d")
    assert list(errors) == list(range(first, first + len(wrong)))
    for line, kind in zip(errors, ["null None", "object {'text': 'three'}", "number 3", "list ['three']"],
                          strict=True):
        assert f"answers[4].answer must be a string, got {kind}" in errors[line], errors[line]


def test_chartqa_label_must_be_a_string(tmp_path):
    src = tmp_path / "val"
    shutil.copytree(FORMAT_FIXTURES / "chartqa" / "ChartQA Dataset" / "val", src)
    file = src / "val_human.json"
    rows = json.loads(file.read_text())
    rows += [{**rows[0], "label": 8.20}, {**rows[0], "label": None}, {**rows[0], "label": {"value": "71"}}]
    file.write_text(json.dumps(rows))
    samples = import_format("chartqa", file, tmp_path / "d", skip_bad=True)
    assert [s.target for s in samples] == ["71"]
    errors = _rejected(tmp_path / "d")
    assert "'label' must be a string, got number 8.2" in errors[2]
    assert "missing 'label'" in errors[3] and "'label' must be a string, got object" in errors[4]


def test_imagefolder_answers_and_captions_must_be_strings(tmp_path):
    src = tmp_path / "vqa"
    shutil.copytree(FORMAT_FIXTURES / "imagefolder" / "vqa" / "train", src)
    lines = (src / "metadata.jsonl").read_text().splitlines()
    lines += [json.dumps({"file_name": "0001.png", "question": "How many?", "answer": 1}),  # line 4
              json.dumps({"file_name": "0001.png", "question": "Which?", "answers": ["a", {"b": 1}]}),  # 5
              json.dumps({"file_name": "0001.png", "caption": ["a", "list"]})]  # 6
    (src / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    samples = import_format("imagefolder", src, tmp_path / "d", skip_bad=True)
    assert len(samples) == 3
    errors = _rejected(tmp_path / "d")
    assert "'answer' must be a string, got number 1" in errors[4]
    assert "'answers[1]' must be a string, got object" in errors[5]
    assert "'caption' must be a string, got list" in errors[6]


def test_hf_answers_must_be_strings(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (8, 8), "red").save(src / "a.png")
    pq.write_table(pa.table({"image": ["a.png", "a.png"], "question": ["Colour?", "How many?"],
                             "answer": ["red", None]}), src / "train.parquet")  # a null answer: no target
    pq.write_table(pa.table({"image": ["a.png"], "question": ["How many?"], "answer": [3]}),
                   src / "test.parquet")  # an integer column
    samples = import_format("hf", src, tmp_path / "d", skip_bad=True)
    assert [(s.question, s.target if s.messages[-1]["role"] == "assistant" else None) for s in samples] == [
        ("Colour?", "red"), ("How many?", None)]
    rejected = [json.loads(x) for x in (tmp_path / "d" / "rejected.jsonl").read_text().splitlines()]
    assert [(r["file"].endswith("test.parquet"), r["line"]) for r in rejected] == [(True, 1)]
    assert "'answer' must be a string, got number 3" in rejected[0]["error"]


DEEP = "[" * 100_000 + "]" * 100_000
"""Python's JSON parser stops here with a RecursionError."""


def _deep_object(depth: int) -> str:
    return '{"k": ' * depth + "1" + "}" * depth


WHOLE_FILE = {  # format -> (file to write, the path to import)
    "vizwiz": ("val.json", "val.json"),
    "vqav2": ("v2_OpenEnded_mscoco_val2014_questions.json", "v2_OpenEnded_mscoco_val2014_questions.json"),
    "coco": ("captions_val2014.json", "captions_val2014.json"),
    "chartqa": ("val_human.json", "val_human.json"),
    "llava": ("conversations.json", "conversations.json"),
}
LINES = {"llava": "conversations.jsonl", "sharegpt": "train.jsonl", "openai": "train.jsonl",
         "imagefolder": "metadata.jsonl"}


@pytest.mark.parametrize("deep", ["parser_limit", "over_max_depth"])
@pytest.mark.parametrize("fmt", WHOLE_FILE)
def test_a_deeply_nested_annotation_file_is_named_not_a_recursion_error(tmp_path, fmt, deep):
    name, arg = WHOLE_FILE[fmt]
    (tmp_path / name).write_text(DEEP if deep == "parser_limit" else _deep_object(MAX_JSON_DEPTH + 1))
    with pytest.raises(BadRecord) as e:
        import_format(fmt, tmp_path / arg, tmp_path / "d", images=tmp_path)
    assert f"{tmp_path / name}:0: malformed JSON: nested deeper than {MAX_JSON_DEPTH} arrays/objects" in str(e.value)


@pytest.mark.parametrize("fmt", LINES)
def test_a_deeply_nested_line_is_a_bad_record_and_the_rest_is_read(tmp_path, fmt):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    good = {"llava": {"id": "g", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nQ?"},
                                                                      {"from": "gpt", "value": "A."}]},
            "sharegpt": {"id": "g", "images": ["a.png"], "messages": [{"role": "user", "content": "<image>Q?"},
                                                                      {"role": "assistant", "content": "A."}]},
            "openai": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.png"}},
                                                                 {"type": "text", "text": "Q?"}]},
                                    {"role": "assistant", "content": "A."}]},
            "imagefolder": {"file_name": "a.png", "question": "Q?", "answer": "A."}}[fmt]
    deep_meta = {**good, "extra": json.loads(_deep_object(MAX_JSON_DEPTH))}  # parses; too deep for a manifest
    file = tmp_path / LINES[fmt]
    file.write_text("\n".join([json.dumps(good), DEEP, json.dumps(deep_meta)]) + "\n")
    samples = import_format(fmt, file, tmp_path / "d", skip_bad=True)
    assert [s.target for s in samples] == ["A."]
    errors = _rejected(tmp_path / "d")
    assert set(errors) == {2, 3}
    assert all(f"nested deeper than {MAX_JSON_DEPTH} arrays/objects" in e for e in errors.values()), errors


# ---------------------------------------------------------------- found by tests/fuzz/test_annotations.py


def test_a_turn_whose_speaker_is_not_a_string_is_a_bad_record(tmp_path):
    """`"from": []` met `who not in ROLES` (a dict lookup) and stopped the import with TypeError: unhashable (llava,
    sharegpt; hf's chat column had the same lookup)."""
    lines = (FORMAT_FIXTURES / "sharegpt" / "train.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    rows[0]["conversations"][0]["from"] = ["human"]
    rows[2]["messages"][1]["role"] = {"name": "assistant"}
    (tmp_path / "sharegpt").mkdir()
    file = tmp_path / "sharegpt" / "train.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = import_format("sharegpt", file, tmp_path / "s", images=FORMAT_FIXTURES / "sharegpt", skip_bad=True)
    assert len(samples) == len(rows) - 2 and sorted(_rejected(tmp_path / "s")) == [1, 3]

    rows = json.loads((FORMAT_FIXTURES / "llava" / "llava_v1_5_mix665k.json").read_text())
    rows[1]["conversations"][0]["from"] = ["human"]
    rows[2]["conversations"][1]["from"] = {"name": "gpt"}
    file = tmp_path / "mix.json"
    file.write_text(json.dumps(rows))
    samples = import_format("llava", file, tmp_path / "d", images=FORMAT_FIXTURES / "llava", skip_bad=True)
    assert len(samples) == len(rows) - 2
    errors = _rejected(tmp_path / "d")
    assert sorted(errors) == [2, 3] and "turn 0: expected {'from': 'human' | 'gpt' | 'system'" in errors[2]


@pytest.mark.parametrize("fmt", ["vizwiz", "chartqa"])
def test_an_image_name_too_long_for_the_file_system_is_a_bad_record(tmp_path, fmt):
    """A name over the file system's 255 bytes made stat() raise OSError (File name too long) where a missing file
    was expected: the image copy (every format) and ChartQA's table lookup stopped the import with a traceback."""
    long = "x" * 300 + ".png"
    if fmt == "vizwiz":
        src = tmp_path / "vizwiz"
        shutil.copytree(FORMAT_FIXTURES / "vizwiz", src)
        file, images = src / "Annotations" / "val.json", src / "val"
        rows = json.loads(file.read_text())
        rows.append({**rows[0], "image": long})
    else:
        src = tmp_path / "val"
        shutil.copytree(FORMAT_FIXTURES / "chartqa" / "ChartQA Dataset" / "val", src)
        file, images = src / "val_human.json", None
        rows = json.loads(file.read_text())
        rows.append({**rows[0], "imgname": long})
    file.write_text(json.dumps(rows))
    samples = import_format(fmt, file, tmp_path / "d", images=images, skip_bad=True)
    assert len(samples) == len(rows) - 1
    errors = _rejected(tmp_path / "d")
    assert list(errors) == [len(rows)] and "File name too long" in errors[len(rows)], errors


def test_a_lone_surrogate_in_a_record_does_not_stop_the_import(tmp_path):
    """A "\\udcff" escape in an annotation file is a lone surrogate in Python, which UTF-8 cannot write: the manifest
    line of a caption holding one, or the rejected.jsonl line of a bad record holding one, ended the whole import
    (exit status 2, "'utf-8' codec can't encode") even with --skip-bad. Such a line is written with JSON escapes: the
    caption is kept as it was given (`data check` names it as text that is not valid Unicode)."""
    src = tmp_path / "vizwiz"
    shutil.copytree(FORMAT_FIXTURES / "vizwiz", src)
    file = src / "Annotations" / "train.json"
    rows = json.loads(file.read_text())
    rows[0]["question"] = "What is th\udcffis?"  # kept: the text check is data check's
    rows[1]["image"] = "missing-\ud800.jpg"  # a bad record: no such image
    file.write_text(json.dumps(rows))
    samples = import_format("vizwiz", file, tmp_path / "d", images=src / "train", skip_bad=True)
    assert [s.question for s in samples] == ["What is th\udcffis?", rows[2]["question"]]
    assert list(_rejected(tmp_path / "d")) == [2]
    (tmp_path / "d" / "manifest.jsonl").read_text(encoding="utf-8")  # valid UTF-8 throughout


def test_hf_a_chat_role_that_is_not_a_string_is_a_bad_record(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (8, 8), "red").save(src / "a.png")
    chat = [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "red"}]
    pq.write_table(pa.table({"image": ["a.png"], "messages": [chat]}), src / "train.parquet")
    listed = [{"role": ["user"], "content": "<image>Colour?"}, {"role": ["assistant"], "content": "red"}]
    pq.write_table(pa.table({"image": ["a.png"], "messages": [listed]}), src / "test.parquet")
    samples = import_format("hf", src, tmp_path / "d", skip_bad=True)
    assert [s.target for s in samples] == ["red"]
    [rejected] = [json.loads(x) for x in (tmp_path / "d" / "rejected.jsonl").read_text().splitlines()]
    assert rejected["file"].endswith("test.parquet") and "unknown role ['user']" in rejected["error"]


def test_an_exported_json_file_holding_a_lone_surrogate_is_written_and_reads_back(tmp_path):
    """A text read from a "\\udcff" escape cannot be written as UTF-8: written as \\u escapes instead, which read
    back to the same string (export used to stop with "utf-8 codec can't encode")."""
    from vlmtune.data.formats.base import write_json

    obj = [{"image": "a.jpg", "answer": "red\udcff"}, {"image": "b.jpg", "answer": "azul"}]
    write_json(tmp_path / "out.json", obj)
    assert json.loads((tmp_path / "out.json").read_text(encoding="utf-8")) == obj
    write_json(tmp_path / "plain.json", obj[1:])
    assert '"azul"' in (tmp_path / "plain.json").read_text(encoding="utf-8")
