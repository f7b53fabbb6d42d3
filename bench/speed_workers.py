"""The workers of bench/train_speed.py, each run in a fresh subprocess (`train_speed.py --worker NAME SPEC RESULT`):
they build the model and data, train with vlmtune, TRL or the HF Trainer, and time the steps from inside (the
parent, which imports no torch, times the process from outside: bench/speed_harness.py).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LENGTH = 512


def _env_setup() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DISABLE_TELEMETRY", "1")
    src = str(REPO / "src")
    if src not in sys.path:
        sys.path.insert(0, src)


def _ordered_samples(spec: dict):
    """The train split and the samples of steps 0..steps-1 in vlmtune's order (sample ids come from prep)."""
    from vlmtune.data.dataset import load_split

    root = Path(spec["data"])
    by_id = {s.id: s for s in load_split(root, "train", False)}
    order = json.loads((Path(spec["work"]) / "order.json").read_text())
    return root, [by_id[i] for i in order[: spec["steps"] * spec["batch"]]]


def _lora_model(spec: dict):
    """The built-in model (seeded) + LoRA exactly as vlmtune's `build_model` makes it."""
    from peft import LoraConfig, get_peft_model

    from vlmtune.config import BuiltinCfg
    from vlmtune.models import get_family
    from vlmtune.models.builtin import build_builtin

    family = get_family("llava")
    loaded = build_builtin(BuiltinCfg(**spec.get("builtin", {})), seed=spec["seed"])
    targets = list(family.lora_targets)
    lora = LoraConfig(r=spec["lora_r"], lora_alpha=spec["lora_alpha"], lora_dropout=spec["lora_dropout"],
                      target_modules=targets[0] if len(targets) == 1 else targets,
                      modules_to_save=list(family.projector_modules))
    return family, loaded, get_peft_model(loaded.model, lora)


def _trl_dataset(root: Path, samples):
    """TRL's prompt/completion format: `images` (paths, decoded by `datasets` on access) + conversational rows."""
    import datasets

    from vlmtune.data.sample import message_text

    def user(s):
        return [{"role": "user", "content": message_text(s.messages[0])}]

    def answer(s):
        return [{"role": "assistant", "content": message_text(s.messages[1])}]

    for s in samples:
        if len(s.messages) != 2 or len(s.images) != 1:
            raise ValueError(f"{s.id}: the benchmark expects one image, one question and one answer")
    ds = datasets.Dataset.from_dict({"images": [[str(root / s.images[0])] for s in samples],
                                     "prompt": [user(s) for s in samples],
                                     "completion": [answer(s) for s in samples]})
    seq = getattr(datasets, "List", None) or datasets.Sequence
    return ds.cast_column("images", seq(datasets.Image()))


def _hf_args(cls, spec: dict, out: Path, **extra):
    return cls(
        output_dir=str(out), per_device_train_batch_size=spec["batch"], gradient_accumulation_steps=1,
        max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="cosine", warmup_steps=0,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0, optim="adamw_torch",
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", use_cpu=True,
        bf16=spec.get("mixed_precision", "no") == "bf16",
        seed=spec["seed"], data_seed=spec["seed"], train_sampling_strategy="sequential", dataloader_num_workers=0,
        disable_tqdm=True, gradient_checkpointing=False, **extra,
    )


def _step_recorder():
    """A TrainerCallback that timestamps every optimizer step and keeps every logged loss."""
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def __init__(self):
            self.times, self.losses = [], []

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return Recorder()


def _timed(fn, sink: list):
    """`fn`, appending [end time, duration] of every call to `sink` (the data side of a step: fetch, collate)."""

    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            end = time.perf_counter()
            sink.append([end, end - t])

    return wrapper


def _run_trainer(trainer, rec, t0: float, data: list) -> dict:
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # nobody reads it; the recorder keeps the losses
    trainer.add_callback(rec)
    trainer.data_collator = _timed(trainer.data_collator, data)
    trainer.train()
    return {"times": rec.times, "losses": rec.losses, "t0": t0, "data": data}


