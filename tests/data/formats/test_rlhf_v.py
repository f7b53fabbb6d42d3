"""RLHF-V / RLAIF-V preference pairs: the Hub's parquet files (image bytes; RLHF-V's `text` JSON) and JSON lines /
JSON lists with image paths become pair Samples; the round trip, the CLI, bad records named, and an imported pair
set trains with `train.method: dpo`."""

from __future__ import annotations

import base64
import json
import shutil

import pyarrow.parquet as pq
import pytest
from helpers import FORMAT_FIXTURES, assert_round_trip, import_format

from vlmtune.cli import main
from vlmtune.data.formats.base import content_name
from vlmtune.data.store import BadRecord

FIX = FORMAT_FIXTURES / "rlhf_v"
IMG, TEXT = {"type": "image"}, lambda t: {"type": "text", "text": t}


def test_import_maps_every_field(tmp_path):
    samples = import_format("rlhf_v", FIX, tmp_path / "d")
    assert [s.id for s in samples] == ["VQAv2_12-OmniLMM-12B_qa", "COCO_7-llava_dd", "0", "1", "coco-9", "17"]
    assert {(s.split, s.source, s.task, s.is_pair) for s in samples} == {("train", "rlhf_v", "vqa", True)}
    rlaif, blue, rlhf0, rlhf1, path, text_path = samples
    assert rlaif.messages == [{"role": "user", "content": [IMG, TEXT("What colour is the sign?")]}]
    assert (rlaif.chosen, rlaif.rejected) == ("The sign is red.", "The sign is green with white letters.")
    row = pq.read_table(FIX / "RLAIF-V-Dataset_000.parquet").to_pylist()[0]
    assert rlaif.images == [content_name(row["image"]["bytes"], ".jpg")]
    assert (tmp_path / "d" / rlaif.images[0]).read_bytes() == row["image"]["bytes"]
    assert rlaif.meta == {"ds_name": "RLAIF-V", "origin_dataset": "VQAv2", "origin_split": row["origin_split"],
                          "image_path": "VQAv2/train2014/COCO_train2014_000000000012.jpg"}
    assert blue.images[0].endswith(".png")  # the format from the magic bytes
    # RLHF-V: question and answers from the `text` JSON; the two rows share one image, stored once
    assert rlhf0.question == "What is the man holding?" and rlhf0.rejected.endswith("a red balloon.")
    assert rlhf1.images == rlhf0.images and rlhf1.meta["ds_name"] == "RLHF-V-Hall_v0"
    # JSON lines: `image` a path; a row without `image` reads `image_path`
    assert path.images == text_path.images == ["images/coco/train2017/000000000009.jpg"]
    assert path.meta == {"ds_name": "RLAIF-V", "origin_dataset": "COCO"} and text_path.meta == {"ds_name": "RLHF-V"}
    assert (text_path.chosen, text_path.rejected) == ("Yellow.", "Purple.")
    assert rlaif.pair()[1].target == rlaif.rejected  # what DPO encodes


def test_round_trip(tmp_path):
    samples = assert_round_trip("rlhf_v", FIX, tmp_path)
    assert len(samples) == 6
    exported = [json.loads(line) for line in (tmp_path / "exported" / "train.jsonl").read_text().splitlines()]
    assert exported[0]["idx"] == "VQAv2_12-OmniLMM-12B_qa" and exported[0]["question"] == "What colour is the sign?"
    assert exported[0]["image"] == samples[0].images[0] and exported[0]["ds_name"] == "RLAIF-V"


def test_a_json_list_base64_images_and_a_placeholder(tmp_path):
    png = (FORMAT_FIXTURES / "sharegpt_dpo" / "rlhf_v" / "3.png").read_bytes()
    rows = [{"idx": "a", "image": "data:image/png;base64," + base64.b64encode(png).decode(),
             "question": "How many squares?\n<image>", "chosen": "One.", "rejected": "Two."}]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "test.json").write_text(json.dumps(rows))
    [s] = import_format("rlhf_v", tmp_path / "src", tmp_path / "d")
    assert s.messages == [{"role": "user", "content": [TEXT("How many squares?"), IMG]}] and s.split == "test"
    assert s.images == [content_name(png, ".png")]
    again = assert_round_trip("rlhf_v", tmp_path / "src", tmp_path / "rt")
    assert again[0].messages == s.messages


