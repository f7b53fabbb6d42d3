"""On a CUDA device (`make test-gpu`; deselected elsewhere): every inference command places the model on the GPU by
default, a bf16 LoRA run trains with float32 trainables, an fp16 run goes through Accelerate's GradScaler. The
QLoRA 4-bit CUDA step is tests/test_quantization.py::test_qlora_step_on_cuda."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import save_builtin, tiny_run_cfg

from vlmtune.config import RunCfg

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda():
    assert torch.cuda.is_available(), "the gpu-marked tests need a CUDA device"
    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_builtin(tmp_path_factory.mktemp("base"), text_dim=64)


def _train(tmp_path, data, base, dtype, precision, lora=True):
    from vlmtune.train.loop import fit, setup

    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path / precision, data, model={"path": str(base), "dtype": dtype},
                                        lora={"enabled": lora, "r": 4},
                                        train={"max_steps": 4, "mixed_precision": precision, "eval_every": 4,
                                               "save_every": 4}))
    state = setup(cfg)
    fit(state)
    losses = [r["loss"] for r in map(json.loads, (cfg.run_dir / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    return cfg, state, losses


def test_bf16_lora_trains_on_the_gpu_with_float32_trainables(cuda, tmp_path, fashion_dir, base):
    cfg, state, losses = _train(tmp_path, fashion_dir, base, "bfloat16", "bf16")
    model = state.accelerator.unwrap_model(state.model)
    assert next(model.parameters()).device.type == "cuda"
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}


def test_fp16_goes_through_the_grad_scaler(cuda, tmp_path, fashion_dir, base):
    cfg, state, losses = _train(tmp_path, fashion_dir, base, "float16", "fp16")
    assert state.accelerator.scaler is not None
    assert all(map(torch.isfinite, torch.tensor(losses)))


def test_every_inference_command_puts_the_model_on_the_gpu(cuda, tmp_path, fashion_dir, base, capsys):
    from vlmtune.cli import main
    from vlmtune.config import ServeCfg
    from vlmtune.infer import Predictor
    from vlmtune.serve import load_predictor

    cfg, _, _ = _train(tmp_path, fashion_dir, base, "bfloat16", "bf16")
    predictor = Predictor.from_path(cfg.run_dir)  # --device auto
    assert next(predictor.loaded.model.parameters()).device.type == "cuda"
    assert {p.dtype for p in predictor.loaded.model.parameters()} == {torch.bfloat16}
    served = load_predictor(cfg.run_dir, ServeCfg(), 2)
    assert next(served.loaded.model.parameters()).device.type == "cuda"
    common = ["--model", str(cfg.run_dir), "--data", str(fashion_dir), "--split", "val", "--limit", "4"]
    assert main(["eval", *common, "--out", str(tmp_path / "e")]) == 0
    assert main(["predict", *common, "--out", str(tmp_path / "p.jsonl")]) == 0
    assert main(["eval", *common, "--device", "cpu", "--out", str(tmp_path / "e-cpu")]) == 0
