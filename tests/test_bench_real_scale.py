"""bench/real_scale.py --quick runs its whole path (cut real Qwen2-VL config, real processor, the contenders in fresh
processes) and reports a row per contender with equal losses. TRL runs too where it is importable; without it the
script says so and the vlmtune and HF Trainer rows must still be there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO.parent / "shared" / "real-models" / "Qwen__Qwen2-VL-2B-Instruct"


@pytest.mark.slow
def test_real_scale_quick(tmp_path):
    if not CONFIG.is_dir():
        pytest.skip(f"{CONFIG} is absent (../shared/real-models)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    args = [sys.executable, str(REPO / "bench" / "real_scale.py"), "--quick", "--work", str(tmp_path / "work")]
    if os.environ.get("VLMTUNE_TRL_PATH"):  # TRL installed outside the venv (pip --target)
        args += ["--trl-path", os.environ["VLMTUNE_TRL_PATH"]]
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    print(out)
    rows = {line.split("|")[1].strip(): line for line in out.splitlines()
            if line.startswith("| ") and line.count("%") >= 4}  # the results table: its phase shares
    assert "vlmtune `train()`" in rows and "HF Trainer + vlmtune encode" in rows, out
    trl = "TRL SFTTrainer" in rows
    assert trl or "TRL: not importable" in out, out
    assert "image tokens" in out and "dtype: **" in out
    equal = [line for line in out.splitlines() if "max |loss difference|" in line]
    assert len(equal) == (2 if trl else 1), out
    assert all(": equal within" in line for line in equal), equal
    if trl:
        assert "labels yes" in out and "input_ids yes" in out, "TRL's batches equal vlmtune's"
