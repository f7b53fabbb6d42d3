"""Training speed, side by side: vlmtune's loop vs TRL's SFTTrainer vs a plain HF Trainer, one script.

    .venv/bin/python bench/train_speed.py              # full size: ~13 minutes on 2 quiet CPU cores; markdown
    .venv/bin/python bench/train_speed.py --quick      # smoke test (~2 minutes): tiny data, few steps, 1 repeat

Needs `trl` (`pip install 'vlmtune[bench]'`, or `.venv/bin/pip install trl==1.16.0`).

Same model, data, LoRA, batch, steps, learning rate, schedule, optimizer, clipping and seed in all three:
- model: the built-in LLaVA-architecture model at its default BuiltinCfg (CLIP 4x128 on 64x64 images, patch 8 ->
  64 image tokens; Llama 2x128), random weights (seeded); the FLOP split (vision tower vs the rest) is printed;
- data: the synthetic fashion world (`synthesize`), train split, in exactly the order vlmtune draws it
  (`Mixture.step_items(seed, step, batch)`); TRL and the HF Trainer read that list with a sequential sampler;
- LoRA r=8, alpha 16, dropout 0 (so that no random numbers are drawn while training and the three loss curves
  can be compared step by step) on the family's `lora_targets` (the language model's linears), projector trained
  in full (`modules_to_save`), the way vlmtune sets it up; the adapters start from the same random init;
- AdamW (0.9, 0.95), weight decay 0, cosine to 0 without warmup, gradient clipping 1.0, fp32, batch 8.

(a) vlmtune: `train(RunCfg)` with eval off (no val split), save_every 0 (one checkpoint, after the last step,
    outside the timed window), report false, trackers [], progress false, log_every 1.
(b) TRL SFTTrainer on `images` + conversational `prompt`/`completion` rows (completion-only loss: the answer and
    `</s>`, the tokens vlmtune trains); the prep step checks that TRL's collator gives bit-identical batches.
(c) a plain HF Trainer whose collator is vlmtune's `family.encode` (the same tensors by construction).

Every run is a fresh subprocess (the parent imports no torch); peak RSS comes from os.wait4. Throughput is over
steps (warmup, steps], from per-step timestamps taken after each optimizer step (vlmtune: its per-step log call;
HF/TRL: a TrainerCallback's on_step_end); all three log every step. Tables give medians of `--repeats` runs,
interleaved (a, b, c, a, b, c, ...). On a shared machine other processes' CPU use is measured during each run's
timed window (/proc/stat minus the run's own /proc/<pid>/stat): a run waits for a quiet machine and is repeated
when disturbed (with 2 cores, one busy neighbour makes torch's 2 threads several times slower).

Also: vlmtune with `--train.vision_cache auto` vs `off` over 3 epochs (if the config rejects the option: "vision
cache: not available"), the FLOP split and model-FLOPs utilisation against this CPU's measured fp32 matmul peak, and
where vlmtune's step time goes (wrapped phases, and cProfile of `fit`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("vlmtune", "trl", "hf")
LABELS = {"vlmtune": "vlmtune `train()`", "trl": "TRL SFTTrainer", "hf": "HF Trainer + vlmtune encode"}
MAX_LENGTH = 512


# ====================================================================== shared by the workers (torch lives here)


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
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", use_cpu=True, bf16=False,
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
    from torch.utils.flop_counter import FlopCounterMode

    from vlmtune.data.images import load_images
    from vlmtune.models.loss import accepts_logits_to_keep, forward_losses

    root, samples = _ordered_samples({**spec, "steps": 1})
    family, loaded, model = _lora_model(spec)
    batch = family.encode(loaded.processor, samples, [load_images(root, s) for s in samples], "train", MAX_LENGTH)
    labels = batch.inputs.pop("labels")
    keep = accepts_logits_to_keep(model)
    model.train()
    with FlopCounterMode(display=False) as fwd:
        forward_losses(model, family, batch.inputs, labels, keep, 0)
    with FlopCounterMode(display=False) as step:
        sums, counts = forward_losses(model, family, batch.inputs, labels, keep, 0)
        (sums.sum() / counts.sum()).backward()
    groups = {"vision tower": ".vision_tower", "projector": ".multi_modal_projector",
              "language model": ".language_model", "LM head": ".lm_head"}
    counts_by_module = {k: sum(v.values()) for k, v in fwd.get_flop_counts().items()}
    counted = {}
    for g, suffix in groups.items():
        keys = [k for k in counts_by_module if k.endswith(suffix)]
        counted[g] = counts_by_module[min(keys, key=len)] if keys else 0
    bsz = labels.shape[0]

    # analytic: 2 x (matmul weights x tokens) + attention scores/values (2 x 2 T^2 d per layer), fp32
    c = model.get_base_model().config
    vc, tc = c.vision_config, c.text_config
    npatch = (vc.image_size // vc.patch_size) ** 2
    tv, dv, dt = npatch + 1, vc.hidden_size, tc.hidden_size
    t_pad = batch.inputs["input_ids"].shape[1]
    t_real = batch.inputs["attention_mask"].sum().item() / bsz
    kv = tc.num_key_value_heads * (dt // tc.num_attention_heads)
    text_w = (2 * dt * dt + 2 * dt * kv + 3 * dt * tc.intermediate_size) * tc.num_hidden_layers
    r, inter = spec["lora_r"], tc.intermediate_size  # LoRA on q, k, v, o, gate, up, down: r x (in + out) each
    lora_w = tc.num_hidden_layers * r * (2 * dt + 2 * (dt + kv) + 2 * dt + 3 * (dt + inter))
    vis_w = (4 * dv * dv + 2 * dv * vc.intermediate_size) * vc.num_hidden_layers
    kept = (labels[:, 1:] != -100).sum().item() / bsz  # logits computed at these positions only
    analytic = {
        "vision tower": 2 * (npatch * 3 * vc.patch_size**2 * dv + tv * vis_w),
        "vision attention (sdpa)": 2 * 2 * tv * tv * dv * vc.num_hidden_layers,
        "projector": 2 * npatch * (dv * dt + dt * dt),
        "language model": 2 * t_pad * (text_w + lora_w),
        "language attention (sdpa)": 2 * 2 * t_pad * t_pad * dt * tc.num_hidden_layers,
        "LM head": 2 * kept * dt * tc.vocab_size,
    }
    return {"batch": bsz, "seq_padded": t_pad, "seq_real": t_real, "image_tokens": npatch, "vision_tokens": tv,
            "counted_fwd": {g: v / bsz for g, v in counted.items()}, "counted_fwd_total": fwd.get_total_flops() / bsz,
            "counted_step_total": step.get_total_flops() / bsz, "analytic_fwd": analytic,
            "params": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def _vlmtune_cfg(spec: dict):
    """RunCfg from a YAML written here plus CLI-style overrides (`--train.vision_cache auto`, ...)."""
    import yaml

    from vlmtune.config import RunCfg

    d = {
        "name": spec["name"], "out_dir": str(Path(spec["work"]) / "runs"), "report": False,
        "model": {"family": "llava", "path": "builtin", "builtin": spec.get("builtin", {})},
        "lora": {"enabled": True, "r": spec["lora_r"], "alpha": spec["lora_alpha"], "dropout": spec["lora_dropout"]},
        "data": {"path": spec["data"], "val_split": None, "max_length": MAX_LENGTH},
        "train": {"seed": spec["seed"], "max_steps": spec["steps"], "micro_batch_size": spec["batch"],
                  "global_batch_size": spec["batch"], "lr": spec["lr"], "weight_decay": 0.0, "warmup_steps": 0,
                  "schedule": "cosine", "grad_clip": 1.0, "log_every": 1, "eval_every": 0, "save_every": 0,
                  "trackers": [], "progress": False, "mixed_precision": "no"},
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


# ====================================================================== the parent (no torch)


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks (/proc/stat); (0, 0) if unreadable."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v[:8]) - idle, sum(v[:8])


def busy_cores(seconds: float) -> float:
    """Cores busy over the next `seconds` (this process is asleep meanwhile)."""
    b0, _ = cpu_jiffies()
    time.sleep(seconds)
    b1, _ = cpu_jiffies()
    return (b1 - b0) / os.sysconf("SC_CLK_TCK") / seconds


def wait_quiet(max_wait: float, threshold: float, note) -> float:
    """Wait (at most `max_wait` s) until other processes use less than `threshold` cores; returns the last load."""
    t = time.perf_counter()
    load = busy_cores(1.0)
    while load > threshold and time.perf_counter() - t < max_wait:
        note(f"  other processes use {load:.2f} cores; waiting for a quieter machine")
        time.sleep(5)
        load = busy_cores(1.0)
    return load


def child_ticks(pid: int) -> int:
    """CPU ticks (user + system, its waited-for children included) a running process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15])
    except (OSError, ValueError, IndexError):
        return -1


