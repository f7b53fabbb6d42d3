"""Probes, the forgetting gate and source mixing, inside the real training loop."""

import json
import re
from collections import Counter
from unittest.mock import ANY

import pytest

from vlmtune.config import RunCfg
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.store import write_dataset
from vlmtune.eval import forgetting
from vlmtune.train import batching, loop


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _probe_cfg(tmp_path, fashion_dir, **sections):
    cfg = {"probes": [{"name": "general", "path": str(fashion_dir), "split": "test"}], **sections}
    return RunCfg.from_dict(_tiny(tmp_path, fashion_dir, cfg))


def _tiny(tmp_path, fashion_dir, extra):
    from helpers import tiny_run_cfg

    return tiny_run_cfg(tmp_path, fashion_dir, **extra)


def test_probes_are_scored_before_step_0_and_at_every_eval(tmp_path, fashion_dir):
    cfg = _probe_cfg(tmp_path, fashion_dir)
    result = loop.train(cfg)
    rows = [r for r in _rows(cfg.run_dir) if "probe/general/vqa_accuracy" in r]
    assert [r["step"] for r in rows] == [0, 3, 6]
    assert rows[0]["probe/general/delta"] == 0.0
    base = json.loads((cfg.run_dir / "probes_base.json").read_text())
    assert base == {"step": 0, "scores": {"general": rows[0]["probe/general/vqa_accuracy"]}}
    for r in rows:
        expected = 100 * (r["probe/general/vqa_accuracy"] - base["scores"]["general"])
        assert r["probe/general/delta"] == pytest.approx(expected)
    assert (cfg.run_dir / "predictions/step-3/probe-general/predictions.jsonl").is_file()
    assert result["rejected"] == {}  # no gate configured: nothing rejected


def _scripted_probe(monkeypatch, by_step: dict[int, float]):
    """The probe's score per step, as if the model forgot and recovered (a tiny model cannot be made to)."""
    calls = []

    def score(predictor, probes, out_dir=None):
        step = int(out_dir.name.split("-")[1])
        calls.append(step)
        return {p.name: {p.metric: by_step[step]} for p in probes}

    monkeypatch.setattr(forgetting, "score", score)
    return calls


def test_the_gate_keeps_a_checkpoint_that_forgot_from_becoming_best(tmp_path, fashion_dir, monkeypatch, capsys):
    calls = _scripted_probe(monkeypatch, {0: 0.80, 3: 0.50, 6: 0.78})
    cfg = _probe_cfg(tmp_path, fashion_dir, forgetting={"max_drop": 5.0})
    result = loop.train(cfg)
    assert calls == [0, 3, 6]
    # val accuracy of the tiny model is flat: without the gate step 3 (the first) would be best
    assert json.loads((cfg.run_dir / "best/vlmtune.json").read_text())["step"] == 6
    assert result["best_step"] == 6
    assert list(result["rejected"]) == ["3"] and "fell 30.0 points (80.0 -> 50.0)" in result["rejected"]["3"]
    gate_rows = [r for r in _rows(cfg.run_dir) if r.get("gate") == "rejected"]
    assert [r["step"] for r in gate_rows] == [3]
    err = capsys.readouterr().err
    assert "step 3: forgetting gate: probe 'general' fell 30.0 points" in err
    report = (cfg.run_dir / "report.html").read_text()
    assert "rejected: probe &#x27;general&#x27; fell 30.0 points" in report
    # the probe table printed at the end: base vs each checkpoint, the gate's verdict, the step copied to best/
    table = err.split(f"forgetting guard ({cfg.run_dir}):\n")[1].splitlines()[:4]
    assert [re.split(r"\s{2,}", line.strip()) for line in table] == [
        ["step", "val vqa_accuracy", "general vqa_accuracy", "general delta", "gate (max drop 5 pts)"],
        ["0", ANY, "0.800", "+0.0", "base model"],
        ["3", ANY, "0.500", "-30.0", "rejected"],
        ["6", ANY, "0.780", "-2.0", "passed, best"]]
    assert forgetting.probe_table(cfg.run_dir) == "\n".join(table)


