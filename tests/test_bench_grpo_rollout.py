"""bench/grpo_rollout.py --quick runs its whole path (the tiny model in a fresh process, vlmtune's rollout, the two
baselines, a GRPO training step) and reports every field: tokens/s per contender, their ratios, the step's shares.
No timing is asserted: only that the numbers are there, positive, and consistent with each other."""

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
    done = subprocess.run([sys.executable, str(REPO / "bench" / "grpo_rollout.py"), "--quick", "--json", str(raw)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "bench/grpo_rollout.py --quick" in out and "**tiny**" in out
    table = [line for line in out.splitlines() if line.startswith("| ") and line.endswith("% |")]
    assert len(table) == 2, out  # k 2 and 4 at 4 tokens
    for line, k in zip(table, (2, 4), strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:2] == [str(k), "4"] and len(cells) == 11, line
        assert all(float(c) > 0 for c in cells[2:6]), line  # prompt tokens and the three contenders' tokens/s
        assert cells[6].endswith("x") and cells[7].endswith("x"), line
    [result] = json.loads(raw.read_text())
    for row in result["rows"]:  # every completion exactly L tokens long in every contender: the same work
        tokens = row["k"] * row["length"]
        assert row["batched_tokens"] == row["single_tokens"] == row["nocache_tokens"] == tokens, row
        assert row["trained_tokens"] == tokens, row  # cut at L: no stop token trained
        assert 0 < row["batched_s"] < row["rollout_s"], row
    for m in summarise(result):
        assert 0 < m["generate_share"] < 1 and 0 < m["train_share"] < 1, m
        assert m["generate_share"] + m["train_share"] <= 1 + 1e-9, m
