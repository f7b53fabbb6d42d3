"""`train.method: dpo` on the training loop: preference pairs train a tiny built-in model (the implicit reward's
margin and accuracy rise), the reference log-probabilities are computed once before step 0 and kept in the run, a
resumed run continues exactly, and data of the wrong kind is refused naming the sample."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from helpers import tiny_run_cfg
from safetensors.torch import load_file

from vlmtune.config import RunCfg
from vlmtune.data.sample import Sample
from vlmtune.data.store import MANIFEST, read_samples, write_jsonl
from vlmtune.train.loop import train
from vlmtune.train.preference import REFERENCE


def preference_data(src: Path, out: Path) -> Path:
    """The fashion world's train split as pairs (chosen: the answer; rejected: "striped", or "dotted" where that is
    the answer: a preference one tiny LoRA learns in a few steps), its val split as it is."""
    samples, _ = read_samples(src)
    rows = []
    for s in samples:
        if s.split != "train":
            rows.append(s.to_json())
            continue
        rows.append(Sample(id=s.id, images=s.images, messages=s.messages[:-1], chosen=s.target,
                           rejected="dotted" if s.target == "striped" else "striped", split="train",
                           meta=s.meta).to_json())
    shutil.copytree(src / "images", out / "images")
    write_jsonl(out / MANIFEST, rows)
    return out


@pytest.fixture(scope="module")
def pairs_dir(fashion_dir, tmp_path_factory) -> Path:
    return preference_data(fashion_dir, tmp_path_factory.mktemp("pairs") / "d")


def _cfg(tmp_path, data, name="dpo", **train):
    return RunCfg.from_dict(tiny_run_cfg(
        tmp_path, data, name=name, lora={"enabled": True, "r": 8, "dropout": 0.0},
        train={"method": "dpo", "dpo_beta": 0.5, "max_steps": 8, "schedule": "constant", "lr": 1e-2,
               "eval_every": 0, "save_every": 4, "keep_checkpoints": 5} | train,
        eval={"max_samples": 2}))


def _log(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_dpo_raises_the_chosen_answers_implicit_reward(tmp_path, pairs_dir):
    out = train(_cfg(tmp_path, pairs_dir))
    run = Path(out["run_dir"])
    rows = _log(run)
    print([(r["step"], round(r["loss"], 4), round(r["rewards/margin"], 4), r["rewards/accuracy"]) for r in rows])
    # step 1's pairs are scored before any update: the policy is the reference, every reward 0, the loss log 2
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert abs(rows[0]["rewards/chosen"]) < 1e-4 and abs(rows[0]["rewards/margin"]) < 1e-4
    late = rows[-4:]  # 4 steps: 32 pairs, most of the 38
    assert sum(r["rewards/margin"] for r in late) / 4 > 0.2
    assert sum(r["rewards/accuracy"] for r in late) / 4 > 0.7
    assert sum(r["loss"] for r in late) / 4 < math.log(2) - 0.05
    reference = json.loads((run / REFERENCE).read_text())["logps"]
    train_ids = [s.id for s in read_samples(pairs_dir)[0] if s.split == "train"]
    assert sorted(reference) == sorted(f"0/{i}" for i in train_ids)
    assert all(c < 0 and r < 0 for c, r in reference.values())


def test_a_resumed_dpo_run_continues_exactly(tmp_path, pairs_dir):
    straight = Path(train(_cfg(tmp_path, pairs_dir, "straight"))["run_dir"])
    train(_cfg(tmp_path, pairs_dir, "resumed", max_steps=4))
    reference = (tmp_path / "runs/resumed" / REFERENCE).read_text()
    resumed = Path(train(_cfg(tmp_path, pairs_dir, "resumed"))["run_dir"])
    assert (resumed / REFERENCE).read_text() == reference, "a resume reads the reference, never recomputes it"
    assert [(r["step"], r["loss"], r["rewards/margin"]) for r in _log(resumed)] == \
        [(r["step"], r["loss"], r["rewards/margin"]) for r in _log(straight)]
    a = load_file(straight / "checkpoints/step-8/adapter_model.safetensors")
    b = load_file(resumed / "checkpoints/step-8/adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_without_its_reference_file_is_refused(tmp_path, pairs_dir):
    train(_cfg(tmp_path, pairs_dir, "lost", max_steps=4))
    (tmp_path / "runs/lost" / REFERENCE).unlink()
    with pytest.raises(ValueError, match="its reference model is gone"):
        train(_cfg(tmp_path, pairs_dir, "lost"))


def test_the_wrong_kind_of_sample_is_named_before_training(tmp_path, pairs_dir, fashion_dir):
    with pytest.raises(ValueError, match=r"not a preference pair .*fashion-0-0000"):
        train(_cfg(tmp_path, fashion_dir, "sft-data"))
    sft = RunCfg.from_dict(tiny_run_cfg(tmp_path, pairs_dir, name="pairs-in-sft"))
    with pytest.raises(ValueError, match=r"a preference pair \('chosen'/'rejected'\): train.method dpo trains on it"):
        train(sft)


@pytest.mark.parametrize(("train_cfg", "data_cfg", "error"), [
    ({"packing": True}, {}, "pairs are not packed"),
    ({"hflip": True}, {}, "mirroring would compare"),
    ({"dpo_beta": 0}, {}, "dpo_beta must be > 0"),
    ({}, {"answer_targets": "sampled"}, "set data.answer_targets: single"),
])
def test_settings_dpo_cannot_honour_are_refused(tmp_path, pairs_dir, train_cfg, data_cfg, error):
    with pytest.raises(ValueError, match=error):
        RunCfg.from_dict(tiny_run_cfg(tmp_path, pairs_dir, train={"method": "dpo"} | train_cfg, data=data_cfg))


def test_the_plan_counts_a_pair_as_two_rows(tmp_path, pairs_dir, fashion_dir):
    from vlmtune.train.plan import make_plan

    dpo = make_plan(_cfg(tmp_path, pairs_dir))
    sft = make_plan(RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir, lora={"enabled": True, "r": 8})))
    n = sum(1 for s in read_samples(pairs_dir)[0] if s.split == "train")
    assert dpo.lengths["split_size"] == n and dpo.lengths["measured"] == 2 * n  # chosen and rejected rows
    assert dpo.recipe["micro_batch_size"] == sft.recipe["micro_batch_size"] == 4
    assert dpo.memory["micro_batch"]["rows"] == 8 and sft.memory["micro_batch"]["rows"] == 4
    assert dpo.memory["activations_without_checkpointing"] > 1.2 * sft.memory["activations_without_checkpointing"]
    assert any("2 rows per pair" in a for a in dpo.assumptions)


def test_the_frozen_vision_cache_serves_both_answers_of_a_pair_with_the_same_losses(tmp_path, pairs_dir):
    """A pair's image features are computed once and used by its chosen and its rejected row; from the second epoch
    on no image is read: the losses equal those of a run without the cache."""
    from vlmtune.train.loop import fit, setup

    state = setup(_cfg(tmp_path, pairs_dir, "cached", max_steps=12, save_every=0))
    assert state.vision_cache is not None
    fit(state)
    cache = state.vision_cache
    assert cache.hits > cache.misses > 0  # 12 steps x 8 pairs over 38 pairs: most rows' features come from the cache
    assert {k[1].rsplit("#", 1)[1] for k in cache.rows} == {"chosen", "rejected"}
    uncached = Path(train(_cfg(tmp_path, pairs_dir, "uncached", max_steps=12, save_every=0,
                               vision_cache="off"))["run_dir"])
    for a, b in zip(_log(state.run_dir), _log(uncached), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and \
            a["rewards/margin"] == pytest.approx(b["rewards/margin"], abs=1e-5)


def test_two_processes_train_dpo_like_one(tmp_path, pairs_dir):
    """Under torchrun (2 processes, gloo) every process computes the reference over all pairs and all use rank 0's
    file; each takes its share of the step's pairs; the logged loss and statistics equal one process's."""
    import os
    import subprocess
    import sys

    import yaml

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    for name, launcher in (("one", [sys.executable]), ("two", torchrun)):
        cfg = _cfg(tmp_path, pairs_dir, name, max_steps=3, save_every=0).to_dict()
        cfg["report"] = False
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        done = subprocess.run([*launcher, "-m", "vlmtune.cli", "train", "--config", str(tmp_path / f"{name}.yaml")],
                              capture_output=True, text=True, env=env, timeout=400)
        assert done.returncode == 0, done.stderr[-4000:]
    one, two = (_log(tmp_path / "runs" / n) for n in ("one", "two"))
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy", "logps/chosen"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], abs=1e-4), key
    assert (tmp_path / "runs/two" / REFERENCE).read_text() == (tmp_path / "runs/one" / REFERENCE).read_text()