def other_cores(trace: list, lo: float, hi: float) -> float:
    """Cores used by other processes between perf_counter times lo and hi (the trace's samples inside them)."""
    inside = [x for x in trace if lo <= x[0] <= hi and x[2] >= 0 and x[1] > 0]
    if len(inside) < 2:
        inside = [x for x in trace if x[2] >= 0 and x[1] > 0]
    if len(inside) < 2:
        return float("nan")
    (t0, b0, c0), (t1, b1, c1) = inside[0], inside[-1]
    return max(0.0, ((b1 - b0) - (c1 - c0)) / os.sysconf("SC_CLK_TCK") / (t1 - t0))


def run_worker(name: str, spec: dict, work: Path, tag: str, warmup: int = 1) -> dict:
    """One fresh subprocess; returns its result plus wall time, peak RSS (os.wait4's ru_maxrss, KiB on Linux) and
    `other_cores`: CPU time other processes used during its timed window (machine busy time minus the child's), per
    second. perf_counter is CLOCK_MONOTONIC, shared by parent and child, so the worker's step times line up."""
    spec_path, result_path, log_path = (work / f"{tag}.{ext}" for ext in ("spec.json", "result.json", "log"))
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    trace = []  # (perf_counter, machine busy ticks, the child's CPU ticks), every 0.2 s
    with open(log_path, "w") as log:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", name, str(spec_path),
                                 str(result_path)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            trace.append((time.perf_counter(), cpu_jiffies()[0], child_ticks(proc.pid)))
            time.sleep(0.2)
        wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not result_path.is_file():
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise RuntimeError(f"worker {name} ({tag}) failed with exit code {proc.returncode}; log {log_path}:\n{tail}")
    out = json.loads(result_path.read_text())
    out["wall"] = wall
    out["rss_mib"] = usage.ru_maxrss / 1024
    out["cpu_s"] = usage.ru_utime + usage.ru_stime
    if "times" in out:  # the timed window: after the warmup steps to the last step
        window = (out["times"][min(len(out["times"]), warmup) - 1], out["times"][-1])
    else:
        window = out.get("window", (t, t + wall))
    out["other_cores"] = other_cores(trace, *window)
    said = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.startswith("vision cache:")]
    if said:
        out["vision_cache_said"] = said[-1]
    return out


