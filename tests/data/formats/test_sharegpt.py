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


# ---------------------------------------------------------------- preference pairs (LLaMA-Factory, ms-swift)

DPO = FORMAT_FIXTURES / "sharegpt_dpo"


def test_preference_pairs_in_both_layouts(tmp_path):
    samples = import_format("sharegpt", DPO, tmp_path / "d")
    assert [s.id for s in samples] == ["llamafactory_rlhf_v-1", "llamafactory_rlhf_v-2", "lf-3", "swift_dpo-1",
                                       "swift-2"]
    assert all(s.is_pair and s.messages[-1]["role"] == "user" for s in samples)
    bus, multi, text, squares, french = samples
    # LLaMA-Factory (ranking: true): the conversation is the prompt, chosen / rejected are gpt turns or strings
    assert bus.messages == [{"role": "user", "content": [IMG, TEXT("What is the colour of the bus?")]}]
    assert (bus.chosen, bus.rejected) == ("The bus is red.", "The bus is blue, parked next to a tree.")
    assert bus.images == ["images/rlhf_v/1.jpg"] and bus.meta == {}
    assert [m["role"] for m in multi.messages] == ["system", "user", "assistant", "user"]
    assert multi.chosen == "No, there is no person." and text.images == [] and text.rejected == "3 is larger."
    # ms-swift: the last assistant turn is the chosen answer, rejected_response the other
    assert squares.messages == [{"role": "user", "content": [IMG, TEXT("How many squares are there?")]}]
    assert (squares.chosen, squares.rejected) == ("There is one square.", "There are three squares.")
    assert french.messages[0]["role"] == "system" and french.meta == {"tag": "fr"}
    assert (french.chosen, french.rejected) == ("Rouge.", "Vert.")


def test_preference_pairs_round_trip(tmp_path):
    samples = assert_round_trip("sharegpt", DPO, tmp_path)
    assert len(samples) == 5
    row = _lines(tmp_path / "exported" / "llamafactory_rlhf_v.jsonl")[0]  # written in the ms-swift form
    assert row["messages"][-1] == {"role": "assistant", "content": "The bus is red."}
    assert row["rejected_response"] == "The bus is blue, parked next to a tree." and "chosen" not in row


def test_cli_import_preference_pairs(tmp_path, capsys):
    from vlmtune.cli import main

    assert main(["data", "import", "sharegpt", str(DPO / "swift_dpo.jsonl"), "--out", str(tmp_path / "d")]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 2


def test_bad_preference_records(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(DPO, src)
    lf = _lines(DPO / "llamafactory_rlhf_v.jsonl")[0]
    sw = _lines(DPO / "swift_dpo.jsonl")[0]
    bad = [
        {k: v for k, v in lf.items() if k != "rejected"},  # chosen without rejected
        lf | {"rejected": lf["chosen"]},  # the same answer twice
        lf | {"images": ["../../../etc/passwd"]},  # escapes the dataset root
        lf | {"conversations": lf["conversations"] + [{"from": "gpt", "value": "x"}]},  # ends with an answer
        lf | {"chosen": {"from": "human", "value": "x"}},  # not an assistant turn
        lf | {"rejected": {"from": "gpt", "value": ""}},  # empty
        sw | {"rejected_response": ["a"]},  # not a string
        sw | {"messages": sw["messages"][:1]},  # ms-swift without the chosen answer
        sw | {"chosen": "x", "rejected": "y"},  # both layouts at once
        lf | {"chosen": {"from": ["gpt"], "value": "x"}},  # a list as the role
        sw | {"rejected_images": ["rlhf_v/2.jpg"]},  # ms-swift's rejected image: not read, and not silently dropped
    ]
    lines = [json.dumps(r, ensure_ascii=False) for r in [lf] + bad] + ['{"conversations": [']
    (src / "llamafactory_rlhf_v.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(BadRecord, match=r"llamafactory_rlhf_v.jsonl:2: line 2: a preference pair needs both"):
        import_format("sharegpt", src, tmp_path / "stop")
    samples = import_format("sharegpt", src, tmp_path / "skip", skip_bad=True)
    assert [s.id for s in samples] == ["llamafactory_rlhf_v-1", "swift_dpo-1", "swift-2"]
    errors = [json.loads(line)["error"] for line in (tmp_path / "skip" / "rejected.jsonl").read_text().splitlines()]
    assert len(errors) == 12
    assert "'rejected' is missing" in errors[0]
    assert "'chosen' and 'rejected' are the same answer" in errors[1]
    assert "escapes the dataset directory" in errors[2]
    assert "the conversation ends with the user's turn" in errors[3]
    assert "'chosen' must be an assistant turn" in errors[4]
    assert "an empty rejected answer" in errors[5]
    assert "'rejected_response' must be a string or an assistant turn, got list" in errors[6]
    assert "ends with the chosen assistant answer" in errors[7]
    assert "not both" in errors[8]
    assert "'chosen' must be an assistant turn" in errors[9]
    assert "'rejected_images' is not read" in errors[10]
    assert "malformed JSON" in errors[11]
