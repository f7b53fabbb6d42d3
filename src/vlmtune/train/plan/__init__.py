"""`vlmtune plan`: what a training run will cost, before any weight is downloaded (config and processor files only).

    vlmtune plan --config configs/qwen2_5_vl/3b_lora_vqa.yaml --gpu-memory 24GB [--data DIR] [--gpu l40s] [--json]

`make_plan(cfg, ...)` -> `Plan`: parameters per tower and what trains (`params.py`, exact, on the meta device), the
data's sequence lengths through the family's own `encode` (`lengths.py`), the itemised peak memory per GPU
(`memory.py`), FLOPs and time (`speed.py`), and a verdict with the cheapest changes that make the run fit. `vlmtune
train` prints the plan at its start and saves it as plan.json in the run directory (`plan_for_train`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmtune.config import QuantCfg, RunCfg, check_model_path
from vlmtune.data.resize import limit_pixels
from vlmtune.io import atomic_write_text
from vlmtune.models import apply_max_pixels, get_family
from vlmtune.models.builtin import build_builtin
from vlmtune.train.checkpoint import rng_state, set_rng_state
from vlmtune.train.plan import memory, speed
from vlmtune.train.plan.lengths import MAX_SAMPLES, Lengths, measure_lengths, padding
from vlmtune.train.plan.params import build_meta_model, count_params, dims_of, quantised_params

RUNTIME_RESERVE = 1.0 * memory.GIB
"""Added to the predicted peak before comparing it with a GPU's memory: the CUDA context, cuBLAS workspaces and the
caching allocator's fragmentation (typically 0.5-1.5 GiB). Not part of the CPU-validated total."""
SHARDING_MODES = ("none", "zero2", "zero3", "fsdp")


def parse_memory(text: str) -> float:
    """'24GB' / '24GiB' / '80 GB' / '16000MB' -> bytes (GB = 1e9 as GPU makers count; GiB = 2^30)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(GB|GiB|MB|MiB|TB)?\s*", text or "", re.IGNORECASE)
    if not m:
        raise ValueError(f"--gpu-memory {text!r}: expected a size such as 24GB, 80GiB or 16000MB")
    unit = (m.group(2) or "GB").lower()
    return float(m.group(1)) * {"gb": 1e9, "gib": 2**30, "mb": 1e6, "mib": 2**20, "tb": 1e12}[unit]


@dataclass
class Plan:
    """The whole plan; `to_dict()` is what --json prints and what plan.json holds. Bytes, FLOPs and seconds."""

    recipe: dict
    params: dict
    lengths: dict
    batching: dict
    memory: dict
    speed: dict
    verdict: dict
    assumptions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def text(self) -> str:
        return render(self)


def _processor(cfg: RunCfg, family):
    """The processor training will use: the family's, with the recipe's `model.max_pixels`."""
    if cfg.model.path == "builtin":
        processor = build_builtin(cfg.model.builtin).processor
    else:
        try:
            processor = family.load_processor(cfg.model.path, revision=cfg.model.revision,
                                              trust_remote_code=cfg.model.trust_remote_code)
        except OSError as e:
            raise ValueError(f"cannot load the processor of {cfg.model.path!r}: {str(e).splitlines()[0]}") from None
    apply_max_pixels(processor, cfg.model)
    return processor


def _shape(cfg: RunCfg, lengths: Lengths, rows: int, pad: dict) -> memory.Shape:
    """The worst micro-batch: `rows` samples as long as the longest measured one (packed: one row of them)."""
    seq = pad["longest_row"] if cfg.train.packing else max(lengths.tokens)
    return memory.Shape(rows=1 if cfg.train.packing else rows, seq=seq,
                        targets=rows * max(lengths.targets), patches=rows * max(lengths.patches),
                        images=rows, image_tokens=rows * max(lengths.image_tokens))


@dataclass
class _Parts:
    cfg: RunCfg
    family: Any
    dims: Any
    model: Any
    """The meta model after make_trainable."""
    lengths: Lengths
    sharding: memory.Sharding
    remeasure: Callable[[int], Lengths] | None = None
    """The lengths again under another `model.max_pixels` (None: the family's images have one size)."""
    _measured: dict = field(default_factory=dict)

    def lengths_for(self, cfg: RunCfg) -> Lengths:
        mp = cfg.model.max_pixels
        if mp == self.cfg.model.max_pixels or self.remeasure is None:
            return self.lengths
        if mp not in self._measured:
            self._measured[mp] = self.remeasure(mp)
        return self._measured[mp]


def rows_per_sample(cfg: RunCfg) -> int:
    """Rows one training sample puts in a forward: 2 under train.method dpo (a pair's chosen and rejected answers),
    grpo_generations under grpo (its sampled completions), else 1 (data.answer_targets weighted's extra rows are not
    counted)."""
    return 2 if cfg.train.method == "dpo" else cfg.train.grpo_generations if cfg.train.method == "grpo" else 1


def _memory(p: _Parts, cfg: RunCfg, sharding: memory.Sharding) -> dict:
    micro = cfg.train.micro_batch_size * rows_per_sample(cfg)
    lengths = p.lengths_for(cfg)
    pad = padding(lengths.tokens, micro, 1, cfg.train.group_by_length, cfg.train.packing)
    q = cfg.model.quantization
    if q is not None or p.cfg.model.quantization is not None:
        quantised = quantised_params(p.model, p.family, q.skip_modules if q is not None else None)
    else:
        quantised = 0
    state = memory.state_bytes(p.model, q, quantised)
    targets = tuple(cfg.lora.targets or p.family.lora_targets) if cfg.lora.enabled else ()
    return memory.predict(cfg, p.dims, state, _shape(cfg, lengths, micro, pad), sharding, targets)


def _micro(cfg: RunCfg, micro: int) -> RunCfg:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, micro_batch_size=micro))


