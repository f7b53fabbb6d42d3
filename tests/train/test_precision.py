"""Half-precision bases: every trainable parameter (LoRA adapters, the projector as `modules_to_save`, a full
fine-tune's weights) is kept and updated in float32 while the frozen base stays in bf16/fp16, and the forward runs
under autocast. Before, AdamW ran on the bf16 projector (most small updates lost) and an fp16 base went NaN at step 2
(Adam's eps rounds to 0 in fp16)."""

from __future__ import annotations

import pytest
import torch
from helpers import save_builtin, tiny_run_cfg

from vlmtune.config import RunCfg

LR = 5e-5
PROJECTOR = "multi_modal_projector"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_builtin(tmp_path_factory.mktemp("base"))


def _train(tmp_path, data, base, dtype: str, precision: str, lora: bool):
    from vlmtune.train.loop import fit, setup

    cfg = RunCfg.from_dict(tiny_run_cfg(
        tmp_path / dtype, data, model={"path": str(base), "dtype": dtype},
        lora={"enabled": lora, "r": 4, "dropout": 0.0},
        train={"lr": LR, "max_steps": 2, "warmup_steps": 0, "schedule": "constant", "eval_every": 0, "save_every": 0,
               "freeze_projector": False,  # the projector trains (modules_to_save) beside LoRA: its update is checked
               "mixed_precision": precision, "weight_decay": 0.0}))
    state = setup(cfg)
    model = state.accelerator.unwrap_model(state.model)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    fit(state)
    losses = [r["loss"] for r in map(__import__("json").loads,
                                      (cfg.run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    after = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    return losses, start, after, frozen


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_half_precision_bases_update_float32_trainables_like_a_float32_base(tmp_path, fashion_dir, base, lora):
    ref_losses, ref_start, ref_after, _ = _train(tmp_path / "ref", fashion_dir, base, "float32", "no", lora)
    for dtype, precision in (("bfloat16", "bf16"), ("float16", "fp16")):
        losses, start, after, frozen = _train(tmp_path / precision, fashion_dir, base, dtype, precision, lora)
        assert all(torch.isfinite(torch.tensor(losses))), (dtype, losses)
        assert {p.dtype for p in after.values()} == {torch.float32}, "trainables are kept in float32"
        if lora:
            assert frozen == {getattr(torch, dtype)}, "the frozen base stays in half precision"
        projector = [n for n in after if PROJECTOR in n and n.endswith("weight")]
        assert projector, "the projector trains (modules_to_save under LoRA)"
        for n in projector:
            update, ref_update = after[n] - start[n], ref_after[n] - ref_start[n]
            moved = (update != 0).float().mean().item()
            assert moved > 0.99, f"{dtype}: only {moved:.0%} of {n} moved"
            # two Adam steps move each weight by about 2 x lr; bf16/fp16 forward noise may flip a rare sign
            assert (update - ref_update).abs().mean() < 0.1 * LR, (dtype, n)
