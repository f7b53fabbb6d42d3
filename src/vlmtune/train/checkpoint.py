"""Checkpoints of training: atomic save, resume, best-by-metric. Reading a run back (which checkpoint a run
directory means, its config, loading it for inference) is vlmtune/runs.py, whose docstring shows the layout on disk.

    runs/<name>/checkpoints/step-N/trainer/   trainable.safetensors optimizer.pt scheduler.pt rng.pt state.json
                                             (only in resumable checkpoints; best/ and base/ hold model files only)

Retrieval training (retrieval/train.py) writes the same checkpoints for its dual encoder, with retrieval.json in
place of vlmtune.json. A checkpoint is written into a temporary directory and renamed into place, so a run killed
mid-save leaves the previous checkpoint intact. `torch.load` is only used with `weights_only=True`.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np

from vlmtune.io import atomic_dir, atomic_write_text
from vlmtune.runs import META, TRAINER, base_fingerprint, checkpoints

SHARDED = "sharded"
"""Under FSDP / ZeRO-3: `accelerator.save_state` of every process (model and optimizer shards), in trainer/."""


def save_model_files(path: Path, model, processor, meta: dict, state_dict: dict | None = None,
                     meta_name: str = META) -> None:
    """Model weights (or adapter) + processor + vlmtune.json into `path` (which must not exist yet). `state_dict`: the
    full weights gathered from the processes (`accelerator.get_state_dict`) when the model's own are shards.
    `meta_name`: the meta file's name, for a model of another application (retrieval's dual encoder: retrieval.json),
    so that nothing reading vlmtune.json takes it for a VLM checkpoint."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one tiny bar per save only clutters the training log
    path.mkdir(parents=True)
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    model.save_pretrained(path, safe_serialization=True, **extra)
    processor.save_pretrained(path)
    (path / meta_name).write_text(json.dumps(meta, indent=2) + "\n")


def save_checkpoint(run_dir: Path, step: int, model, processor, meta: dict, optimizer, scheduler,
                    state: dict, state_dict: dict | None = None, sharded_state: Path | None = None,
                    meta_name: str = META) -> Path:
    """A resumable checkpoint at checkpoints/step-N (model files + trainer state). `meta_name`: see save_model_files.

    Under FSDP / DeepSpeed ZeRO-3 the caller passes the gathered `state_dict` (the model's own parameters are
    shards) and `sharded_state`, a directory where every process already wrote its optimizer shard with
    `accelerator.save_state`; it is moved into the checkpoint instead of `optimizer.pt`."""
    import torch
    from safetensors.torch import save_file

    final = run_dir / "checkpoints" / f"step-{step}"
    with atomic_dir(final) as tmp:
        save_model_files(tmp, model, processor, {**meta, "step": step}, state_dict, meta_name)
        trainer = tmp / TRAINER
        trainer.mkdir()
        weights = state_dict if state_dict is not None else dict(model.state_dict())
        trainable = {n: weights[n].detach().contiguous().cpu() for n, p in model.named_parameters()
                     if p.requires_grad}
        save_file(trainable, trainer / "trainable.safetensors")
        if sharded_state is not None:
            sharded_state.rename(trainer / SHARDED)
        else:
            torch.save(optimizer.state_dict(), trainer / "optimizer.pt")
        torch.save(scheduler.state_dict(), trainer / "scheduler.pt")
        torch.save(rng_state(), trainer / "rng.pt")
        (trainer / "state.json").write_text(json.dumps({**state, "step": step}, indent=2) + "\n")
    return final


def save_base(run_dir: Path, model, processor, family: str) -> None:
    """The base weights of a built (not downloaded) model, saved once per run so its adapters can be reloaded."""
    final = run_dir / "base"
    if (final / "config.json").is_file():
        return
    with atomic_dir(final) as tmp:
        save_model_files(tmp, model, processor, {"family": family})


def save_best(run_dir: Path, source: Path) -> Path:
    """Copy a checkpoint's model files (not its trainer state) to run_dir/best atomically."""
    final = run_dir / "best"
    with atomic_dir(final) as tmp:
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(TRAINER))
    return final


def prune(run_dir: Path, keep: int) -> None:
    for p in checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(p)


def load_trainer_state(path: Path, model, optimizer, scheduler, accelerator=None) -> dict:
    """Restore trainable weights, optimizer, scheduler and RNG from a checkpoint; returns its state.json. A checkpoint
    of a sharded run (FSDP / ZeRO-3) is restored through `accelerator.load_state` on every process."""
    import torch
    from safetensors.torch import load_file

    trainer = Path(path) / TRAINER
    if (trainer / SHARDED).is_dir():  # FSDP / ZeRO-3: each process reads back its own model and optimizer shards
        if accelerator is None:
            raise RuntimeError(f"{path}: a checkpoint of a sharded run is resumed under the same accelerate config")
        accelerator.load_state(str(trainer / SHARDED))
    else:
        weights = load_file(trainer / "trainable.safetensors")
        params = dict(model.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
        if missing or set(weights) - set(params):
            raise RuntimeError(f"{path}: checkpoint does not match the model (missing {missing[:3]}, "
                               f"unexpected {sorted(set(weights) - set(params))[:3]}); was the config changed?")
        with torch.no_grad():
            for n, w in weights.items():
                params[n].copy_(w)
        optimizer.load_state_dict(torch.load(trainer / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(trainer / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(trainer / "rng.pt", weights_only=True))
    return json.loads((trainer / "state.json").read_text())


def truncate_log(path: Path, step: int) -> None:
    """Drop the metrics.jsonl rows written after the checkpoint a run resumes from (the killed run got further than
    it saved; appending again would repeat those steps). A torn last line goes too."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    atomic_write_text(path, "".join(x + "\n" for x in keep))


def rng_state() -> dict:
    """Every random generator a training step may draw from: torch's CPU generator, each CUDA device's, NumPy's
    global one and Python's. Saved with each resumable checkpoint, so a resumed run draws the same dropout masks
    (LoRA dropout, attention dropout) as an uninterrupted one. Plain tensors and numbers: `weights_only` loads it."""
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved (a checkpoint from before NumPy/CUDA states were saved restores the rest)."""
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        if len(saved) != torch.cuda.device_count():
            raise RuntimeError(f"the checkpoint holds the random state of {len(saved)} CUDA device(s), this machine "
                               f"has {torch.cuda.device_count()}: resume on the same devices")
        torch.cuda.set_rng_state_all(saved)


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def base_record(model_cfg) -> dict:
    """What an adapter must know of its base to be applied to the same one later, from another directory or
    machine: the base as an absolute path (a local directory) or a hub id, its revision, attention implementation,
    trust_remote_code, and the fingerprint of a local base's weights."""
    path = model_cfg.path
    local = path != "builtin" and Path(path).expanduser().is_dir()
    base = str(Path(path).expanduser().resolve()) if local else path
    return {"base": base, "base_revision": model_cfg.revision, "attn_implementation": model_cfg.attn_implementation,
            "trust_remote_code": model_cfg.trust_remote_code,
            "base_fingerprint": base_fingerprint(base) if local else None}