def test_cli_import(tmp_path, capsys):
    assert main(["data", "import", "rlhf_v", str(FIX / "rlaif_v.jsonl"), "--out", str(tmp_path / "d")]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 2
    assert main(["data", "import", "rlhf_v", str(FIX / "rlaif_v.jsonl"), "--out", str(tmp_path / "e"),
                 "--option", "pairs=all"]) == 2
    assert "the rlhf_v format has no option 'pairs'" in capsys.readouterr().err


def test_bad_records_are_named_and_skipped(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIX / "coco", src / "coco")
    good = json.loads((FIX / "rlaif_v.jsonl").read_text().splitlines()[0])
    bad = [
        {k: v for k, v in good.items() if k != "rejected"},  # no rejected answer
        good | {"rejected": good["chosen"] + "  "},  # the same answer twice
        good | {"image": "../../etc/passwd"},  # escapes the dataset root
        good | {"image": "coco/train2017/404.jpg"},  # missing image
        {k: v for k, v in good.items() if k not in ("image", "question", "chosen", "rejected")}
        | {"text": "{\"question\": \"Q?\", \"chosen\": "},  # RLHF-V text that is not JSON
        good | {"chosen": 7},  # not a string
        good | {"image": "https://example.com/a.jpg"},
    ]
    lines = [json.dumps(good | {"idx": "ok"})] + [json.dumps(r | {"idx": f"bad{i}"}) for i, r in enumerate(bad)]
    lines.insert(2, '{"idx": "broken", "question": ')  # malformed JSON
    (src / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(BadRecord, match=r"train.jsonl:2: row 2 \(idx 'bad0'\): missing 'rejected'"):
        import_format("rlhf_v", src, tmp_path / "stop")
    samples = import_format("rlhf_v", src, tmp_path / "skip", skip_bad=True)
    assert [s.id for s in samples] == ["ok"]
    rejected = [json.loads(line) for line in (tmp_path / "skip" / "rejected.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejected] == [2, 3, 4, 5, 6, 7, 8, 9]
    errors = [r["error"] for r in rejected]
    assert "missing 'rejected'" in errors[0]
    assert "malformed JSON" in errors[1]
    assert "'chosen' and 'rejected' are the same answer" in errors[2]
    assert "escapes the dataset directory" in errors[3]
    assert "404.jpg: image file not found" in errors[4]
    assert "'text' is not valid JSON" in errors[5]
    assert "'chosen' must be a string, got number 7" in errors[6]
    assert "never fetched" in errors[7]


def test_imported_pairs_train_with_dpo(tmp_path):
    from helpers import tiny_run_cfg

    from vlmtune.config import RunCfg
    from vlmtune.train.loop import train

    import_format("rlhf_v", FIX, tmp_path / "d")
    cfg = RunCfg.from_dict(tiny_run_cfg(
        tmp_path, tmp_path / "d", data={"path": str(tmp_path / "d"), "max_length": 128, "val_split": None},
        lora={"enabled": True, "r": 4, "dropout": 0.0},
        train={"method": "dpo", "dpo_beta": 0.5, "max_steps": 2, "micro_batch_size": 2, "global_batch_size": 2,
               "eval_every": 0, "save_every": 0}, eval={"max_samples": 0}))
    out = train(cfg)
    logged = [json.loads(line) for line in (tmp_path / "runs" / "t" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    assert len(steps) == 2 and all("rewards/accuracy" in r for r in steps), (out, logged[:3])


def test_the_hf_format_points_to_rlhf_v_and_rlhf_v_exports_only_pairs(tmp_path):
    from vlmtune.data.formats import export_dataset, get_format

    with pytest.raises(BadRecord, match="a preference pair .* import it with the rlhf_v format"):
        import_format("hf", FIX / "RLAIF-V-Dataset_000.parquet", tmp_path / "hf")
    import_format("sharegpt", FORMAT_FIXTURES / "sharegpt", tmp_path / "chat")
    with pytest.raises(ValueError, match="sample 'train-1': the rlhf_v format holds preference pairs"):
        export_dataset(get_format("rlhf_v"), tmp_path / "chat", tmp_path / "out")
