"""The builders `train.loop.setup` calls: the model (LoRA, freezing, QLoRA), the optimizer with its schedule, and the
data (the training mixture, the val split, the probes). Each takes the run's config and returns plain objects.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from vlmtune.config import RunCfg
from vlmtune.data.dataset import load_split, prepare_data_dir, prepare_dataset
from vlmtune.data.mix import Mixture
from vlmtune.eval import forgetting
from vlmtune.models import ModelFamily, load_model
from vlmtune.models.family import Loaded
from vlmtune.runs import RUN_BASE
from vlmtune.train import checkpoint as ckpt
from vlmtune.train.optim import adamw, lr_schedule
from vlmtune.train.trainable import enable_checkpointing, make_trainable


def build_model(cfg: RunCfg, family: ModelFamily, run_dir: Path, is_main: bool) -> tuple[Loaded, Any, dict]:
    """Load the model, apply LoRA and freezing; returns (loaded, trainable model, checkpoint meta)."""
    loaded = load_model(cfg.model, seed=cfg.train.seed)
    model = loaded.model
    meta = {"family": family.name, "adapter": cfg.lora.enabled, "dtype": cfg.model.dtype,
            **ckpt.base_record(cfg.model)}
    if cfg.model.quantization is not None:  # QLoRA: norms to fp32, input grads on (peft's recipe)
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        meta["quantization"] = dataclasses.asdict(cfg.model.quantization)
    if cfg.train.gradient_checkpointing:
        enable_checkpointing(model)  # make_trainable then drops its input-grad hooks in a frozen vision tower
    if cfg.lora.enabled and cfg.model.path == "builtin":  # a built (random) base must be saved for the adapter
        if is_main:
            ckpt.save_base(run_dir, model, loaded.processor, family.name)
        meta["base"] = RUN_BASE
    return loaded, make_trainable(cfg, family, model), meta


def build_optimizer(cfg: RunCfg, model):
    """AdamW (betas 0.9/0.95) and the warmup + cosine/linear/constant schedule of `cfg.train` (train/optim.py)."""
    t = cfg.train
    optimizer = adamw(model, t.lr, t.weight_decay, betas=(0.9, 0.95))
    return optimizer, lr_schedule(optimizer, t.warmup_steps, t.max_steps, t.schedule, t.min_lr_ratio)


def build_data(cfg: RunCfg, run_dir: Path):
    """(val root, training mixture, image root per source, val samples, probes). The bad records of every source,
    of val and of the probes are listed in rejected.jsonl, each with the source it was read for."""
    d, rejected = cfg.data, run_dir / "rejected.jsonl"
    rejected.unlink(missing_ok=True)  # this setup's list (a restart reads the data again; load_split adds to it)
    ocr = d.ocr  # the same enrichment for every source and val (and for eval --model RUN, from run_config)
    root = prepare_data_dir(d)
    if d.sources:
        roots = [prepare_dataset(src.path, src.synth) for src in d.sources]
        mixture = Mixture([(src.name, load_split(r, src.split, d.skip_bad, rejected, ocr, source=src.name),
                            src.weight) for src, r in zip(d.sources, roots, strict=True)])
    else:
        roots = [root]
        mixture = Mixture([("train", load_split(root, d.train_split, d.skip_bad, rejected, ocr, source="train"),
                            1.0)])
    val = []
    if d.val_split:
        val = load_split(root, d.val_split, d.skip_bad, rejected, ocr, source="val")
        if cfg.eval.max_samples:
            val = val[: cfg.eval.max_samples]
    probes = forgetting.load_probes(cfg.probes, d.skip_bad, rejected)
    return root, mixture, roots, val, probes