def throughput(run: dict, warmup: int, batch: int, per_step: list | None = None, lo: int | None = None,
               hi: int | None = None) -> dict:
    """samples/s (and tokens/s) over steps (lo, hi] from the end-of-step timestamps; lo defaults to the warmup."""
    times = run["times"]
    lo = warmup if lo is None else lo
    hi = len(times) if hi is None else hi
    dt = times[hi - 1] - times[lo - 1]
    steps = [b - a for a, b in zip(times[lo - 1 : hi - 1], times[lo:hi], strict=True)]
    out = {"samples_s": batch * (hi - lo) / dt, "ms_step": 1000 * dt / (hi - lo),
           "samples_s_median_step": batch / statistics.median(steps)}
    if per_step:
        out["tokens_s"] = sum(p[0] for p in per_step[lo:hi]) / dt
        out["target_tokens_s"] = sum(p[2] for p in per_step[lo:hi]) / dt
    if run.get("data"):
        t_lo, t_hi = times[lo - 1], times[hi - 1]
        out["data_ms_step"] = 1000 * sum(d for end, d in run["data"] if t_lo < end <= t_hi) / (hi - lo)
    return out


def final_loss(run: dict, last: int = 10) -> float:
    return statistics.fmean(run["losses"][-last:])


def fmt(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def human_flops(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}FLOP"
    return f"{x:.3g} FLOP"


def parent_main(args) -> None:
    t_all = time.perf_counter()
    if args.quick:
        args.n, args.steps, args.repeats, args.warmup = min(args.n, 400), min(args.steps, 20), 1, min(args.warmup, 4)
        args.cache_repeats, args.profile_steps = 1, min(args.profile_steps, 10)
    work = Path(args.work or tempfile.mkdtemp(prefix="vlmtune-train-speed-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve() if args.data else work / f"fashion-n{args.n}-seed0"
    base = {"work": str(work), "data": str(data), "n": args.n, "seed": args.seed, "batch": args.batch,
            "steps": args.steps, "lr": args.lr, "lora_r": 8, "lora_alpha": 16, "lora_dropout": args.lora_dropout,
            "builtin": {}}

    def note(msg: str) -> None:
        print(f"[{time.perf_counter() - t_all:6.1f}s] {msg}", file=sys.stderr, flush=True)

    out = []
    say = out.append
    cmd = shlex.join([os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable,
                      os.path.relpath(__file__, REPO), *sys.argv[1:]])
    print(f"```\n$ {cmd}\n```\n", flush=True)

    discarded: list[str] = []
    disturbed: list[str] = []

    def timed_run(kind: str, spec: dict, tag: str) -> dict:
        """A run, repeated (at most --retries times) while other processes used more than --quiet-cores during
        its timed window; the least disturbed attempt is kept."""
        tries = []
        for attempt in range(args.retries + 1):
            wait_quiet(args.quiet_wait, args.quiet_cores, note)
            r = run_worker(kind, spec, work, tag, args.warmup)
            note(f"  {tag}: {r['wall']:.1f}s, other processes used {r['other_cores']:.2f} cores in its timed window")
            tries.append(r)
            if not r["other_cores"] > args.quiet_cores:
                break
            if attempt < args.retries:
                note(f"  {tag}: disturbed, running it again")
        kept = min(tries, key=lambda x: x["other_cores"])
        discarded.extend(f"{tag} ({x['other_cores']:.2f} cores)" for x in tries if x is not kept)
        if kept["other_cores"] > args.quiet_cores:
            disturbed.append(f"{tag} ({kept['other_cores']:.2f} cores)")
        return kept

    # ---- prep: data, vlmtune's order, tokens per step, TRL batch check
    note("prep: synthesize data, fix the order, check TRL's batches")
    prep0 = run_worker("prep", {**base, "order_steps": args.steps}, work, "prep")
    spe = -(-prep0["n_train"] // args.batch)  # steps per epoch
    cache_steps = args.cache_epochs * spe
    per_step = prep0["per_step"]
    note("peak: fp32 matmul")
    peak = timed_run("peak", base, "peak")
    note("flops: FlopCounterMode + analytic")
    fl = run_worker("flops", base, work, "flops")

    # ---- the three frameworks, interleaved
    runs: dict[str, list[dict]] = {k: [] for k in FRAMEWORKS}
    for rep in range(args.repeats):
        for kind in FRAMEWORKS:
            note(f"{kind} run {rep + 1}/{args.repeats}: {args.steps} steps")
            runs[kind].append(timed_run(kind, {**base, "name": f"{kind}-{rep}"}, f"{kind}-{rep}"))

    # ---- vision cache: auto vs off over N epochs
    cache: dict[str, list[dict]] = {"auto": [], "off": []}
    cache_note = None
    if args.cache_epochs > 0:
        for rep in range(args.cache_repeats):
            for mode in ("auto", "off"):
                note(f"vision cache {mode} run {rep + 1}/{args.cache_repeats}: {cache_steps} steps")
                try:  # the cache is exact only with the projector frozen too: both modes freeze it
                    r = timed_run("vlmtune", {**base, "steps": cache_steps, "name": f"cache-{mode}-{rep}",
                                              "overrides": ["--train.freeze_projector", "true",
                                                            "--train.vision_cache", mode]}, f"cache-{mode}-{rep}")
                except RuntimeError as e:  # the option exists but the run failed: say so, go on with the rest
                    r = {"unavailable": f"run failed: {str(e).splitlines()[0]}"}
                if "unavailable" in r:
                    cache_note = r["unavailable"].split("; known:")[0]
                    break
                cache[mode].append(r)
            if cache_note:
                break
        if cache_note:
            print(f"vision cache: not available ({cache_note.splitlines()[0]})", flush=True)
            note("vision cache: not available; continuing")

    # ---- where vlmtune's time goes
    note(f"phases: {args.profile_steps} steps")
    phases = timed_run("phases", {**base, "steps": args.profile_steps, "name": "phases"}, "phases")
    note(f"cProfile: {args.profile_steps} steps")
    prof = timed_run("cprofile", {**base, "steps": args.profile_steps, "name": "cprofile", "top": args.top},
                     "cprofile")

    # ================================================================ report
    say(f"Built-in LLaVA-architecture model, default BuiltinCfg (CLIP 4x128 on 64x64, patch 8 -> "
        f"{fl['image_tokens']} image tokens; Llama 2x128; {fl['params']:,} parameters, {fl['trainable']:,} "
        f"trainable with LoRA r=8 + projector); synthetic fashion, n={args.n} ({prep0['n_train']} train); "
        f"batch {args.batch}, {args.steps} steps, lr {args.lr:g} cosine, seed {args.seed}, LoRA dropout "
        f"{args.lora_dropout:g}, fp32, {peak['threads']} torch threads. Medians of {args.repeats} runs, each a "
        f"fresh subprocess, interleaved; throughput over steps {args.warmup}..{args.steps} (the first "
        f"{args.warmup} are warmup). Other processes may share these {os.cpu_count()} cores.\n")
    say(f"Batches: TRL's collator on the prompt/completion rows gives tensors identical to vlmtune's "
        f"`family.encode` (input_ids, attention_mask, labels, pixel_values, first 3 steps): "
        f"**{'yes' if prep0['trl_batches_identical'] else 'NO'}**. The HF Trainer's collator is `family.encode`.\n")
    tok_per_sample = sum(p[0] for p in per_step[: args.steps]) / (args.steps * args.batch)
    tgt_per_sample = sum(p[2] for p in per_step[: args.steps]) / (args.steps * args.batch)
    say(f"Tokens per sample: {tok_per_sample:.1f} (of them {prep0['image_tokens']} image tokens; padding excluded); "
        f"trained (target) tokens per sample: {tgt_per_sample:.2f} (answer + `</s>`).\n")

    say("## Throughput, memory, loss\n")
    say("| trainer | samples/s | tokens/s | ms/step | of it data (ms) | samples/s from the median step | "
        "start to first step (s) | process wall (s) | peak RSS (MiB) | final loss (mean of last 10 steps) | "
        "speed vs TRL | other processes (cores) |")
    say("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    med: dict[str, dict] = {}
    for kind in FRAMEWORKS:
        tps = [throughput(r, args.warmup, args.batch, per_step) for r in runs[kind]]
        med[kind] = {k: statistics.median(t[k] for t in tps) for k in tps[0]}
        med[kind]["wall"] = statistics.median(r["wall"] for r in runs[kind])
        med[kind]["first"] = statistics.median(r["times"][0] - r["t0"] for r in runs[kind])
        med[kind]["rss"] = statistics.median(r["rss_mib"] for r in runs[kind])
        med[kind]["loss"] = statistics.median(final_loss(r) for r in runs[kind])
        med[kind]["all_sps"] = [t["samples_s"] for t in tps]
        med[kind]["other"] = statistics.median(r["other_cores"] for r in runs[kind])
    for kind in FRAMEWORKS:
        m = med[kind]
        say(f"| {LABELS[kind]} | {fmt(m['samples_s'])} | {fmt(m['tokens_s'], 0)} | {fmt(m['ms_step'], 2)} | "
            f"{fmt(m['data_ms_step'], 2)} | {fmt(m['samples_s_median_step'])} | {fmt(m['first'])} | "
            f"{fmt(m['wall'])} | {fmt(m['rss'], 0)} | "
            f"{m['loss']:.4f} | {m['samples_s'] / med['trl']['samples_s']:.2f}x | {m['other']:.2f} |")
    say("")
    every = [f"{k}: " + ", ".join(f"{fmt(x)} ({r['other_cores']:.2f})"
                                   for x, r in zip(med[k]["all_sps"], runs[k], strict=True)) for k in FRAMEWORKS]
    say("samples/s of every run (other processes' cores): " + "; ".join(every) + ".\n")
    paired = [v / t for v, t in zip(med["vlmtune"]["all_sps"], med["trl"]["all_sps"], strict=True)]
    by_median = med["vlmtune"]["samples_s_median_step"] / med["trl"]["samples_s_median_step"]
    say("vlmtune / TRL within each repeat (runs interleaved): " + ", ".join(f"{x:.2f}x" for x in paired) +
        f"; from the median step times: {by_median:.2f}x.\n")
    say("'other processes': CPU time used by everything else on the machine during the run's timed window (from "
        "/proc/stat minus the run's own /proc/<pid>/stat), per second; each run starts once that is below "
        f"{args.quiet_cores:g} cores (waiting at most {args.quiet_wait:g} s), and a run disturbed by more is run "
        f"again (at most {args.retries} times; the least disturbed attempt counts). Runs discarded: "
        f"{', '.join(discarded) if discarded else 'none'}; kept although disturbed (no quiet attempt): "
        f"{', '.join(disturbed) if disturbed else 'none'}.\n")
    say("samples/s is steps x batch over the window's wall time; 'from the median step' is batch / the median "
        "step time of the run (robust to bursts from other processes), median over the runs.\n")
    say("'of it data': time per step spent producing the batch: vlmtune `step_batches` (image reads + "
        "`family.encode`); TRL `datasets` row fetch (PNG decode) + its collator (chat template, processor); HF "
        "Trainer its collator (image reads + `family.encode`).\n")
    say("Process wall covers the whole subprocess: imports, tokenizer training and model build, data loading, the "
        "steps, and for vlmtune saving the base model and the final checkpoint (not inside the timed window).\n")

    # ---- loss curves
    say("### Loss curves (same init, same data order, no dropout)\n")
    marks = sorted({1, 2, 5, 10, 25, 50, args.steps} & set(range(1, args.steps + 1)))
    say("| step | " + " | ".join(LABELS[k] for k in FRAMEWORKS) + " |")
    say("|---:|" + "---:|" * len(FRAMEWORKS))
    for s in marks:
        say(f"| {s} | " + " | ".join(f"{runs[k][0]['losses'][s - 1]:.5f}" for k in FRAMEWORKS) + " |")
    say("")
    ref = runs["vlmtune"][0]["losses"]
    for k in ("trl", "hf"):
        diffs = [abs(a - b) for a, b in zip(runs[k][0]["losses"], ref, strict=True)]
        last = abs(final_loss(runs[k][0]) - final_loss(runs["vlmtune"][0]))
        say(f"- {LABELS[k]} vs vlmtune (run 1): max |loss difference| over {len(diffs)} steps {max(diffs):.2e} "
            f"(step {diffs.index(max(diffs)) + 1}), at step 1 {diffs[0]:.2e}, difference of the last-10 means "
            f"{last:.2e}.")
    rep_spread = {k: max(final_loss(r) for r in runs[k]) - min(final_loss(r) for r in runs[k]) for k in FRAMEWORKS}
    say("- Spread of the last-10 mean between repeats of the same trainer: " +
        ", ".join(f"{k} {v:.1e}" for k, v in rep_spread.items()) + ".")
    say(f"- Mean step loss over the window, for scale: {statistics.fmean(ref):.4f} (steps 1-{len(ref)}).\n")

    # ---- FLOPs and MFU
    say("## FLOPs and model-FLOPs utilisation (vlmtune)\n")
    cf, an = fl["counted_fwd"], fl["analytic_fwd"]
    an_total = sum(an.values())
    say(f"Forward FLOPs per sample, step-0 batch (padded to {fl['seq_padded']} positions, {fl['seq_real']:.1f} real; "
        f"logits only at the loss positions, as vlmtune computes them). Counted = FlopCounterMode (matmuls and "
        f"convolutions; it does not count CPU SDPA attention); analytic = 2 x weights-in-matmuls x tokens + "
        f"4 x T^2 x d per attention layer.\n")
    say("| part | counted | analytic | share of analytic |")
    say("|---|---:|---:|---:|")
    rows = [("vision tower (patch embed + 4 layers' linears)", cf["vision tower"], an["vision tower"]),
            ("vision attention scores/values (SDPA)", None, an["vision attention (sdpa)"]),
            ("projector", cf["projector"], an["projector"]),
            ("language model linears (+ LoRA)", cf["language model"], an["language model"]),
            ("language attention scores/values (SDPA)", None, an["language attention (sdpa)"]),
            ("LM head (loss positions only)", cf["LM head"], an["LM head"])]
    for name, c, a in rows:
        say(f"| {name} | {human_flops(c) if c is not None else '-'} | {human_flops(a)} | {100 * a / an_total:.1f}% |")
    say(f"| **total** | {human_flops(fl['counted_fwd_total'])} | {human_flops(an_total)} | 100% |")
    vis = an["vision tower"] + an["vision attention (sdpa)"]
    say(f"\nVision tower share of forward FLOPs: {100 * vis / an_total:.1f}% analytic, "
        f"{100 * cf['vision tower'] / fl['counted_fwd_total']:.1f}% counted (>= 1/3 required).\n")
    pk = max(peak["2048"], peak["4096"])
    sps = med["vlmtune"]["samples_s"]
    nominal = 3 * an_total * sps
    # + SDPA, which the counter misses: language attention forward + backward (~3x), vision forward only (frozen)
    executed = (fl["counted_step_total"] + 3 * an["language attention (sdpa)"] + an["vision attention (sdpa)"]) * sps
    say(f"Measured fp32 matmul peak ({peak['threads']} threads): 2048x2048 {peak['2048'] / 1e9:.1f} GFLOP/s, "
        f"4096x4096 {peak['4096'] / 1e9:.1f} GFLOP/s (best of 10 / 3); peak used: {pk / 1e9:.1f} GFLOP/s.\n")
    say("| measure | FLOPs per sample | at vlmtune's " + fmt(sps) + " samples/s | MFU |")
    say("|---|---:|---:|---:|")
    say(f"| model FLOPs: 3 x forward (analytic) | {human_flops(3 * an_total)} | {nominal / 1e9:.1f} GFLOP/s | "
        f"**{100 * nominal / pk:.1f}%** |")
    say(f"| executed: fwd+bwd counted on one step (+ SDPA analytic) | "
        f"{human_flops(executed / sps)} | {executed / 1e9:.1f} GFLOP/s | {100 * executed / pk:.1f}% |")
    say("\nThe executed count is lower than 3 x forward: with LoRA on the language model the vision tower is "
        "frozen and gets no backward pass at all, and the frozen base weights need input gradients only.\n")

    # ---- vision cache
    say(f"## vlmtune `train.vision_cache` auto vs off ({args.cache_epochs} epochs = {cache_steps} steps)\n")
    if args.cache_epochs <= 0:
        say("skipped (--cache-epochs 0)\n")
    elif cache_note:
        say(f"vision cache: not available. The config rejected `--train.vision_cache`: `{cache_note.splitlines()[0]}`"
            "\n")
    else:
        say("Both modes: LoRA as above but with `--train.freeze_projector true` (the cache is exact only when the "
            "vision tower and the projector both get no gradient; with the projector trained, auto stays off).\n")
        say("| vision_cache | loop said | samples/s (all) | epoch 1 | epochs 2+ | process wall (s) | peak RSS (MiB) "
            "| final loss | other processes (cores) |")
        say("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for mode in ("auto", "off"):
            rs = cache[mode]
            allw = statistics.median(throughput(r, args.warmup, args.batch)["samples_s"] for r in rs)
            e1 = statistics.median(throughput(r, args.warmup, args.batch, hi=spe)["samples_s"] for r in rs)
            e2 = statistics.median(throughput(r, args.warmup, args.batch, lo=spe)["samples_s"] for r in rs) \
                if cache_steps > spe else float("nan")
            said = rs[0].get("vision_cache_said", "?").removeprefix("vision cache: ")
            said = said.split(", ")[0] if said.startswith("on") else said
            wall, rss = (statistics.median(r[k] for r in rs) for k in ("wall", "rss_mib"))
            say(f"| {mode} | {said} | {fmt(allw)} | {fmt(e1)} | {fmt(e2)} | {fmt(wall)} | {fmt(rss, 0)} | "
                f"{statistics.median(final_loss(r) for r in rs):.4f} | "
                f"{statistics.median(r['other_cores'] for r in rs):.2f} |")
        say(f"\nMedians of {args.cache_repeats} runs each.\n")

    # ---- where vlmtune's time goes
    say(f"## Where vlmtune's step time goes ({phases['steps']} steps, one run)\n")
    say("| phase | ms/step | share |")
    say("|---|---:|---:|")
    covered = 0.0
    for name, sec in sorted(phases["phases"].items(), key=lambda kv: -kv[1]):
        covered += sec
        say(f"| {name} | {1000 * sec / phases['steps']:.2f} | {100 * sec / phases['total']:.1f}% |")
    rest = phases["total"] - covered
    say(f"| rest of the loop (stats, .item(), scheduler) | {1000 * rest / phases['steps']:.2f} | "
        f"{100 * rest / phases['total']:.1f}% |")
    say(f"| **total** | {1000 * phases['total'] / phases['steps']:.2f} | 100% |")
    say(f"\ncProfile of `fit` over {prof['steps']} steps ({prof['total']:.2f} s under the profiler, which inflates "
        "Python-heavy code): top functions by own time\n")
    say("| function | calls | own s | cumulative s |")
    say("|---|---:|---:|---:|")
    for r in prof["by_tottime"]:
        say(f"| `{r['fn']}` | {r['calls']} | {r['tottime']:.3f} | {r['cumtime']:.3f} |")
    say("\nand by cumulative time (call wrappers of torch.nn.Module / transformers / peft left out):\n")
    say("| function | calls | cumulative s | per step ms |")
    say("|---|---:|---:|---:|")
    shown = 0
    for r in prof["by_cumtime"]:
        if r["fn"].startswith("<") or "cProfile" in r["fn"]:
            continue
        say(f"| `{r['fn']}` | {r['calls']} | {r['cumtime']:.3f} | {1000 * r['cumtime'] / prof['steps']:.2f} |")
        shown += 1
        if shown >= args.top + 5:
            break
    say("")
    total_s = time.perf_counter() - t_all
    say(f"Benchmark wall time: {total_s / 60:.1f} min. Work directory: {work}")
    print("\n".join(out), flush=True)
    if not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker_main(*sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the throughput window")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--n", type=int, default=3000, help="synthetic fashion samples (80%% train)")
    p.add_argument("--data", help="an existing synthetic dataset directory (default: synthesized in --work)")
    p.add_argument("--cache-epochs", type=int, default=3, help="epochs of the vision_cache auto/off runs (0: skip)")
    p.add_argument("--cache-repeats", type=int, default=3)
    p.add_argument("--profile-steps", type=int, default=30)
    p.add_argument("--top", type=int, default=15, help="rows of the cProfile tables")
    p.add_argument("--quiet-cores", type=float, default=0.3,
                   help="start a timed run only when other processes use fewer cores than this")
    p.add_argument("--quiet-wait", type=float, default=120, help="longest wait for that, seconds, per run")
    p.add_argument("--retries", type=int, default=2,
                   help="repeat a run up to this many times when other processes used more than --quiet-cores "
                        "during its timed window")
    p.add_argument("--work", help="work directory (default: a temporary one, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    p.add_argument("--quick", action="store_true", help="smoke test: 400 samples, 20 steps, 1 repeat")
    parent_main(p.parse_args())


if __name__ == "__main__":
    main()
