"""The command line contract: JSON on the last stdout line, run directories, bad input named and skipped."""

import json

import pytest
import yaml
from helpers import tiny_run_cfg

from vlmtune.cli import main


def _last_json(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_data_synth_writes_splits(tmp_path, capsys):
    out = str(tmp_path / "d")
    assert main(["data", "synth", "shapes", "--out", out, "--n", "20", "--seed", "1", "--size", "32"]) == 0
    assert _last_json(capsys)["splits"] == {"train": 16, "val": 2, "test": 2}
    rows = [json.loads(x) for x in (tmp_path / "d/manifest.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows].count("test") == 2 and all((tmp_path / "d" / r["images"][0]).is_file()
                                                                   for r in rows)


def test_data_synth_asks_only_the_chosen_question_types(tmp_path, capsys):
    out = str(tmp_path / "q")
    assert main(["data", "synth", "fashion", "--out", out, "--n", "30", "--size", "32",
                 "--questions", "top_colour,bottom_colour"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "q/manifest.jsonl").read_text().splitlines()]
    assert {r["meta"]["question_type"] for r in rows} == {"top_colour", "bottom_colour"}
    assert main(["data", "synth", "fashion", "--out", out + "2", "--questions", "sleeve_length"]) == 2
    assert "unknown question type(s) ['sleeve_length']" in capsys.readouterr().err


def test_data_synth_caption_turn_extends_only_the_train_split(tmp_path, capsys):
    out = str(tmp_path / "c")
    assert main(["data", "synth", "fashion", "--out", out, "--n", "20", "--size", "32", "--caption-turn"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "c/manifest.jsonl").read_text().splitlines()]
    assert {(r["split"], len(r["messages"]), r["task"]) for r in rows} == {
        ("train", 4, "caption"), ("val", 2, "vqa"), ("test", 2, "vqa")}


def test_docs_models_md_is_the_generated_support_table(capsys):
    from pathlib import Path

    from vlmtune.models import FAMILIES

    assert main(["models", "--markdown"]) == 0
    table = capsys.readouterr().out
    rows = [x.split("`")[1] for x in table.splitlines() if x.startswith("| `")]
    assert rows == sorted(FAMILIES), "one row per registered family, in order"
    docs = Path(__file__).resolve().parents[1] / "docs" / "models.md"
    assert docs.read_text() == table, "docs/models.md is stale: run `vlmtune models --markdown > docs/models.md`"


def test_models_lists_families(capsys):
    assert main(["models"]) == 0
    families = _last_json(capsys)["families"]
    fam = families["llava"]
    assert fam["freeze_groups"] == ["language", "projector", "vision"] and "vqa" in fam["tasks"]
    # the rows name the checkpoints users look for: SmolVLM2 is the smolvlm family, GLM-4.1V the glm4v one
    assert all(f"SmolVLM2-{size}" in families["smolvlm"]["description"]
               for size in ("2.2B-Instruct", "500M-Video-Instruct", "256M-Video-Instruct"))
    assert "zai-org/GLM-4.1V-9B-Thinking" in families["glm4v"]["description"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, fashion_dir):
    tmp = tmp_path_factory.mktemp("cli")
    cfg = tmp / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run_cfg(tmp, fashion_dir)))
    assert main(["train", "--config", str(cfg), "--train.max_steps", "4", "--name", "cli"]) == 0
    return tmp / "runs" / "cli"


def test_train_override_reaches_the_run(trained_run):
    rows = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 4


