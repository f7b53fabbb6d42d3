"""Contrastive fine-tuning of a CLIP or SigLIP dual encoder on a dataset's image-caption pairs.

    vlmtune retrieve train --model openai/clip-vit-base-patch32 --data data/catalogue --out runs/catalogue-clip \
        --epochs 5 --batch-size 128 --lr 1e-5

What it optimises is each model's own loss (`model(..., return_loss=True)`), which is the paper's:
* CLIP (Radford et al. 2021, Fig. 3): the symmetric InfoNCE `(CE(logits, labels, axis=0) + CE(logits, labels,
  axis=1)) / 2` over the batch's n x n cosine matrix times `exp(t)`, t a learnable log-temperature. As in the paper
  ("clipped to prevent scaling the logits by more than 100") and open_clip, t is clamped to log 100 after each step.
* SigLIP (Zhai et al. 2023, Alg. 1): `-sum(log_sigmoid(labels * (cos * exp(t') + b))) / n` with labels +1 on the
  diagonal and -1 elsewhere; t' and b learnable. transformers' `SiglipModel` computes exactly this (big_vision's
  formula: the sum over each text's row, averaged over rows).

Both losses assume that pair i's only positive in the batch is pair i. A batch holding the same image twice, or two
identical captions (common in catalogues: one template caption for many products), would push apart a true pair.
So each epoch visits every image once with one of its captions drawn at random (the Flickr30k/COCO practice of
sampling among an image's captions), and the batch builder keeps identical captions (case and spaces ignored) out of
one batch, deferring the repeat to the next. Then the models' losses are right and are used as they are.

The loop: AdamW (betas 0.9/0.98, eps 1e-6 as in the CLIP paper; no weight decay on biases, norms, temperature and
bias, i.e. parameters with fewer than 2 dimensions, as open_clip does), linear warmup then cosine decay to 0, gradient
clipping. Optimizer and schedule come from the VLM training's builders (train/optim.py) with these values; their
warmup factor is `(step + 1) / warmup_steps`, so step 0 already trains at 1/warmup of the peak, and the peak comes
one step sooner than with transformers' `get_cosine_schedule_with_warmup` (`step / warmup_steps`), used before.
Validation Recall@K (vlmtune.retrieval.evaluate) before training and after every `eval_every` steps (default: each
epoch); the checkpoint with the best validation rsum goes to `OUT/best/` (model + processor + retrieval.json, no
trainer state; the untrained model when fine-tuning never beats it), the latest to `OUT/checkpoints/step-N/` in the
VLM training's checkpoint format (train/checkpoint.py: the model files, and trainer/ with the trainable weights,
optimizer, scheduler, every random generator's state and the step; the checkpoint before it is deleted), so running
the same command again continues an interrupted run where it stopped. The batch order is a function of (seed,
epoch), so a resumed run sees the batches the uninterrupted run would have seen. A run written before this layout
(its one checkpoint in `checkpoints/last/`) continues from there, and its next save replaces it with a step-N.
`freeze="vision"` (or `"text"`) keeps that tower and its projection fixed (LiT, Zhai et al. 2022, locks the image
tower). One process, one device: the losses see only the local batch (open_clip gathers features across processes
for more negatives; transformers' losses do not), so multi-GPU training is not offered.

    OUT/ retrieval_config.json  metrics.jsonl  best/  checkpoints/step-N/{model, processor, retrieval.json, trainer/}
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from vlmtune.config import build_section
from vlmtune.data.images import DecodedImages
from vlmtune.io import atomic_dir, atomic_write_text
from vlmtune.retrieval.encoder import DualEncoder
from vlmtune.retrieval.evaluate import Gallery, evaluate, load_gallery
from vlmtune.runs import TRAINER, checkpoints
from vlmtune.train.checkpoint import load_trainer_state, prune, save_checkpoint, save_model_files, truncate_log
from vlmtune.train.optim import adamw, lr_schedule

CONFIG = "retrieval_config.json"
META = "retrieval.json"
"""The meta file of a retrieval checkpoint (step, base model, validation metrics), in place of a VLM's vlmtune.json."""
LEGACY_LAST = Path("checkpoints") / "last"
"""The one resumable checkpoint of runs written before retrieval used train/checkpoint.py (read once to resume)."""
SELECT = "rsum"
"""Validation metric that picks the best checkpoint (the sum of the six recalls, as ALBEF and BLIP select)."""