# ---------------------------------------------------------------------- workers


def w_prep(spec: dict) -> dict:
    """Synthesize the data, fix vlmtune's data order, count tokens per step, check TRL's batches equal vlmtune's."""
    import torch

    from vlmtune.data.dataset import load_split, synthesize
    from vlmtune.data.images import load_images
    from vlmtune.data.mix import Mixture

    root = Path(spec["data"])
    if not (root / "manifest.jsonl").is_file():
        t = time.perf_counter()
        synthesize(root, "fashion", spec["n"], seed=0, size=64)
        print(f"synthesized {spec['n']} samples in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    train = load_split(root, "train", False)
    mix = Mixture([("train", train, 1.0)])
    steps = spec["order_steps"]
    items = [s for k in range(steps) for _, s in mix.step_items(spec["seed"], k, spec["batch"])]
    (Path(spec["work"]) / "order.json").write_text(json.dumps([s.id for s in items]))

    family, loaded, _ = _lora_model(spec)
    proc = loaded.processor
    b = spec["batch"]
    per_step = []  # (non-pad tokens incl. image tokens, padded positions, target tokens)
    for k in range(spec["steps"]):
        chunk = items[k * b : (k + 1) * b]
        batch = family.encode(proc, chunk, [load_images(root, s) for s in chunk], "train", MAX_LENGTH)
        per_step.append((int(batch.inputs["attention_mask"].sum()), int(batch.inputs["attention_mask"].numel()),
                         batch.n_target_tokens))

    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    collator = DataCollatorForVisionLanguageModeling(proc, completion_only_loss=True)
    ds = _trl_dataset(root, items[: 3 * b])
    same = True
    for k in range(3):
        chunk = items[k * b : (k + 1) * b]
        ours = family.encode(proc, chunk, [load_images(root, s) for s in chunk], "train", MAX_LENGTH).inputs
        theirs = collator([ds[i] for i in range(k * b, (k + 1) * b)])
        for key in ("input_ids", "attention_mask", "labels", "pixel_values"):
            same = same and ours[key].shape == theirs[key].shape and bool(torch.equal(ours[key], theirs[key]))
    return {"n_train": len(train), "per_step": per_step, "trl_batches_identical": same,
            "image_tokens": int((batch.inputs["input_ids"] == proc.image_token_id).sum()) // b}


def w_peak(spec: dict) -> dict:
    """fp32 matmul throughput of this CPU (all threads torch uses): best of several."""
    import torch

    out = {"threads": torch.get_num_threads()}
    for n, reps in ((2048, 10), (4096, 3)):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - t)
        out[str(n)] = 2 * n**3 / best
    return out


def w_flops(spec: dict) -> dict:
    """Forward FLOPs per sample, by module group: counted (FlopCounterMode, one real step-0 batch, the forward
    vlmtune runs: logits only at loss positions) and analytic (from the config); plus a counted fwd+bwd step."""
    from flops import by_group, count_flops, llava_analytic

    from vlmtune.data.images import load_images
    from vlmtune.models.loss import accepts_logits_to_keep, forward_losses

    root, samples = _ordered_samples({**spec, "steps": 1})
    family, loaded, model = _lora_model(spec)
    batch = family.encode(loaded.processor, samples, [load_images(root, s) for s in samples], "train", MAX_LENGTH)
    labels = batch.inputs.pop("labels")
    keep = accepts_logits_to_keep(model)
    model.train()
    fwd = count_flops(forward_losses, model, family, batch.inputs, labels, keep, 0)

    def fwd_bwd():
        sums, counts = forward_losses(model, family, batch.inputs, labels, keep, 0)
        (sums.sum() / counts.sum()).backward()

    step = count_flops(fwd_bwd)
    groups = {"vision tower": ".vision_tower", "projector": ".multi_modal_projector",
              "language model": ".language_model", "LM head": ".lm_head"}
    counted = by_group(fwd, groups)
    bsz = labels.shape[0]

    c = model.get_base_model().config
    vc = c.vision_config
    npatch = (vc.image_size // vc.patch_size) ** 2
    t_pad = batch.inputs["input_ids"].shape[1]
    t_real = batch.inputs["attention_mask"].sum().item() / bsz
    kept = (labels[:, 1:] != -100).sum().item() / bsz  # logits computed at these positions only
    analytic = llava_analytic(c, spec["lora_r"], t_pad, kept)
    return {"batch": bsz, "seq_padded": t_pad, "seq_real": t_real, "image_tokens": npatch, "vision_tokens": npatch + 1,
            "counted_fwd": {g: v / bsz for g, v in counted.items()}, "counted_fwd_total": fwd.total / bsz,
            "counted_step_total": step.total / bsz, "analytic_fwd": analytic,
            "params": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def _vlmtune_cfg(spec: dict):
    """RunCfg from a YAML written here plus CLI-style overrides (`--train.vision_cache auto`, ...)."""
    import yaml

    from vlmtune.config import RunCfg

    d = {
        "name": spec["name"], "out_dir": str(Path(spec["work"]) / "runs"), "report": False,
        "model": spec.get("model") or {"family": "llava", "path": "builtin", "builtin": spec.get("builtin", {})},
        "lora": {"enabled": True, "r": spec["lora_r"], "alpha": spec["lora_alpha"], "dropout": spec["lora_dropout"]},
        "data": {"path": spec["data"], "val_split": None, "max_length": spec.get("max_length", MAX_LENGTH)},
        "train": {"seed": spec["seed"], "max_steps": spec["steps"], "micro_batch_size": spec["batch"],
                  "global_batch_size": spec["batch"], "lr": spec["lr"], "weight_decay": 0.0, "warmup_steps": 0,
                  "schedule": "cosine", "grad_clip": 1.0, "log_every": 1, "eval_every": 0, "save_every": 0,
                  "trackers": [], "progress": False, "mixed_precision": spec.get("mixed_precision", "no"),
                  **spec.get("train", {})},
    }
    path = Path(spec["work"]) / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return RunCfg.from_file(path, spec.get("overrides", []))


def _record_vlmtune_steps(loop, t0: float) -> dict:
    """Wrap the loop's `log` (called after every optimizer step with log_every 1): timestamps and losses."""
    rec = {"times": [], "losses": [], "t0": t0}  # absolute perf_counter times (CLOCK_MONOTONIC)
    original = loop.log

    def log(state, row):
        if "loss" in row:
            rec["times"].append(time.perf_counter())
            rec["losses"].append(row["loss"])
        original(state, row)

    loop.log = log
    return rec


def w_vlmtune(spec: dict) -> dict:
    t0 = time.perf_counter()
    try:
        cfg = _vlmtune_cfg(spec)
    except ValueError as e:
        if spec.get("overrides"):
            return {"unavailable": str(e)}
        raise
    from vlmtune.train import loop

    rec = _record_vlmtune_steps(loop, t0)
    rec["data"] = []
    loop.step_batches = _timed(loop.step_batches, rec["data"])  # image reads + family.encode
    loop.train(cfg)
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    return rec


def w_trl(spec: dict) -> dict:
    t0 = time.perf_counter()
    from trl import SFTConfig, SFTTrainer

    root, samples = _ordered_samples(spec)
    family, loaded, model = _lora_model(spec)
    args = _hf_args(SFTConfig, spec, Path(spec["work"]) / "runs" / spec["name"], max_length=None,
                    completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=_trl_dataset(root, samples),
                         processing_class=loaded.processor)
    import datasets

    data: list = []
    datasets.Dataset.__getitems__ = _timed(datasets.Dataset.__getitems__, data)  # rows: PNG decode by `datasets`
    return _run_trainer(trainer, _step_recorder(), t0, data)


def w_hf(spec: dict) -> dict:
    t0 = time.perf_counter()
    from transformers import Trainer, TrainingArguments

    from vlmtune.data.images import load_images

    root, samples = _ordered_samples(spec)
    family, loaded, model = _lora_model(spec)

    def collate(chunk):
        return family.encode(loaded.processor, chunk, [load_images(root, s) for s in chunk], "train",
                             MAX_LENGTH).inputs

    args = _hf_args(TrainingArguments, spec, Path(spec["work"]) / "runs" / spec["name"], remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=samples, data_collator=collate)
    return _run_trainer(trainer, _step_recorder(), t0, [])


def w_phases(spec: dict) -> dict:
    """Where vlmtune's step time goes: wall time in data (image reads + encode), forward+loss, backward, clipping,
    optimizer step, over `steps` steps (after the setup), by wrapping those calls (CPU: synchronous)."""
    import accelerate

    from vlmtune.train import loop

    cfg = _vlmtune_cfg(spec)
    acc_times: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc_times[name] = acc_times.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    loop.step_batches = timed("data: read images + family.encode", loop.step_batches)
    loop.forward_losses = timed("forward + loss", loop.forward_losses)
    loop.log = timed("log (metrics.jsonl row)", loop.log)
    accelerate.Accelerator.backward = timed("backward", accelerate.Accelerator.backward)
    accelerate.Accelerator.clip_grad_norm_ = timed("clip_grad_norm_", accelerate.Accelerator.clip_grad_norm_)
    state = loop.setup(cfg)
    state.optimizer.step = timed("optimizer.step", state.optimizer.step)
    state.optimizer.zero_grad = timed("zero_grad", state.optimizer.zero_grad)
    saved = loop.save
    loop.save = lambda *a, **k: None  # the end-of-run checkpoint is not part of the steps
    t = time.perf_counter()
    loop.fit(state)
    total = time.perf_counter() - t
    loop.save = saved
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    return {"total": total, "phases": acc_times, "steps": spec["steps"], "window": [t, t + total]}


def w_cprofile(spec: dict) -> dict:
    """cProfile of vlmtune's `fit` for `steps` steps: the top functions by own time and by cumulative time."""
    import cProfile
    import pstats

    from vlmtune.train import loop

    cfg = _vlmtune_cfg(spec)
    state = loop.setup(cfg)
    loop.save = lambda *a, **k: None
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    loop.fit(state)
    prof.disable()
    total = time.perf_counter() - t
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    window = [t, t + total]
    st = pstats.Stats(prof)
    rows = []
    for (file, line, fn), (_cc, nc, tt, ct, _) in st.stats.items():
        short = file.split("site-packages/")[-1].split("/src/")[-1]
        rows.append({"fn": f"{short}:{line}({fn})" if line else fn, "calls": nc, "tottime": tt, "cumtime": ct})
    by_tot = sorted(rows, key=lambda r: -r["tottime"])[: spec["top"]]
    wrappers = ("torch/nn/modules/module.py", "transformers/utils/generic.py", "transformers/utils/output_capturing",
                "transformers/modeling_layers.py", "torch/_tensor.py", "torch/autograd/__init__.py",
                "torch/autograd/graph.py", "torch/utils/_contextlib.py", "peft/peft_model.py", "<")
    by_cum = sorted((r for r in rows if not r["fn"].startswith(wrappers)), key=lambda r: -r["cumtime"])
    by_cum = by_cum[: 2 * spec["top"]]
    return {"total": total, "steps": spec["steps"], "by_tottime": by_tot, "by_cumtime": by_cum, "window": window}


WORKERS = {"prep": w_prep, "peak": w_peak, "flops": w_flops, "vlmtune": w_vlmtune, "trl": w_trl, "hf": w_hf,
           "phases": w_phases, "cprofile": w_cprofile}


def worker_main(name: str, spec_path: str, result_path: str) -> None:
    _env_setup()
    spec = json.loads(Path(spec_path).read_text())
    result = WORKERS[name](spec)
    Path(result_path).write_text(json.dumps(result))