def test_eval_prints_metrics_and_writes_files(trained_run, fashion_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(trained_run), "--data", str(fashion_dir), "--split", "test",
                 "--out", str(tmp_path / "ev"), "--max-new-tokens", "4"]) == 0
    metrics = _last_json(capsys)
    assert metrics["n"] == 5 and 0 <= metrics["vqa_accuracy"] <= 1 and "by_question_type" in metrics
    assert json.loads((tmp_path / "ev/metrics.json").read_text()) == {k: v for k, v in metrics.items() if k != "report"}
    rows = [json.loads(x) for x in (tmp_path / "ev/predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all("vqa_accuracy" in r["scores"] for r in rows)  # per-sample scores
    page = (tmp_path / "ev/analysis.html").read_text()  # the error-analysis page, beside the metrics
    assert metrics["report"] == str(tmp_path / "ev/analysis.html") and page.count("<tr class='sample'") == 5
    # without --split: every sample
    assert main(["eval", "--model", str(trained_run), "--data", str(fashion_dir), "--out", str(tmp_path / "all"),
                 "--max-new-tokens", "4"]) == 0
    assert _last_json(capsys)["n"] == 48


def test_predict_matches_eval_predictions(trained_run, fashion_dir, tmp_path, capsys):
    main(["eval", "--model", str(trained_run), "--data", str(fashion_dir), "--split", "val", "--out",
          str(tmp_path / "ev"), "--max-new-tokens", "4"])
    assert main(["predict", "--model", str(trained_run), "--data", str(fashion_dir), "--split", "val", "--out",
                 str(tmp_path / "p.jsonl"), "--max-new-tokens", "4"]) == 0
    assert _last_json(capsys)["n"] == 5
    pred = [json.loads(x)["prediction"] for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    ev = [json.loads(x)["prediction"] for x in (tmp_path / "ev/predictions.jsonl").read_text().splitlines()]
    assert pred == ev


def test_eval_bad_records_stop_or_are_skipped(trained_run, fashion_dir, tmp_path, capsys):
    import shutil

    data = tmp_path / "bad"
    shutil.copytree(fashion_dir, data)
    lines = (data / "manifest.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    (data / first["images"][0]).write_bytes(b"garbage")           # line 1: corrupt image
    lines[1] = lines[1][:20]                                        # line 2: malformed JSON
    third = json.loads(lines[2])
    third["messages"][-1]["content"][0]["text"] = ""                # line 3: empty answer
    lines[2] = json.dumps(third)
    (data / json.loads(lines[3])["images"][0]).unlink()             # line 4: missing image
    (data / "manifest.jsonl").write_text("\n".join(lines) + "\n")

    args = ["eval", "--model", str(trained_run), "--data", str(data), "--out", str(tmp_path / "ev"),
            "--max-new-tokens", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "manifest.jsonl:1:" in err and "cannot decode image" in err

    assert main(args + ["--skip-bad"]) == 0
    assert _last_json(capsys)["n"] == 44, "the other 44 samples are evaluated"
    rejected = [json.loads(x) for x in (tmp_path / "ev/rejected.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejected] == [1, 2, 3, 4]
    wanted = ["cannot decode", "malformed JSON", "empty answer", "not found"]
    assert [k in r["error"] for r, k in zip(rejected, wanted, strict=True)] == [True] * 4


def test_eval_resumes_from_partial_predictions(trained_run, fashion_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    main(["eval", "--model", str(trained_run), "--data", str(fashion_dir), "--out", str(out), "--max-new-tokens", "4"])
    full = _last_json(capsys)
    lines = (out / "predictions.jsonl").read_text().splitlines()
    tampered = json.loads(lines[0])
    tampered["prediction"] = "KEPT-FROM-EARLIER-RUN"
    # an interrupted run: 10 finished rows and a torn line
    (out / "predictions.jsonl").write_text("\n".join([json.dumps(tampered)] + lines[1:10]) + "\n{\"id\": \"torn")
    main(["eval", "--model", str(trained_run), "--data", str(fashion_dir), "--out", str(out), "--max-new-tokens", "4"])
    again = _last_json(capsys)
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 48 and rows[0]["prediction"] == "KEPT-FROM-EARLIER-RUN", "finished rows are not redone"
    assert again["n"] == full["n"]


def test_bad_config_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--train.no_such_key", "1"]) == 2
    assert "unknown key(s) ['no_such_key']" in capsys.readouterr().err


def test_eval_and_predict_take_generation_settings_from_the_run(trained_run, tmp_path):
    """A run trained to write long captions is not cut at the CLI's default: settings not given on the command line
    come from the run's eval section (from the run, its best/ or a checkpoint), flags win, a bare model gets auto
    (sized from the data, tests/eval/test_generation_cap.py)."""
    from argparse import Namespace

    from vlmtune.cli.run import _run_defaults

    a = Namespace(model=str(trained_run), max_new_tokens=None, num_beams=None, lang=None)
    _run_defaults(a)
    assert (a.max_new_tokens, a.num_beams, a.lang) == (4, 1, None)  # tiny_run_cfg's eval.max_new_tokens
    a = Namespace(model=str(trained_run / "best"), max_new_tokens=9, num_beams=None)
    _run_defaults(a)
    assert (a.max_new_tokens, a.num_beams) == (9, 1)
    a = Namespace(model=str(tmp_path), max_new_tokens=None, num_beams=None, lang=None)
    _run_defaults(a)
    assert (a.max_new_tokens, a.num_beams) == ("auto", 1)


def test_the_offline_kernel_notice_of_bitsandbytes_is_not_printed(caplog):
    """bitsandbytes (imported by peft) logs that its optional hub kernel is unavailable offline at every start,
    quantised or not; vlmtune's commands drop that notice and nothing else of that logger."""
    import logging

    from vlmtune.cli import _quiet_offline_kernel_noise

    _quiet_offline_kernel_noise()
    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.backends.cpu.ops"):
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: offline")
        log.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