def _remeasure(cfg: RunCfg, family, processor, patch_size: int, data, max_samples: int
               ) -> Callable[[int], Lengths] | None:
    """`measure_lengths` under another pixel limit (a copy of the processor with it), or None for a family whose
    processor gives every image one size."""
    try:
        limit_pixels(copy.deepcopy(processor.image_processor), 1 << 40, family.name)
    except (AttributeError, ValueError):
        return None

    def measure(max_pixels: int) -> Lengths:
        limited = copy.deepcopy(processor)
        limit_pixels(limited.image_processor, max_pixels, family.name)
        return measure_lengths(cfg, family, limited, patch_size, data, max_samples, cfg.train.seed)
    return measure


def _with_pixels(cfg: RunCfg, max_pixels: int) -> RunCfg:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, max_pixels=max_pixels))


def _alternatives(p: _Parts, budget: float, gpus: int) -> list[dict]:
    """The changes that make the run fit, cheapest first (a smaller micro-batch with more accumulation costs least,
    then gradient checkpointing (~30% more compute), ZeRO-3 (communication), a 4-bit base (QLoRA: slower, a little
    less accurate), fewer image tokens (`model.max_pixels`: the model sees less of each image)), each alone with its
    predicted peak (the memory model re-run; the lengths measured again under a pixel limit), then, when none fits
    alone, the combination of all of them in that order up to the first that fits."""
    cfg, t = p.cfg, p.cfg.train
    steps: list[tuple[str, Any]] = []
    if t.micro_batch_size > 1:  # the largest micro-batch (halving) that fits, else 1
        sizes = sorted({m for m in (t.micro_batch_size // 2, t.micro_batch_size // 4, t.micro_batch_size // 8, 1)
                        if m >= 1 and t.global_batch_size % m == 0}, reverse=True)
        micro = next((m for m in sizes if _memory(p, _micro(cfg, m), p.sharding)["total"] + RUNTIME_RESERVE
                      <= budget), 1)
        steps.append((f"--train.micro_batch_size {micro} (same global batch {t.global_batch_size}, more "
                      "accumulation)", lambda c, s, m=micro: (_micro(c, m), s)))
    if not t.gradient_checkpointing:
        steps.append(("--train.gradient_checkpointing true (~30% more compute)",
                      lambda c, s: (dataclasses.replace(c, train=dataclasses.replace(c.train,
                                                                                     gradient_checkpointing=True)), s)))
    if gpus > 1 and p.sharding.mode not in ("zero3", "fsdp"):
        steps.append((f"ZeRO-3 over {gpus} GPUs (accelerate launch --config_file configs/accelerate/zero3.yaml)",
                      lambda c, s: (c, memory.Sharding("zero3", gpus))))
    if cfg.lora.enabled and cfg.model.quantization is None:
        steps.append(("QLoRA: --model.quantization.bits 4 (a 4-bit NF4 base)",
                      lambda c, s: (dataclasses.replace(c, model=dataclasses.replace(c.model, quantization=QuantCfg())),
                                    s)))
    if p.remeasure is not None and p.lengths.largest_image > 0:  # the largest limit (halving) that fits
        limits = [p.lengths.largest_image // k for k in (2, 4, 8)]
        limit = next((mp for mp in limits if _memory(p, _with_pixels(cfg, mp), p.sharding)["total"]
                      + RUNTIME_RESERVE <= budget), limits[-1])
        before = p.lengths.stats(p.lengths.image_tokens)["p50"]
        after = p.lengths_for(_with_pixels(cfg, limit)).stats(p.lengths_for(_with_pixels(cfg, limit)).image_tokens)
        steps.append((f"--model.max_pixels {limit} (image tokens per sample p50 {before} -> {after['p50']}: the "
                      "model sees less of each image)", lambda c, s, m=limit: (_with_pixels(c, m), s)))
    out = []
    for what, change in steps:
        alt, sharding = change(cfg, p.sharding)
        peak = _memory(p, alt, sharding)["total"]
        out.append({"change": what, "peak_bytes": peak, "fits": peak + RUNTIME_RESERVE <= budget})
    if out and not any(o["fits"] for o in out):
        alt, sharding, names = cfg, p.sharding, []
        for what, change in steps:
            alt, sharding = change(alt, sharding)
            names.append(what.split(" (")[0])
            peak = _memory(p, alt, sharding)["total"]
            if peak + RUNTIME_RESERVE <= budget or len(names) == len(steps):
                break
        if len(names) > 1:
            out.append({"change": "together: " + " + ".join(names), "peak_bytes": peak,
                        "fits": peak + RUNTIME_RESERVE <= budget})
    return out


def make_plan(cfg: RunCfg, data: str | Path | list | None = None, gpus: int = 1,
              gpu_memory: str | float | None = None, gpu: str | None = None, sharding: str = "none",
              max_samples: int = MAX_SAMPLES, mfu: float = speed.MFU) -> Plan:
    """The plan of a recipe: see the module docstring. `data`: a dataset directory, or the samples already read as
    (image root, sample) pairs (`vlmtune train`'s); `gpu_memory` as text ('24GB') or bytes; `gpu` a name of
    `speed.GPU_PEAK`; `sharding` one of SHARDING_MODES over `gpus`."""
    if gpus < 1:
        raise ValueError(f"--gpus must be >= 1, got {gpus}")
    if sharding not in SHARDING_MODES:
        raise ValueError(f"sharding {sharding!r}: one of {SHARDING_MODES}")
    spec = speed.gpu_spec(gpu) if gpu else None
    budget = parse_memory(gpu_memory) if isinstance(gpu_memory, str) else gpu_memory
    if budget is None and spec is not None:
        budget = spec[2]
    if data is not None and not isinstance(data, list) and not Path(data).is_dir():
        raise ValueError(f"--data {str(data)!r}: no such dataset directory")
    assumptions = []
    if data is None and cfg.data.path and Path(cfg.data.path).is_dir():
        data = cfg.data.path
    elif data is None:
        assumptions.append(f"data.path {cfg.data.path!r} is not here: the lengths are an assumed sample's")
    family = get_family(cfg.model.family)
    model, config = build_meta_model(cfg)
    dims = dims_of(model, family, config)
    counts = count_params(cfg, family, model)
    trained = counts.pop("model")
    processor = _processor(cfg, family)
    lengths = measure_lengths(cfg, family, processor, dims.patch_size, data, max_samples, cfg.train.seed)
    world = gpus
    accum = cfg.train.grad_accum_steps(world) if cfg.train.global_batch_size % (cfg.train.micro_batch_size * world) \
        == 0 else 1
    rows = rows_per_sample(cfg)
    pad = padding(lengths.tokens, cfg.train.micro_batch_size * rows, accum, cfg.train.group_by_length,
                  cfg.train.packing, cfg.train.seed)
    parts = _Parts(cfg, family, dims, trained, lengths, memory.Sharding(sharding, gpus),
                   _remeasure(cfg, family, processor, dims.patch_size, data, max_samples))
    mem = _memory(parts, cfg, parts.sharding)
    mem["runtime_reserve"] = RUNTIME_RESERVE
    n = len(lengths.tokens)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    gb = cfg.train.global_batch_size * rows  # rows per step (the lengths are rows': a pair's two answers)
    lang_mode = ("trained" if not cfg.lora.enabled and not cfg.train.freeze_language
                 else "passes" if cfg.lora.enabled else "frozen")
    vision_trained = mem["vision_trained"]
    positions = gb * mean(lengths.tokens) / max(1e-9, 1 - pad["padding_fraction"])  # padding computes too
    flops = speed.step_flops(counts, dims, n_tokens=int(positions),
                             n_patches=int(gb * mean(lengths.patches)), n_targets=int(gb * mean(lengths.targets)),
                             row_len=int(mean(lengths.tokens)), lang_mode=lang_mode,
                             adapters=counts["trainable"]["groups"].get("language/lora", 0),
                             vision_mode="trained" if vision_trained else "frozen")
    steps_per_epoch = -(-lengths.n_split // cfg.train.global_batch_size) if lengths.n_split else None
    sp = {"flops_per_step": flops, "mfu": mfu, "steps_per_epoch": steps_per_epoch,
          "flops_per_epoch": flops["total"] * steps_per_epoch if steps_per_epoch else None,
          "gpu": spec[0] if spec else None, "gpu_peak_flops": spec[1] if spec else None, "gpus": gpus}
    if spec:
        step_s = flops["total"] / (spec[1] * mfu * gpus)
        sp["seconds_per_step"] = step_s
        sp["seconds_per_epoch"] = step_s * steps_per_epoch if steps_per_epoch else None
        sp["gpu_hours_per_epoch"] = step_s * steps_per_epoch * gpus / 3600 if steps_per_epoch else None
        sp["seconds_max_steps"] = step_s * cfg.train.max_steps
        sp["gpu_hours_max_steps"] = step_s * cfg.train.max_steps * gpus / 3600
    verdict: dict = {"budget_bytes": budget, "fits": None, "alternatives": []}
    if budget is not None:
        verdict["fits"] = mem["total"] + RUNTIME_RESERVE <= budget
        if not verdict["fits"]:
            verdict["alternatives"] = _alternatives(parts, budget, gpus)
    vc = None
    if family.vision_cache and not vision_trained and cfg.train.vision_cache == "auto" and not cfg.train.hflip:
        n_images = lengths.n_split or n
        vc = memory.vision_cache_bytes(n_images, mean(lengths.image_tokens), dims,
                                       memory.DTYPE_BYTES[cfg.model.dtype])
    mem["vision_cache"] = {"disk_bytes": vc, "ram_bytes": min(vc, 2 << 30) if vc is not None else None,
                           "note": "every training sample's image features: its image tokens x hidden size in "
                                   f"{cfg.model.dtype}, in RAM up to 2 GiB" if vc is not None
                           else "off for this recipe (the vision side trains, hflip, or the family has none)"}
    recipe = {"name": cfg.name, "family": family.name, "model": cfg.model.path, "dtype": cfg.model.dtype,
              "lora": cfg.lora.enabled, "quantization": dataclasses.asdict(cfg.model.quantization)
              if cfg.model.quantization else None, "micro_batch_size": cfg.train.micro_batch_size,
              "global_batch_size": cfg.train.global_batch_size,
              "gradient_checkpointing": cfg.train.gradient_checkpointing,
              "packing": cfg.train.packing, "sharding": sharding, "gpus": gpus, "max_pixels": cfg.model.max_pixels}
    params = {**counts, "dims": dataclasses.asdict(dims)}
    batching = {**pad, "micro_batch_size": cfg.train.micro_batch_size, "accumulation": accum}
    assumptions += [
        "trainable parameters, their gradients and AdamW's two states in float32 (train/trainable.py upcasts them)",
        f"peak taken at the worst micro-batch: {cfg.train.micro_batch_size} sample(s) as long as the longest measured"
        + {"dpo": " (DPO: 2 rows per pair, its chosen and rejected answers; the reference's log-probabilities are "
                  "computed once before training, no second model in memory)",
           "grpo": f" (GRPO: {rows} rows per prompt, its sampled completions, measured as long as its gold answer; "
                   "the rollouts' generation is not counted)"}.get(cfg.train.method, ""),
        f"runtime reserve {RUNTIME_RESERVE / memory.GIB:.1f} GiB added on a GPU (CUDA context, allocator)",
        f"MFU {mfu:.2f} for the time estimates",
    ]
    return Plan(recipe, params, lengths.summary(), batching, mem, sp, verdict, assumptions)


def _gb(n: float | None) -> str:
    return "-" if n is None else f"{n / memory.GIB:.2f} GiB"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _count(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def render(plan: Plan) -> str:
    """The plan as a readable table (stdout of `vlmtune plan`, stderr at the start of `vlmtune train`)."""
    r, p, m, s, v = plan.recipe, plan.params, plan.memory, plan.speed, plan.verdict
    t = p["towers"]
    lines = [f"plan: {r['name']} ({r['family']}, {r['model']}, {r['dtype']}"
             f"{', LoRA' if r['lora'] else ', full'}{', 4/8-bit base' if r['quantization'] else ''})",
             f"  parameters: {_count(p['total'])} = vision {_count(t['vision'])} + projector "
             f"{_count(t['projector'])} + language {_count(t['language'])}"
             + (f" + other {_count(t['other'])}" if t.get("other") else ""),
             f"  trainable: {_count(p['trainable']['trainable'])} ("
             + ", ".join(f"{k} {_count(n)}" for k, n in p["trainable"]["groups"].items()) + ")"]
    L = plan.lengths
    lines += [f"  lengths ({L['source']}; largest image {L['largest_image_pixels']} pixels after resize"
              + (f", model.max_pixels {r['max_pixels']}" if r.get("max_pixels") else "") + "):",
              *(f"    {k:<13} p50 {L[k]['p50']:>6}  p95 {L[k]['p95']:>6}  max {L[k]['max']:>6}"
                for k in ("tokens", "image_tokens", "targets", "patches")),
              f"  batching: {plan.batching['mode']}, micro-batch {plan.batching['micro_batch_size']}: "
              f"{100 * plan.batching['padding_fraction']:.1f}% of positions are padding"]
    mb = m["micro_batch"]
    lines += [f"  peak memory per GPU (micro-batch {mb['rows']} x {mb['seq']} positions, sharding {m['sharding']}):"]
    lines += [f"    {k:<12} {_gb(b):>12}" for k, b in m["items"].items()]
    lines += [f"    {'total':<12} {_gb(m['total']):>12}  (+ {_gb(m['runtime_reserve'])} runtime reserve on a GPU)",
              f"    activations without / with gradient checkpointing: {_gb(m['activations_without_checkpointing'])}"
              f" / {_gb(m['activations_with_checkpointing'])} ({'on' if m['gradient_checkpointing'] else 'off'})",
              f"    logits: answer-only {_gb(m['answer_logits'])} ({m['logit_positions']['answer_only']} positions)"
              f" vs full {_gb(m['full_logits'])} ({m['logit_positions']['full']} positions)",
              f"    vision cache: disk {_gb(m['vision_cache']['disk_bytes'])}, RAM "
              f"{_gb(m['vision_cache']['ram_bytes'])} ({m['vision_cache']['note']})"]
    f = s["flops_per_step"]
    lines += [f"  FLOPs per step: {f['total']:.3g} (language {f['language']:.3g}, attention {f['attention']:.3g}, "
              f"LM head {f['lm_head']:.3g}, vision {f['vision']:.3g})"
              + (f"; per epoch {s['flops_per_epoch']:.3g} ({s['steps_per_epoch']} steps)"
                 if s["flops_per_epoch"] else "")]
    if s["gpu"]:
        epoch = (f"epoch {_duration(s['seconds_per_epoch'])} ({s['gpu_hours_per_epoch']:.2f} GPU-hours), "
                 if s.get("seconds_per_epoch") else "")
        lines.append(f"  time on {s['gpus']} x {s['gpu']} at MFU {s['mfu']:.2f}: {s['seconds_per_step']:.2f} s/step, "
                     f"{epoch}max_steps {_duration(s['seconds_max_steps'])} ({s['gpu_hours_max_steps']:.2f} "
                     f"GPU-hours)")
    if v["fits"] is None:
        lines.append("  verdict: no --gpu-memory or --gpu given: memory reported only")
    else:
        need = m["total"] + m["runtime_reserve"]
        lines.append(f"  verdict: {'FITS' if v['fits'] else 'DOES NOT FIT'} in {_gb(v['budget_bytes'])} "
                     f"(needs {_gb(need)})")
        for a in v["alternatives"]:
            lines.append(f"    {'fits' if a['fits'] else 'still too big'}: {a['change']} -> {_gb(a['peak_bytes'])}")
    lines += [f"  assumes: {a}" for a in plan.assumptions]
    return "\n".join(lines)


def plan_for_train(cfg: RunCfg, run_dir: Path, samples: list[tuple[Path, Any]] | None = None) -> Plan | None:
    """`vlmtune train`'s plan (its main process calls it): printed (stderr) and saved as run_dir/plan.json, over at
    most 200 of `samples` (the run's training samples as (image root, sample) pairs, every source of its mixture,
    as setup read them; None: the recipe's data.path). Never fails the run: when the plan cannot be made (no
    config files offline, ...) it says why in one line. Nor changes it: every random generator is as it was before
    (building the LoRA layers of the meta model draws from torch's), so a run trains the same weights with or
    without its plan."""
    try:
        check_model_path(cfg.model.path)
    except FileNotFoundError:
        return None  # the model's loading, right after, names the missing directory
    generators = rng_state()
    try:
        plan = make_plan(cfg, data=samples or None, max_samples=200)
    except Exception as e:  # noqa: BLE001 - the plan is advice: training goes on without it
        print(f"plan: not computed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})", file=sys.stderr)
        return None
    finally:
        set_rng_state(generators)
    print(plan.text(), file=sys.stderr)
    atomic_write_text(run_dir / "plan.json", json.dumps(plan.to_dict(), indent=1) + "\n")
    return plan
