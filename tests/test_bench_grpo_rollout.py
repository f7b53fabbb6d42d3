"""bench/grpo_rollout.py --quick runs its whole path (the tiny model in a fresh process, vlmtune's rollout, the two
baselines, a GRPO training step) and reports every field: tokens/s per contender, their ratios, the step's shares;
with TRL importable (VLMTUNE_TRL_PATH: installed outside the venv, as tests/test_bench_real_scale.py) TRL's
GRPOTrainer too. No timing is asserted: only that the numbers are there, positive, and consistent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from grpo_rollout import summarise  # noqa: E402


def test_grpo_rollout_quick(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    raw = tmp_path / "raw.json"
    args = [sys.executable, str(REPO / "bench" / "grpo_rollout.py"), "--quick", "--json", str(raw)]
    trl = os.environ.get("VLMTUNE_TRL_PATH")
    done = subprocess.run(args + (["--trl-path", trl] if trl else []), capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "bench/grpo_rollout.py --quick" in out and "**tiny**" in out
    table = [line for line in out.splitlines() if line.startswith("| ") and line.endswith("% |")
             and line.count("|") == 12]
    assert len(table) == 2, out  # k 2 and 4 at 4 tokens
    for line, k in zip(table, (2, 4), strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:2] == [str(k), "4"] and len(cells) == 11, line
        assert all(float(c) > 0 for c in cells[2:6]), line  # prompt tokens and the three contenders' tokens/s
        assert cells[6].endswith("x") and cells[7].endswith("x"), line
    results = json.loads(raw.read_text())
    result = results[0]
    for row in result["rows"]:  # every completion exactly L tokens long in every contender: the same work
        tokens = row["k"] * row["length"]
        assert row["batched_tokens"] == row["single_tokens"] == row["nocache_tokens"] == tokens, row
        assert row["trained_tokens"] == tokens, row  # cut at L: no stop token trained
        assert 0 < row["batched_s"] < row["rollout_s"], row
    for m in summarise(result):
        assert 0 < m["generate_share"] < 1 and 0 < m["train_share"] < 1, m
        assert m["generate_share"] + m["train_share"] <= 1 + 1e-9, m
    if trl:
        [theirs] = [r for r in results if "trl" in r]
        assert f"**TRL {theirs['trl']} GRPOTrainer**" in out, out
        rows = [line for line in out.splitlines() if line.startswith("| ") and line.count("|") == 10
                and line.endswith("% |")]
        assert [line.split("|")[1:3] for line in rows] == [[" 2 ", " 4 "], [" 4 ", " 4 "]], out
        for row in theirs["rows"]:
            assert row["trl_tokens"] == row["k"] * row["length"] and 0 < row["trl_s"] < row["trl_step_s"], row
