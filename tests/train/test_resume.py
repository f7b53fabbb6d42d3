"""SIGKILL mid-run, run the same command again: it resumes and ends exactly where an uninterrupted run ends, for a
full fine-tune and for LoRA with dropout (every LoRA recipe): the dropout masks after the resume come from the random
generators the checkpoint saved, not from a reseed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from helpers import tiny_run_cfg
from safetensors.torch import load_file

LORA = {"enabled": True, "r": 4, "dropout": 0.2}


def _start(tmp_path, fashion_dir, name, lora=None):
    cfg = tiny_run_cfg(tmp_path, fashion_dir, name=name, lora=lora or {"enabled": False},
                       model={"builtin": {"image_size": 64, "patch_size": 8, "vision_dim": 64, "vision_layers": 2,
                                          "text_dim": 64, "text_layers": 2, "heads": 4}},
                       data={"max_length": 256},
                       train={"max_steps": 16, "save_every": 4, "eval_every": 0, "micro_batch_size": 8,
                              "global_batch_size": 16, "keep_checkpoints": 5})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "vlmtune.cli", "train", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def _finish(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("lora", [None, LORA], ids=["full", "lora-dropout"])
def test_killed_run_resumes_to_identical_result(tmp_path, lora):
    from vlmtune.data.dataset import synthesize

    data = tmp_path / "data"
    synthesize(data, "fashion", 64, seed=3, size=64)
    runs = tmp_path / "runs"

    proc = _start(tmp_path, data, "killed", lora)
    deadline = time.time() + 240
    while not (runs / "killed/checkpoints/step-4/trainer/state.json").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (runs / "killed/checkpoints/step-16").exists(), "the kill must land mid-run"

    resumed = _finish(_start(tmp_path, data, "killed", lora))
    straight = _finish(_start(tmp_path, data, "straight", lora))

    for key in ("vqa_accuracy", "exact_match", "n"):
        assert resumed[key] == straight[key]
    rows = {n: [json.loads(x) for x in (runs / n / "metrics.jsonl").read_text().splitlines()]
            for n in ("killed", "straight")}
    losses = {n: [(r["step"], r["loss"]) for r in rows[n] if "loss" in r] for n in rows}
    assert [s for s, _ in losses["killed"]] == list(range(1, 17)), "no duplicated or missing log rows"
    assert losses["killed"] == losses["straight"]
    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    a = load_file(runs / "killed/checkpoints/step-16" / weights)
    b = load_file(runs / "straight/checkpoints/step-16" / weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    preds = [(runs / n / "predictions/step-16/predictions.jsonl").read_text() for n in ("killed", "straight")]
    assert preds[0] == preds[1]


def test_rng_state_round_trips_every_generator_through_a_weights_only_file(tmp_path):
    import random

    import numpy as np

    from vlmtune.train.checkpoint import rng_state, set_rng_state

    torch.save(rng_state(), tmp_path / "rng.pt")
    first = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2:] == again[2:]
