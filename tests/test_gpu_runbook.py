"""The GPU runbook (bench/gpu/run.sh, issue 23 part 3) in its dry mode: its whole path on CPU at tiny sizes (every
item in its own process, the workers, the `vlmtune plan` call, the table), and every item of the table has a row
with numbers or the reason it has none. The dry run is marked `slow` (8 minutes on 2 busy shared cores, mostly
imports in its 25 processes): the default suite leaves it out, `make test-slow` (which `.ci/run` calls) runs it;
`make gpu-runbook RUNBOOK_ARGS=--dry` runs the same command. The table's pure parts are tested here directly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU_DIR = REPO / "bench" / "gpu"
sys.path.insert(0, str(GPU_DIR))

from runbook import find_peak, items  # noqa: E402
from table import throughput  # noqa: E402


def test_card_peaks_by_device_name():
    from workers import card_peak

    assert card_peak("NVIDIA H100 80GB HBM3") == (989e12, "H100 80GB HBM3")
    assert card_peak("NVIDIA H100 PCIe")[0] == 756e12
    assert card_peak("NVIDIA H200")[0] == 989e12
    assert card_peak("NVIDIA A100-SXM4-80GB")[0] == 312e12
    assert card_peak("NVIDIA H100 NVL")[1].startswith("H100 SXM (assumed")
    peak, reason = card_peak("NVIDIA GeForce RTX 4090")
    assert peak is None and "no bf16 peak known" in reason


def test_plan_peak_is_read_defensively():
    assert find_peak({"memory": {"peak_bytes": 5 * 2**30, "weights_bytes": 2**30}}) == ("memory.peak_bytes", 5 * 2**30)
    assert find_peak({"per_gpu": {"total_peak_gib": 2.0}}) == ("per_gpu.total_peak_gib", 2 * 2**30)
    # the top-level total wins over a nested item's peak
    assert find_peak({"peak_bytes": 10**10, "items": {"activations": {"peak_bytes": 10**9}}})[1] == 10**10
    assert find_peak({"params": 3_000_000_000, "fits": True}) is None
    # the shape of i23-plan's `vlmtune plan --json`: FLOP totals and the GPU's peak FLOP/s are not memory
    plan = {"params": {"total": 3_754_000_000}, "memory": {"items": {"weights": 7 * 10**9}, "total": 9 * 10**9},
            "speed": {"flops_per_step": {"total": 10**15}, "gpu_peak_flops": 989e12}, "verdict": {"budget_bytes": 8e10}}
    assert find_peak(plan) == ("memory.total", 9 * 10**9)


def test_throughput_leaves_the_warmup_steps_out():
    r = {"times": [1.0, 2.0, 2.5, 3.0], "tokens": [100, 100, 100, 100], "warmup": 2,
         "flops_step0": 1000.0, "tokens_step0": 100}
    t = throughput(r)
    assert t["tokens_s"] == pytest.approx(200 / 1.0) and t["ms_step"] == pytest.approx(500)
    assert t["flops_token"] == 10.0 and t["timed_steps"] == 2


@pytest.mark.slow
def test_dry_run_writes_a_row_for_every_item(tmp_path):
    out = tmp_path / "table.md"
    env = {**os.environ, "PY": sys.executable, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(["bash", str(GPU_DIR / "run.sh"), "--dry", "--work", str(tmp_path / "work"), "--out",
                           str(out), "--budget", "1800"], capture_output=True, text=True, env=env, timeout=2400,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    print(text)
    assert "### GPU runbook: dry (CPU)" in text and "not a measurement" in text
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ") for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| item")}
    assert list(rows) == [name for name, _ in items(True)], "one row per item, in order"
    for name, cells in rows.items():
        note = cells[-1]
        assert "failed" not in note and "time budget" not in note, f"{name}: {note}"
        if name.startswith(("qlora-", "lora-fa2-")):  # CUDA-only items say so
            assert note.startswith("skipped: dry (CPU):") and "needs CUDA" in note, f"{name}: {note}"
        elif name.startswith("trl-"):
            assert note.startswith("skipped: trl does not import") or float(cells[4]) > 0, f"{name}: {note}"
        elif name == "serve-vllm":  # vLLM's CPU build: bench/serve_load.py (BENCHMARKS.md), not the dry runbook
            assert note.startswith("skipped: dry (CPU): vLLM's CPU build"), note
        elif name == "serve-builtin":
            assert float(cells[4]) > 0 and "requests/s" in note and "0 errors" in note, f"{name}: {cells}"
        elif name == "data" or name.startswith("base-"):
            assert note and note != "-", name
        else:  # a training item: tokens/s and ms/step are numbers, MFU and memory give their CPU reason
            assert float(cells[4]) > 0 and float(cells[5]) > 0, f"{name}: {cells}"
            assert cells[6].startswith("n/a: CPU") and cells[7].startswith("n/a: CPU"), f"{name}: {cells}"
            assert cells[8].startswith("plan: n/a") or float(cells[8]) > 0, f"{name}: {cells[8]}"
            assert note.startswith("loss "), f"{name}: {note}"
    assert "epochs " in rows["cache-on"][-1] and "cache on" in rows["cache-on"][-1]
    assert "cache off" in rows["cache-off"][-1]
    assert "on/off tokens/s" in rows["pack-on"][-1]
