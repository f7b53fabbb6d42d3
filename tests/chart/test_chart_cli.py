"""End to end, offline, through the CLI: draw charts, build a Pix2Struct, train it a few steps on chart-to-table,
then `chart ask`, `chart eval` (relaxed accuracy + RMS-F1/RNSS), `chart eval --oracle`, `chart tables` and
`eval --task chart_to_table`."""

from __future__ import annotations

import json

import pytest
import yaml

from vlmtune import cli
from vlmtune.data.chart_table import Table
from vlmtune.data.store import read_samples
from vlmtune.eval.metrics.table import table_baseline

QA_KINDS = "value,max_label,min_label,difference,sum,average,compare,count,ratio"


def run(capsys, *argv) -> dict:
    """The command's JSON result; its exit status must be 0, or 1 exactly when the result says ok: false (a chart
    question the pipeline could not answer)."""
    rc = cli.main(list(argv))
    captured = capsys.readouterr()
    assert rc in (0, 1), captured.err
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert rc == (1 if result.get("ok") is False else 0)
    return result


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(tables dataset, QA dataset, trained run): 3 training steps of a freshly built model."""
    root = tmp_path_factory.mktemp("chartcli")
    tables, qa, base = root / "tables", root / "qa", root / "base"
    assert cli.main(["data", "synth", "charts", "--out", str(tables), "--n", "16", "--size", "64",
                     "--questions", "chart_to_table", "--val", "0.25", "--test", "0.25"]) == 0
    assert cli.main(["data", "synth", "charts", "--out", str(qa), "--n", "6", "--size", "64", "--seed", "1",
                     "--questions", QA_KINDS, "--val", "0", "--test", "1.0"]) == 0
    assert cli.main(["chart", "init-model", "--out", str(base), "--max-patches", "16", "--hidden", "32",
                     "--vision-layers", "1", "--text-layers", "1"]) == 0
    cfg = {"name": "t", "out_dir": str(root / "runs"), "model": {"family": "pix2struct", "path": str(base)},
           "data": {"path": str(tables), "max_length": 128},
           "train": {"max_steps": 3, "micro_batch_size": 4, "global_batch_size": 4, "lr": 3e-3, "log_every": 1,
                     "progress": False, "trackers": []},
           "eval": {"task": "chart_to_table", "metric": "rms_f1", "batch_size": 8, "max_new_tokens": 12},
           "report": False}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert cli.main(["train", "--config", str(root / "cfg.yaml")]) == 0
    return tables, qa, root / "runs" / "t"


def test_synth_charts_writes_chart_samples(setup):
    tables, qa, _ = setup
    samples, _ = read_samples(qa, "test")
    assert len(samples) == 6 and {s.task for s in samples} == {"chartqa"}
    assert all(s.meta["question_type"] in QA_KINDS.split(",") for s in samples)
    train, _ = read_samples(tables, "train")
    assert {s.task for s in train} == {"chart_to_table"} and all(s.target == s.meta["table"] for s in train)


def test_training_evaluates_chart_to_table(setup):
    _, _, run_dir = setup
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("val/rms_f1" in r and "val/rnss" in r for r in rows)


def test_chart_ask_prints_table_program_and_answer(setup, capsys):
    _, qa, run_dir = setup
    s = read_samples(qa, "test")[0][0]
    out = run(capsys, "chart", "ask", str(qa / s.images[0]), s.question, "--model", str(run_dir),
              "--max-new-tokens", "12")
    assert set(out) >= {"table", "program", "answer", "ok", "error", "reasoner"} and out["reasoner"] == "program"
    assert out["question"] == s.question and (out["ok"] == (out["error"] is None))


def test_chart_eval_scores_answers_and_tables(setup, tmp_path, capsys):
    _, qa, run_dir = setup
    out_dir = tmp_path / "eval"
    metrics = run(capsys, "chart", "eval", "--model", str(run_dir), "--data", str(qa), "--split", "test",
                  "--out", str(out_dir), "--max-new-tokens", "12")
    print("tiny model after 3 steps:", {k: metrics[k] for k in ("relaxed_accuracy", "table")})
    assert metrics["n_questions"] == 6 and metrics["n_charts"] == 6 and metrics["tables"] == "model"
    assert 0.0 <= metrics["relaxed_accuracy"] <= 1.0 and set(metrics["table"]) == {
        "n", "rms_precision", "rms_recall", "rms_f1", "rnss", "random_baseline"}
    # beside RMS-F1 its chance level: each chart's true table scored as another chart's prediction (seed 0)
    charts = list(dict.fromkeys(s.images[0] for s in read_samples(qa, "test")[0]))
    truth = {s.images[0]: s.meta["table"] for s in reversed(read_samples(qa, "test")[0])}
    assert metrics["table"]["random_baseline"] == table_baseline([truth[c] for c in charts])
    assert 0.0 <= metrics["table"]["random_baseline"]["rms_f1"] < 1.0
    assert metrics["ceiling_relaxed_accuracy"] == 1.0  # the program reasoner on the true tables
    assert sum(g["n"] for g in metrics["by_question_type"].values()) == 6
    rows = [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()]
    cached = [json.loads(line) for line in (out_dir / "tables.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and len(cached) == 6
    assert all({"program", "table", "prediction", "answers", "scores"} <= set(r) for r in rows)
    assert json.loads((out_dir / "metrics.json").read_text()) == metrics
    # a second run reuses the cached tables: poison one, and the answers follow it
    cached[0]["table"] = read_samples(qa, "test")[0][0].meta["table"]
    (out_dir / "tables.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cached))
    again = run(capsys, "chart", "eval", "--model", str(run_dir), "--data", str(qa), "--split", "test",
                "--out", str(out_dir), "--max-new-tokens", "12")
    first = json.loads((out_dir / "predictions.jsonl").read_text().splitlines()[0])
    assert first["table"] == cached[0]["table"] and first["scores"]["relaxed_accuracy"] == 1.0
    assert again["table"]["rms_f1"] >= metrics["table"]["rms_f1"]


def test_chart_eval_oracle_is_the_ceiling(setup, tmp_path, capsys):
    _, qa, _ = setup
    metrics = run(capsys, "chart", "eval", "--oracle", "--data", str(qa), "--split", "test", "--out",
                  str(tmp_path / "o"))
    assert metrics["relaxed_accuracy"] == 1.0 and metrics["answered"] == 1.0 and metrics["tables"] == "true (oracle)"


def test_chart_eval_and_ask_refuse_bad_options(setup, tmp_path, capsys):
    _, qa, run_dir = setup
    assert cli.main(["chart", "eval", "--oracle", "--model", str(run_dir), "--data", str(qa)]) == 2
    assert "give --model M" in capsys.readouterr().err
    image = str(qa / read_samples(qa, "test")[0][0].images[0])
    assert cli.main(["chart", "ask", image, "How many?", "--model", str(run_dir), "--reasoner", "cot"]) == 2
    assert "--reasoner cot needs --llm DIR" in capsys.readouterr().err
    assert cli.main(["chart", "ask", image, "How many?", "--model", str(run_dir), "--reasoner", "zero_shot",
                     "--llm", str(run_dir)]) == 2
    assert "cannot answer text-only prompts" in capsys.readouterr().err
    assert cli.main(["chart", "ask", image, "How many?", "--model", str(run_dir), "--reasoner", "cot,pot"]) == 2
    assert "--reasoner 'cot,pot': one of program, zero_shot, cot, pot, sc (each once)" in capsys.readouterr().err
    assert cli.main(["chart", "eval", "--oracle", "--data", str(qa), "--reasoner", "program,tot"]) == 2
    assert "a comma list of program, zero_shot, cot, pot, sc or all" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "tiny-lm"
    assert cli.main(["chart", "init-lm", "--out", str(path), "--layers", "1", "--hidden", "32"]) == 0
    return path


def test_chart_eval_reports_every_reasoning_setup_in_one_table(setup, tiny_lm, tmp_path, capsys):
    """The model writes the tables once; each setup answers from them (and from the true tables: the ceiling)."""
    _, qa, run_dir = setup
    out_dir = tmp_path / "all"
    rc = cli.main(["chart", "eval", "--model", str(run_dir), "--data", str(qa), "--split", "test", "--out",
                   str(out_dir), "--max-new-tokens", "12", "--reasoner", "all", "--llm", str(tiny_lm),
                   "--llm-max-new-tokens", "12", "--sc-k", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    metrics = json.loads(captured.out.strip().splitlines()[-1])
    setups = ["program", "zero_shot", "cot", "pot", "sc"]
    assert list(metrics["setups"]) == setups and metrics["reasoner"] == "program"
    for name, scores in metrics["setups"].items():
        assert 0.0 <= scores["relaxed_accuracy"] <= 1.0 and 0.0 <= scores["answered"] <= 1.0, name
        assert sum(g["n"] for g in scores["by_question_type"].values()) == 6
    assert metrics["setups"]["program"]["ceiling_relaxed_accuracy"] == 1.0 == metrics["ceiling_relaxed_accuracy"]
    assert metrics["relaxed_accuracy"] == metrics["setups"]["program"]["relaxed_accuracy"]
    table = "| setup | relaxed accuracy | exact match | answered | relaxed accuracy, true tables |"
    assert table in captured.err
    for name in setups:
        s = metrics["setups"][name]
        assert (f"| {name} | {s['relaxed_accuracy']:.3f} | {s['exact_match']:.3f} | {s['answered']:.3f} | "
                f"{s['ceiling_relaxed_accuracy']:.3f} |") in captured.err
    rows = [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()]
    assert [r["setup"] for r in rows] == [s for s in setups for _ in range(6)]
    assert all(r["ok"] == (r["error"] is None) for r in rows)
    sc = [r for r in rows if r["setup"] == "sc"]
    assert all(len(r["samples"]) == 4 and {x["prompt"] for x in r["samples"]} == {"cot", "pot"} for r in sc)
    assert (out_dir / "tables.jsonl").read_text().count("\n") == 6  # one table per chart, shared by the setups


def test_chart_eval_runs_every_setup_on_the_chartqa_stand_in(setup, tiny_lm, tmp_path, capsys):
    """ChartQA's own layout (stand-in), imported, then chart image -> the model's table -> each of the five setups;
    and the setups on the true CSV tables (--oracle)."""
    _, _, run_dir = setup
    raw, data = tmp_path / "raw", tmp_path / "chartqa"
    assert cli.main(["data", "standin", "chartqa", "--out", str(raw), "--n", "20", "--size", "64"]) == 0
    assert cli.main(["data", "import", "chartqa", str(raw), "--out", str(data)]) == 0
    capsys.readouterr()
    lm = ["--reasoner", "all", "--llm", str(tiny_lm), "--llm-max-new-tokens", "8", "--sc-k", "2"]
    model = run(capsys, "chart", "eval", "--model", str(run_dir), "--data", str(data), "--split", "test",
                "--out", str(tmp_path / "model"), "--max-new-tokens", "12", "--no-ceiling", *lm)
    oracle = run(capsys, "chart", "eval", "--oracle", "--data", str(data), "--split", "test", "--out",
                 str(tmp_path / "oracle"), *lm)
    for metrics in (model, oracle):
        assert list(metrics["setups"]) == ["program", "zero_shot", "cot", "pot", "sc"] and metrics["n_questions"] == 4
        assert all("ceiling_relaxed_accuracy" not in s for s in metrics["setups"].values())
    assert oracle["setups"]["program"]["relaxed_accuracy"] == 1.0 and oracle["tables"] == "true (oracle)"
    assert model["table"]["n"] == 4 and model["tables"] == "model"


def test_eval_task_chart_to_table(setup, tmp_path, capsys):
    tables, _, run_dir = setup
    metrics = run(capsys, "eval", "--model", str(run_dir), "--data", str(tables), "--split", "test",
                  "--task", "chart_to_table", "--max-new-tokens", "12", "--out", str(tmp_path / "e"), "--no-report")
    assert metrics["task"] == "chart_to_table" and metrics["n"] == 4 and 0.0 <= metrics["rms_f1"] <= 1.0


def test_chart_tables_turns_questions_into_chart_to_table_samples(setup, tmp_path, capsys):
    _, qa, _ = setup
    result = run(capsys, "chart", "tables", str(qa), "--out", str(tmp_path / "t"))
    samples, _ = read_samples(tmp_path / "t", None)
    questions, _ = read_samples(qa, None)
    assert result["samples"] == len(samples) == len({s.images[0] for s in questions})
    for s, q in zip(samples, questions, strict=True):
        assert s.task == "chart_to_table" and s.split == q.split
        assert Table.from_text(s.target) == Table.from_text(q.meta["table"])
        assert (tmp_path / "t" / s.images[0]).read_bytes() != b""


def test_chart_ask_answers_from_the_table_the_model_writes(setup, monkeypatch, capsys):
    """With a chart model that writes the true table, `chart ask` prints it, the program and the right answer."""
    from vlmtune.infer import Predictor

    _, qa, _ = setup
    s = next(q for q in read_samples(qa, "test")[0] if q.meta["question_type"] != "compare")

    class WritesTheTrueTable:
        batch_size = 1

        def generate(self, samples, images):
            assert [x.question for x in samples] == ["Generate underlying data table of the figure below:"]
            return [s.meta["table"].replace(" <0x0A> ", "<0x0A>")]

    monkeypatch.setattr(Predictor, "from_path", classmethod(lambda cls, path, **kw: WritesTheTrueTable()))
    out = run(capsys, "chart", "ask", str(qa / s.images[0]), s.question, "--model", "any")
    assert out["ok"] and out["answer"] == s.answers[0] and out["program"]
    assert cli.main(["chart", "ask", str(qa / s.images[0]), s.question, "--model", "any"]) == 0
    printed = capsys.readouterr().out
    for row in Table.from_text(s.meta["table"]).rows:
        assert " | ".join(row) in printed
    assert f"program: {out['program']}" in printed and f"answer: {s.answers[0]}" in printed