@dataclass(frozen=True)
class RetrievalTrainCfg:
    model: str
    """Starting checkpoint: a hub id or directory of a CLIP or SigLIP model."""
    data: str
    """vlmtune dataset directory with caption samples in the train and val splits."""
    out: str
    """Run directory (created; running again with the same config resumes it)."""
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup: float = 0.1
    """Fraction of the steps with a linear warmup."""
    grad_clip: float = 1.0
    eval_every: int = 0
    """Validate (and save) every this many steps; 0: at the end of each epoch."""
    freeze: Literal["none", "vision", "text"] = "none"
    train_split: str = "train"
    val_split: str = "val"
    seed: int = 0
    eval_batch_size: int = 128

    @classmethod
    def load(cls, path: str | Path | None, **given) -> RetrievalTrainCfg:
        """The YAML recipe at `path` (keys: this class's fields), with the keyword arguments that are not None
        (command-line flags) overriding it; typed and checked by the run config's loader (`config.build_section`)."""
        values = {}
        if path is not None:
            values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            if not isinstance(values, dict):
                raise ValueError(f"{path}: expected a mapping of {cls.__name__}'s keys, got {values!r}")
        values.update({k: v for k, v in given.items() if v is not None})
        missing = [k for k in ("model", "data", "out") if k not in values]
        if missing:
            raise ValueError(f"retrieve train: no {', '.join(missing)} (give --{' --'.join(missing)} or a --config)")
        try:
            return build_section(cls, values)
        except ValueError as e:  # name the recipe file (flags alone: the command)
            raise ValueError(f"{path if path is not None else 'retrieve train'}: {e}") from None

    def __post_init__(self):
        if self.freeze not in ("none", "vision", "text"):
            raise ValueError(f"freeze must be none, vision or text, got {self.freeze!r}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch size >= 2 (a contrastive batch needs negatives)")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")


def _caption_key(text: str) -> str:
    return " ".join(text.lower().split())


def epoch_batches(gallery: Gallery, epoch: int, seed: int, batch_size: int) -> list[list[tuple[int, int]]]:
    """Batches of (image index, text index) for one epoch: every image once, with one of its captions drawn at random,
    in a shuffled order; no two identical captions in one batch (a repeat waits for the next batch)."""
    rng = random.Random(f"{seed}:{epoch}")
    texts_of = [[] for _ in gallery.images]
    for t, owner in enumerate(gallery.image_of_text):
        texts_of[owner].append(t)
    order = list(range(len(gallery.images)))
    rng.shuffle(order)
    pending = deque((i, rng.choice(texts_of[i])) for i in order)
    batches = []
    while pending:
        batch, seen, deferred = [], set(), []
        while pending and len(batch) < batch_size:
            pair = pending.popleft()
            key = _caption_key(gallery.texts[pair[1]])
            if key in seen:
                deferred.append(pair)
            else:
                seen.add(key)
                batch.append(pair)
        pending.extendleft(reversed(deferred))
        batches.append(batch)
    return batches


def freeze_tower(model, family, tower: str) -> int:
    """Turn off gradients of one tower (its projection included); returns the number of frozen tensors."""
    if tower == "none":
        return 0
    prefixes = family.towers[tower]
    frozen = 0
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            p.requires_grad_(False)
            frozen += 1
    if not frozen:
        raise ValueError(f"freeze {tower}: no parameter starts with {prefixes}")
    return frozen


def _check_out(cfg: RetrievalTrainCfg, run: Path) -> None:
    """Refuse an --out that holds another run, or something that is not a retrieval run."""
    saved = run / CONFIG
    if saved.is_file():
        before = json.loads(saved.read_text())
        if before != dataclasses.asdict(cfg):
            diff = sorted(k for k in before if before[k] != dataclasses.asdict(cfg).get(k))
            raise ValueError(f"{run}: holds a run with a different configuration ({', '.join(diff)} differ); "
                             "resume it with the same arguments or choose another --out")
    elif run.exists() and any(run.iterdir()):
        raise FileExistsError(f"{run}: exists and is not a retrieval run (no {CONFIG}); choose another --out")


def _resume_point(run: Path) -> Path | None:
    """The checkpoint to continue from: the latest complete checkpoints/step-N, else the checkpoints/last/ of a run
    written before step-N checkpoints, else None (a new run)."""
    done = checkpoints(run)
    if done:
        return done[-1]
    last = run / LEGACY_LAST
    return last if (last / TRAINER / "state.json").is_file() else None


def _load_legacy_trainer_state(last: Path, optimizer, scheduler) -> dict:
    """Optimizer, scheduler, torch's CPU random state and state.json of a checkpoints/last/ written before retrieval
    used train/checkpoint.py: its trainer/ has no trainable.safetensors (the encoder was loaded from last/'s model
    files) and its rng.pt holds torch's generator only. The schedule goes on with `lr_schedule`'s formula."""
    import torch

    trainer = last / TRAINER
    optimizer.load_state_dict(torch.load(trainer / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(trainer / "scheduler.pt", weights_only=True))
    torch.set_rng_state(torch.load(trainer / "rng.pt", weights_only=True)["torch"])
    return json.loads((trainer / "state.json").read_text())


def _save_best(run: Path, enc: DualEncoder, meta: dict) -> None:
    """Model + processor + retrieval.json into run/best, atomically (written aside, then renamed over the old one)."""
    with atomic_dir(run / "best") as tmp:
        save_model_files(tmp, enc.model, enc.processor, meta, meta_name=META)


def _log(run: Path, row: dict) -> None:
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()
             if k in ("step", "epoch", "train_loss", "i2t_R@1", "t2i_R@1", "t2i_R@10", "rsum")}
    print(f"retrieve train: {shown}", file=sys.stderr)