def test_stop_on_violation_ends_the_run_with_a_checkpoint_and_a_message(tmp_path, fashion_dir, monkeypatch):
    _scripted_probe(monkeypatch, {0: 0.80, 3: 0.50, 6: 0.78})
    cfg = _probe_cfg(tmp_path, fashion_dir, forgetting={"max_drop": 5.0, "stop_on_violation": True})
    result = loop.train(cfg)
    assert result["stopped"].startswith("forgetting.stop_on_violation: probe 'general' fell 30.0 points")
    assert max(r["step"] for r in _rows(cfg.run_dir)) == 3
    assert (cfg.run_dir / "checkpoints/step-3").is_dir() and not (cfg.run_dir / "best").exists()
    assert "no checkpoint passed the forgetting gate" in result["warning"]


def test_a_gate_without_probes_is_a_config_error(tmp_path, fashion_dir):
    with pytest.raises(ValueError, match="needs at least one entry in `probes`"):
        RunCfg.from_dict(_tiny(tmp_path, fashion_dir, {"forgetting": {"max_drop": 5.0}}))


def _text_only_dir(tmp_path):
    root = tmp_path / "text"
    items = [(Sample(id=f"t{i}", messages=[user(f"What is {i} plus one?", n_images=0), assistant(str(i + 1))],
                     images=[], answers=[str(i + 1)], split="train"), []) for i in range(10)]
    write_dataset(root, items)
    return root


def test_sources_follow_their_weights_and_log_loss_per_source(tmp_path, fashion_dir):
    text = _text_only_dir(tmp_path)
    sources = [{"name": "domain", "path": str(fashion_dir), "weight": 3.0},
               {"name": "text", "path": str(text), "weight": 1.0}]
    cfg = RunCfg.from_dict(_tiny(tmp_path, fashion_dir, {"data": {"sources": sources}}))
    state = loop.setup(cfg)
    seen = Counter()
    encode = batching.encode_batch

    def spy(state_, items, flips=None):
        kinds = {bool(s.images) for _, s in items}
        seen["mixed batches"] += kinds == {True, False}  # text-only and image samples in one batch
        for j, _ in items:
            seen[j] += 1
        return encode(state_, items, flips)

    batching.encode_batch = spy
    try:
        loop.fit(state)
    finally:
        batching.encode_batch = encode
    assert seen[0] == 36 and seen[1] == 12, "6 of each 8 from the domain, 2 text-only"
    assert seen["mixed batches"] > 0
    steps = [r for r in _rows(cfg.run_dir) if "loss" in r]
    assert [r["samples/domain"] for r in steps] == [6 * k for k in range(1, 7)]
    assert [r["samples/text"] for r in steps] == [2 * k for k in range(1, 7)]
    for r in steps:
        assert r["loss/domain"] > 0 and r["loss/text"] > 0
        assert min(r["loss/domain"], r["loss/text"]) <= r["loss"] <= max(r["loss/domain"], r["loss/text"])


def test_a_resumed_run_keeps_the_base_scores_and_the_rejections(tmp_path, fashion_dir, monkeypatch):
    calls = _scripted_probe(monkeypatch, {0: 0.80, 3: 0.50, 6: 0.78})
    first = _probe_cfg(tmp_path, fashion_dir, forgetting={"max_drop": 5.0}, train={"max_steps": 3})
    loop.train(first)
    assert calls == [0, 3]
    again = _probe_cfg(tmp_path, fashion_dir, forgetting={"max_drop": 5.0}, train={"max_steps": 6})
    result = loop.train(again)  # same run directory: resumes from checkpoints/step-3
    assert calls == [0, 3, 6], "the base model is not scored again"
    assert list(result["rejected"]) == ["3"] and result["best_step"] == 6
    assert [r["step"] for r in _rows(again.run_dir) if "probe/general/delta" in r] == [0, 3, 6]
