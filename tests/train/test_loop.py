"""The training loop end to end on a tiny built-in model: run directory, learning, LoRA, freezing, accumulation."""

import json

import pytest
import torch
from helpers import tiny_run_cfg
from safetensors.torch import load_file

from vlmtune.config import RunCfg
from vlmtune.train.loop import fit, setup, train


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_fit_writes_the_run_directory(tmp_path, fashion_dir):
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir, train={"trackers": ["tensorboard"]}))
    state = setup(cfg)
    before = {n: p.detach().clone() for n, p in state.model.named_parameters()}
    result = fit(state)
    run = cfg.run_dir
    assert (run / "run_config.yaml").is_file() and RunCfg.from_file(run / "run_config.yaml") == cfg
    rows = _rows(run)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if "val/vqa_accuracy" in r] == [0, 3, 6], "the base model is step 0"
    steps = [r for r in rows if "loss" in r]
    assert all(r["loss"] > 0 and r["lr"] >= 0 for r in steps) and steps[0]["lr"] > 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-3", "step-6"]
    for f in ["model.safetensors", "config.json", "tokenizer.json", "processor_config.json", "vlmtune.json",
              "trainer/optimizer.pt", "trainer/rng.pt", "trainer/state.json", "trainer/trainable.safetensors"]:
        assert (run / "checkpoints/step-6" / f).is_file(), f
    assert (run / "best/vlmtune.json").is_file() and not (run / "best/trainer").exists()
    assert (run / "predictions/step-6/predictions.jsonl").is_file()
    assert (run / "predictions/step-0/predictions.jsonl").is_file()
    assert list((run / "tensorboard").rglob("events.out.tfevents*")), "TensorBoard logs written"
    assert result["n"] == 5 and 0 <= result["vqa_accuracy"] <= 1
    unchanged = {n for n, p in state.model.named_parameters() if torch.equal(p.detach(), before[n])}
    # LLaVA reads the tower's hidden states before its post_layernorm, so only that is never used
    assert unchanged == {"model.vision_tower.post_layernorm.weight", "model.vision_tower.post_layernorm.bias"}
    assert steps[-1]["loss"] < steps[0]["loss"]


def test_gradient_accumulation_matches_one_big_batch(tmp_path, fashion_dir):
    """Token-weighted loss: 2 micro-batches of 4 == 1 batch of 8 (mean-of-means would differ)."""
    losses = []
    for micro in (4, 8):
        cfg = tiny_run_cfg(tmp_path / str(micro), fashion_dir, data={"val_split": None},
                           train={"micro_batch_size": micro, "global_batch_size": 8, "max_steps": 3})
        train(RunCfg.from_dict(cfg))
        losses.append([r["loss"] for r in _rows(tmp_path / str(micro) / "runs/t")])
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_frozen_vision_tower_does_not_change(tmp_path, fashion_dir):
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir, data={"val_split": None},
                                        train={"freeze_vision": True, "max_steps": 2}))
    state = setup(cfg)
    vision = {n: p.detach().clone() for n, p in state.model.named_parameters() if "vision_tower" in n}
    fit(state)
    now = dict(state.model.named_parameters())
    assert vision and all(torch.equal(now[n].detach(), v) for n, v in vision.items())
    saved = load_file(cfg.run_dir / "checkpoints/step-2/trainer/trainable.safetensors")
    assert not any("vision_tower" in n for n in saved)


def test_lora_run_saves_adapter_and_reloads_for_inference(tmp_path, fashion_dir):
    from vlmtune.data.images import load_images
    from vlmtune.data.store import read_samples
    from vlmtune.infer import Predictor

    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir, lora={"enabled": True, "r": 4},
                                        train={"lr": 1e-2}))
    state = setup(cfg)
    trainable = {n for n, p in state.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "multi_modal_projector" in n for n in trainable)
    fit(state)
    run = cfg.run_dir
    assert (run / "best/adapter_model.safetensors").is_file() and not (run / "best/model.safetensors").exists()
    assert (run / "base/model.safetensors").is_file(), "the built base is saved for the adapter"
    # the reloaded adapter answers exactly as the model did during training
    rows = [json.loads(x) for x in (run / "predictions/step-6/predictions.jsonl").read_text().splitlines()]
    val, _ = read_samples(fashion_dir, split="val")
    p = Predictor.from_path(run, max_new_tokens=4)
    assert p.generate(val, [load_images(fashion_dir, s) for s in val]) == [r["prediction"] for r in rows]


def test_hflip_is_a_fixed_function_of_seed_and_step_and_mirrors_the_images(tmp_path, fashion_dir):
    from vlmtune.train.batching import encode_batch, hflip_mask

    masks = [hflip_mask(0, step, 64) for step in range(4)]
    assert masks == [hflip_mask(0, step, 64) for step in range(4)]  # a resumed run flips the same images
    assert masks[0] != masks[1] and 16 < sum(masks[0]) < 48
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir, train={"hflip": True}))
    state = setup(cfg)
    samples = [(0, s) for s in state.mixture.sources[0].samples[:2]]
    plain = encode_batch(state, samples, [False, False]).inputs["pixel_values"]  # [B, C, H, W]
    mixed = encode_batch(state, samples, [True, False]).inputs["pixel_values"]
    assert torch.equal(mixed[0], plain[0].flip(-1)) and not torch.equal(mixed[0], plain[0])
    assert torch.equal(mixed[1], plain[1])


def test_hflip_refuses_data_that_talks_about_left_and_right(tmp_path):
    from vlmtune.data.dataset import synthesize

    data = tmp_path / "shapes"
    synthesize(data, "shapes", 40, seed=0)
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, data, train={"hflip": True}))
    with pytest.raises(ValueError, match=r"train.hflip: sample 'shapes-0-\d+' mentions left/right"):
        setup(cfg)
