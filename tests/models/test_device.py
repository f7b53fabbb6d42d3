"""The inference device/dtype policy (models/device.py): --device auto|cuda|cuda:N|mps|cpu and --dtype, used by every
command that loads a model to run it, and a checkpoint reloaded in the dtype its run trained in."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from helpers import TINY_BUILTIN, tiny_run_cfg

from vlmtune.cli import main
from vlmtune.config import BuiltinCfg
from vlmtune.models import device as policy


def _cuda(monkeypatch, count: int, available: bool = True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_auto_takes_the_gpu_when_there_is_one(monkeypatch):
    _cuda(monkeypatch, 2)
    assert policy.resolve_device("auto") == torch.device("cuda", 0)
    assert policy.resolve_device(None) == torch.device("cuda", 0)
    assert policy.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert policy.resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(ValueError, match="has 2 CUDA device"):
        policy.resolve_device("cuda:2")


def test_auto_is_the_cpu_without_a_gpu_and_a_missing_device_is_a_clear_error(monkeypatch):
    _cuda(monkeypatch, 0, available=False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert policy.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        policy.resolve_device("cuda")
    for bad in ("gpu", "cpu:1", "cuda:x"):
        with pytest.raises(ValueError, match="expected auto, cpu, mps, cuda or cuda:N"):
            policy.resolve_device(bad)


def _saved(tmp_path, dtype: torch.dtype, meta: dict | None):
    from vlmtune.models.builtin import build_builtin

    loaded = build_builtin(BuiltinCfg(**TINY_BUILTIN), seed=0)
    loaded.model.to(dtype).save_pretrained(tmp_path)
    loaded.processor.save_pretrained(tmp_path)
    if meta is not None:
        (tmp_path / "vlmtune.json").write_text(json.dumps(meta))
    return tmp_path


@pytest.mark.parametrize("meta", [{"family": "llava", "adapter": False, "dtype": "bfloat16"}, None],
                         ids=["run-dtype", "config-dtype"])
def test_a_bf16_checkpoint_reloads_in_bf16_unless_told_otherwise(tmp_path, meta):
    from vlmtune.runs import load_for_inference

    path = _saved(tmp_path, torch.bfloat16, meta)
    assert {p.dtype for p in load_for_inference(path).model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in load_for_inference(path, dtype="float32").model.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="--dtype 'half'"):
        load_for_inference(path, dtype="half")


@pytest.fixture(scope="module")
def run(tmp_path_factory, fashion_dir):
    tmp = tmp_path_factory.mktemp("device")
    cfg = tmp / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run_cfg(tmp, fashion_dir, train={"max_steps": 2, "eval_every": 0,
                                                                          "save_every": 2})))
    assert main(["train", "--config", str(cfg)]) == 0
    return tmp / "runs" / "t"


def test_every_inference_command_places_the_model_by_the_policy(run, fashion_dir, tmp_path, monkeypatch, capsys):
    """`--device cuda:1 --dtype bfloat16` reaches the loader of eval, predict, data autolabel and serve (CUDA is
    mocked: the model stays on the CPU, but the device each command asked for is recorded)."""
    from vlmtune.config import ServeCfg
    from vlmtune.serve import load_predictor

    asked = []

    def record(spec):
        asked.append(spec)
        return torch.device("cpu")

    monkeypatch.setattr(policy, "resolve_device", record)
    flags = ["--device", "cuda:1", "--dtype", "bfloat16", "--limit", "2"]
    common = ["--model", str(run), "--data", str(fashion_dir), "--split", "val"]
    assert main(["eval", *common, *flags, "--out", str(tmp_path / "e")]) == 0
    assert main(["predict", *common, *flags, "--out", str(tmp_path / "p.jsonl")]) == 0
    images = tmp_path / "photos"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(images / "a.png")
    assert main(["data", "autolabel", str(images), "--model", str(run), "--task", "caption", "--out",
                 str(tmp_path / "al"), "--device", "cuda:1", "--dtype", "bfloat16"]) == 0
    predictor = load_predictor(run, ServeCfg(device="cuda:1", dtype="bfloat16"), 2)
    assert asked == ["cuda:1"] * 4
    assert {p.dtype for p in predictor.loaded.model.parameters()} == {torch.bfloat16}