def train(cfg: RetrievalTrainCfg, stop_after: int | None = None) -> dict:
    """Fine-tune; returns a summary (the best step and its validation metrics). `stop_after`: stop once this many
    steps are done and saved, as an interrupted run would (a later call with the same config continues)."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per checkpoint save only clutters the log
    run = Path(cfg.out)
    train_set, val_set = load_gallery(cfg.data, cfg.train_split), load_gallery(cfg.data, cfg.val_split)
    _check_out(cfg, run)
    resume = _resume_point(run)
    enc = DualEncoder.load(resume if resume is not None else cfg.model)  # a checkpoint holds every weight
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / CONFIG, json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    model = enc.model
    freeze_tower(model, enc.family, cfg.freeze)

    plan = [epoch_batches(train_set, e, cfg.seed, cfg.batch_size) for e in range(cfg.epochs)]
    flat = [(e, b) for e, batches in enumerate(plan) for b in batches]
    total = len(flat)
    per_epoch = {sum(len(p) for p in plan[: e + 1]) for e in range(cfg.epochs)}  # steps that end an epoch
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, betas=(0.9, 0.98), eps=1e-6)  # the CLIP paper's
    scheduler = lr_schedule(optimizer, math.ceil(cfg.warmup * total), total, "cosine", min_lr_ratio=0.0)
    step, best = 0, None
    if resume is not None:
        if resume == run / LEGACY_LAST:
            state = _load_legacy_trainer_state(resume, optimizer, scheduler)
        else:
            state = load_trainer_state(resume, model, optimizer, scheduler)
        step, best = state["step"], state["best"]
        truncate_log(run / "metrics.jsonl", step)  # rows the killed run wrote after this checkpoint
        print(f"retrieve train: resuming {run} at step {step}/{total} from {resume}", file=sys.stderr)
    else:
        (run / "metrics.jsonl").unlink(missing_ok=True)  # killed before its first checkpoint: the log restarts too
        torch.manual_seed(cfg.seed)
        metrics = evaluate(enc, val_set, cfg.eval_batch_size)
        best = {"step": 0, **metrics}
        _log(run, {"step": 0, "epoch": 0, **metrics})
        _save_best(run, enc, {"step": 0, "val": metrics, "base": cfg.model})
    images, paths = DecodedImages(budget=1 << 30), train_set.paths()  # paths checked to stay inside the dataset
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if enc.device.type == "cuda" else None
    losses: list[float] = []
    started = time.time()
    while step < total:
        epoch, batch = flat[step]
        model.train()
        inputs = {**enc.text_inputs([train_set.texts[t] for _, t in batch]),
                  **enc.image_inputs([images.load(paths[i]) for i, _ in batch])}
        if autocast is not None:
            with autocast:
                loss = model(**inputs, return_loss=True).loss
        else:
            loss = model(**inputs, return_loss=True).loss
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if enc.family.max_log_scale is not None:
            with torch.no_grad():
                model.logit_scale.clamp_(0.0, enc.family.max_log_scale)
        losses.append(loss.item())
        step += 1
        if step == total or (step % cfg.eval_every == 0 if cfg.eval_every else step in per_epoch):
            model.eval()
            metrics = evaluate(enc, val_set, cfg.eval_batch_size)
            row = {"step": step, "epoch": epoch + 1, "train_loss": sum(losses) / max(len(losses), 1),
                   "lr": scheduler.get_last_lr()[0], "log_scale": model.logit_scale.item(), **metrics,
                   "seconds": round(time.time() - started, 1)}
            losses = []
            _log(run, row)
            if metrics[SELECT] > best[SELECT]:  # best/ first: a run killed before the checkpoint redoes both
                best = {"step": step, **metrics}
                _save_best(run, enc, {"step": step, "val": metrics, "base": cfg.model})
            save_checkpoint(run, step, model, enc.processor, {"val": metrics, "base": cfg.model}, optimizer, scheduler,
                            {"best": best}, meta_name=META)
            prune(run, keep=1)  # the latest is all a resume needs (best/ is written on its own)
            shutil.rmtree(run / LEGACY_LAST, ignore_errors=True)  # an old run's checkpoint, superseded now
            if stop_after is not None and step >= stop_after and step < total:
                return {"out": str(run), "steps": step, "total_steps": total, "stopped": True, "best": best}
    return {"out": str(run), "steps": step, "total_steps": total, "stopped": False, "best": best,
            "best_dir": str(run / "best")}
