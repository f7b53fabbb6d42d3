"""The training loop: `setup()` builds everything, `fit()` runs it, top to bottom, on Accelerate.

    vlmtune train --config configs/builtin/tiny_fashion_vqa.yaml --train.max_steps 200

One process or many (`accelerate launch` / `torchrun`: DDP, FSDP, DeepSpeed come from Accelerate). Each optimizer
step consumes `global_batch_size` samples from the weighted sources of `data.sources` (or the train split), in an
order fixed by (seed, step) alone, so a resumed run sees exactly the samples an uninterrupted one would. The loss
is averaged over answer tokens of the whole global batch (not mean-of-micro-batch-means), so gradient
accumulation does not change the result; it is also logged per source. Samples with several human answers are
trained on one of them, a drawn one, or all of them weighted (`data.answer_targets`, train/targets.py).

Before step 0 the base model is evaluated on the val split and on every probe (`probes:`); each later eval logs the
probes' deltas from the base, and the forgetting gate (`forgetting.max_drop`) keeps a checkpoint that forgot too
much from becoming best/ (`forgetting.stop_on_violation` ends the run there).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vlmtune.config import RunCfg
from vlmtune.data.images import DecodedImages
from vlmtune.data.mix import Mixture
from vlmtune.data.sample import Sample
from vlmtune.data.video import VideoLoader
from vlmtune.eval import forgetting
from vlmtune.eval.report import write_run_report
from vlmtune.eval.runner import auto_max_new_tokens, evaluate
from vlmtune.eval.tasks import get_task
from vlmtune.infer import Predictor
from vlmtune.io import atomic_write_text
from vlmtune.models import ModelFamily, get_family
from vlmtune.models.family import Loaded, describe_trainable, input_dtype, trainable_summary
from vlmtune.models.loss import accepts_logits_to_keep, forward_losses, logit_prefix_of
from vlmtune.runs import checkpoints
from vlmtune.train import checkpoint as ckpt
from vlmtune.train import grpo, preference, targets, vision_cache
from vlmtune.train.batching import check_hflip, encode_batch, step_batches, trained_tokens_of
from vlmtune.train.build import build_data, build_model, build_optimizer
from vlmtune.train.checks import check_run
from vlmtune.train.distributed import has_accelerator_device, launched, shards_parameters, vision_dummy
from vlmtune.train.plan import plan_for_train
from vlmtune.train.preflight import check_samples
from vlmtune.train.trainable import train_autocast

PROBES_BASE = "probes_base.json"


@dataclass
class State:
    cfg: RunCfg
    run_dir: Path
    accelerator: Any
    family: ModelFamily
    loaded: Loaded
    model: Any
    optimizer: Any
    scheduler: Any
    data_root: Path
    """Where the val split's images are."""
    mixture: Mixture
    roots: list[Path]
    """Image root of each source of the mixture."""
    val: list[Sample]
    probes: list[forgetting.Probe]
    meta: dict
    """vlmtune.json of every checkpoint: family, adapter or not, base model."""
    step: int = 0
    best: float | None = None
    best_step: int | None = None
    probe_base: dict[str, float] | None = None
    """The base model's score on each probe (its metric), measured before step 0."""
    rejected: dict[str, str] = field(default_factory=dict)
    """Checkpoint step -> why the forgetting gate rejected it."""
    vision_cache: Any = None
    """A VisionCache when the frozen vision side's output is cached (train.vision_cache)."""
    images: Any = None
    """DecodedImages: the training images decoded once while they fit `train.image_cache_mb`."""
    videos: Any = None
    """VideoLoader: the training videos sampled by `data.video`, decoded once while they fit the same budget."""
    stopped: str | None = None
    reference: dict | None = None
    """train.method dpo: every pair's reference answer log-probabilities (train/preference.py)."""


def setup(cfg: RunCfg) -> State:
    """Everything `fit` needs: accelerator, model (+LoRA/freezing), optimizer, schedule, data; resumes if it can."""
    check_run(cfg)  # before anything is written, read or loaded
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    run_dir = cfg.run_dir
    # Started as several processes (torchrun, accelerate launch) on a machine without GPUs: without cpu=True
    # Accelerate sees no backend for them and every process silently trains alone as rank 0 of 1 (each writing
    # the same run directory); with it they form one gloo process group.
    options = dict(
        cpu=launched() and not has_accelerator_device(),
        mixed_precision=cfg.train.mixed_precision,
        log_with=cfg.train.trackers or None,
        project_dir=str(run_dir),
        # LLaVA under DDP: text-only batches leave the vision tower unused
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    try:
        accelerator = Accelerator(**options)
    except ValueError as e:  # one process, an earlier run in it with another mixed precision (Accelerate's state
        if launched() or "already been initialized" not in str(e):  # is a per-process singleton): start afresh
            raise
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
        accelerator = Accelerator(**options)
    accelerator.print(f"vlmtune train: {accelerator.num_processes} process(es) (distributed: "
                      f"{accelerator.distributed_type.value.lower()}), mixed precision {accelerator.mixed_precision}, "
                      f"device {accelerator.device}", file=sys.stderr)
    if cfg.train.global_batch_size % (cfg.train.micro_batch_size * accelerator.num_processes):
        raise ValueError("global_batch_size must be a multiple of micro_batch_size x number of processes")
    set_seed(cfg.train.seed)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "run_config.yaml")
        data = build_data(cfg, run_dir)
        _, mixture, roots = data[:3]  # what the run will cost, over the samples it trains on: printed, and saved
        plan_for_train(cfg, run_dir, [(root, s) for src, root in zip(mixture.sources, roots, strict=True)
                                      for s in src.samples])  # as plan.json (never fails the run)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:  # the same data; only rank 0 writes into the run directory (rejected.jsonl)
        with tempfile.TemporaryDirectory(prefix="vlmtune-rank-") as scratch:
            data = build_data(cfg, Path(scratch))
    data_root, mixture, roots, val, probes = data
    if cfg.train.hflip:
        for src in mixture.sources:
            check_hflip(src.samples)
    family = get_family(cfg.model.family)
    loaded, model, meta = build_model(cfg, family, run_dir, accelerator.is_main_process)
    accelerator.print(describe_trainable(trainable_summary(family, model)), file=sys.stderr)
    accelerator.wait_for_everyone()
    optimizer, scheduler = build_optimizer(cfg, model)
    cache, reason = None, vision_cache.why_not(cfg, family, model)

    if reason is None and shards_parameters(accelerator):  # a miss would run the tower on one rank only: a hang
        reason = f"parameters are sharded over processes ({accelerator.distributed_type.value})"
    if reason is None:
        cache = vision_cache.VisionCache(model, family, loaded.processor, run_dir / "vision_cache",
                                         precision=accelerator.mixed_precision)
        cache.autocast = lambda: train_autocast(accelerator)
    accelerator.print(f"vision cache: {'on, ' + str(cache.dir) if cache else 'off (' + reason + ')'}"
                      + (f"; {cache.video_off}" if cache and cache.video_off else ""), file=sys.stderr)
    # micro-batches per optimizer step, for accumulate() and DeepSpeed's "auto" gradient_accumulation_steps
    accelerator.gradient_accumulation_steps = cfg.train.grad_accum_steps(accelerator.num_processes)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = State(cfg, run_dir, accelerator, family, loaded, model, optimizer, scheduler, data_root, mixture, roots,
                  val, probes, meta, vision_cache=cache,
                  # with the feature cache on, a seen sample's stored rows replace its images: keep none decoded
                  images=DecodedImages(0 if cache is not None else cfg.train.image_cache_mb << 20),
                  videos=VideoLoader(cfg.data.video, 0 if cache is not None else cfg.train.image_cache_mb << 20))
    if cache is not None:  # the cache keys a video's frames by its files, the sampling policy and their timestamps
        cache.videos = state.videos
    check_samples(state)  # every sample passes data check's record checks and fits max_length
    first = state.mixture.sources[0].samples[0]
    accelerator.print(f"trained tokens of sample {first.id!r}: {trained_tokens_of(state, first)}", file=sys.stderr)
    done = checkpoints(run_dir)
    if cfg.train.method == "dpo":  # before a resume loads trained weights: the model as loaded is the reference
        state.reference = preference.reference_logps(state, lambda chunk: encode_batch(state, chunk), bool(done))
    if done:
        resumed = ckpt.load_trainer_state(done[-1], accelerator.unwrap_model(model), optimizer, scheduler,
                                          accelerator)
        state.step, state.best, state.best_step = resumed["step"], resumed.get("best"), resumed.get("best_step")
        state.rejected = resumed.get("rejected", {})
        if accelerator.is_main_process:
            ckpt.truncate_log(run_dir / "metrics.jsonl", state.step)
        accelerator.print(f"resumed from {done[-1]} (step {state.step})", file=sys.stderr)
    elif accelerator.is_main_process:  # killed before its first checkpoint: this run starts again from step 0, and
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # so does its log (appending would repeat steps)
    if (run_dir / PROBES_BASE).is_file():
        state.probe_base = json.loads((run_dir / PROBES_BASE).read_text())["scores"]
    if not done:  # a fresh run trains from the seed; a resumed one goes on with the generators its checkpoint saved
        torch.manual_seed(cfg.train.seed)
    if cfg.train.trackers:
        flat = {k: v for k, v in _flatten(cfg.to_dict()).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("tensorboard", config=flat)
    return state


def fit(state: State) -> dict:
    """Train to `max_steps`: micro-steps, clip, step, log, eval every N, save every N. Returns the final metrics."""
    import torch

    acc, t = state.accelerator, state.cfg.train
    world, rank = acc.num_processes, acc.process_index
    accum = t.grad_accum_steps(world)
    model = state.model
    last: dict = {}
    keep_logits = accepts_logits_to_keep(acc.unwrap_model(model))
    prefix = logit_prefix_of(state.family, acc.unwrap_model(model))
    if state.step == 0 and (state.val or state.probes):
        last = validate(state)  # the base model: step 0 of every curve, the probes' reference, the gallery's "before"
    model.train()
    bar = None
    if t.progress and acc.is_main_process:
        bar = tqdm(total=t.max_steps, initial=state.step, desc="train", file=sys.stderr, dynamic_ncols=True)
    names = state.mixture.names
    dpo = t.method == "dpo"
    grpo_run = grpo.GrpoRun(state) if t.method == "grpo" else None  # rollouts, rewards, their statistics
    pairs = torch.zeros(len(preference.STATS) + 1, dtype=torch.float64)  # DPO: statistics' sums, pairs since log
    window = torch.zeros(len(names), 2, dtype=torch.float64)  # per source: loss sum, target tokens since last log
    padding = torch.zeros(2, dtype=torch.float64)  # pad positions, all positions since the last log (this process)
    dtype = input_dtype(acc.unwrap_model(model))  # floating inputs in the base weights' dtype (bf16 recipes)
    tic = time.perf_counter()
    while state.step < t.max_steps and not state.stopped:
        chunks, batches, weights = grpo_run.step_batches(state.step, rank, accum) if grpo_run else \
            step_batches(state, state.step, rank, accum)
        weights = weights or [None] * len(batches)
        # token-weighted loss over the whole global batch (all micro-batches, all processes); a weighted row's
        # tokens count `weight` times (data.answer_targets: weighted), so its loss is a weighted token mean too.
        # DPO: the mean over the global batch's pairs
        n_tokens = torch.tensor(sum(len(c) if dpo else targets.weighted_tokens(b, w)
                                    for c, b, w in zip(chunks, batches, weights, strict=True)),
                                device=acc.device, dtype=torch.float32)
        total_tokens = acc.reduce(n_tokens, reduction="sum").clamp(min=1)
        stats = torch.zeros(len(names), 3, dtype=torch.float64, device=acc.device)  # loss sum, tokens, samples
        for chunk, batch, w in zip(chunks, batches, weights, strict=True):
            batch = batch.to(acc.device, dtype)
            labels = batch.inputs.pop("labels")
            # accumulate: no gradient sync before the last micro-batch (DDP/FSDP), no engine step (DeepSpeed)
            with acc.accumulate(model):
                # under ZeRO-3/FSDP a rank with a text-only micro-batch still runs the vision side (x 0): no hang
                with train_autocast(acc), vision_dummy(acc, model, state.family, batch.inputs, state.loaded.processor):
                    sums, counts = grpo_run.losses(model, batch.inputs, labels, keep_logits, prefix) if grpo_run \
                        else forward_losses(model, state.family, batch.inputs, labels, keep_logits, prefix,
                                            batch.segments)
                if dpo:  # the rows' answer log-probabilities -> one loss per pair
                    sums, per_pair = preference.pair_losses(-sums, chunk, state.reference, t.dpo_beta,
                                                            t.dpo_label_smoothing)
                    counts = torch.ones_like(sums)
                    pairs[:-1] += per_pair.sum(0).double().cpu()
                    pairs[-1] += len(chunk)
                if w is not None:  # per row: loss sum and tokens x the row's weight; a sample's weights sum to 1
                    w = w.to(sums.device)
                    sums, counts = sums * w, counts * w
                # DDP averages gradients over processes; accelerate (and DeepSpeed) divide by the accumulation steps
                acc.backward(sums.sum() / total_tokens * world * accum)
            mask = batch.inputs.get("attention_mask")
            if batch.segments is not None:  # packed: no padding (Gemma 3's row carries its attention masks)
                padding[1] += batch.segments.numel()
            elif mask is not None:
                padding += torch.tensor([mask.numel() - mask.sum().item(), mask.numel()], dtype=torch.float64)
            src = torch.tensor([j for j, _ in chunk], device=acc.device)
            stats[:, 0].index_add_(0, src, sums.detach().double())
            stats[:, 1].index_add_(0, src, counts.double())
            stats[:, 2].index_add_(0, src, w.double() if w is not None else torch.ones_like(src, dtype=torch.float64))
        grad_norm = acc.clip_grad_norm_(model.parameters(), t.grad_clip) if t.grad_clip > 0 else None
        state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        stats = acc.reduce(stats, reduction="sum").cpu()
        window += stats[:, :2]
        step_loss = stats[:, 0].sum().item() / total_tokens.item()
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
        if state.step % t.log_every == 0 or state.step == t.max_steps:
            pad = acc.reduce(padding.to(acc.device), reduction="sum").cpu()  # every process's micro-batches
            row = {"step": state.step, "loss": step_loss, "lr": state.scheduler.get_last_lr()[0],
                   "grad_norm": float(grad_norm) if grad_norm is not None else None,
                   "samples_per_s": t.global_batch_size * t.log_every / (time.perf_counter() - tic),
                   "padding": pad[0].item() / max(1.0, pad[1].item())}
            padding.zero_()
            if dpo:  # every process's pairs
                row.update(preference.stats_row(acc.reduce(pairs.to(acc.device), reduction="sum").cpu()))
                pairs.zero_()
            if grpo_run:  # rewards, advantages, completion lengths, KL, clipping, generation's share of the time
                row.update(grpo_run.stats_row(acc))
            if len(names) > 1:
                drawn = state.mixture.drawn(state.step, t.global_batch_size)
                for j, name in enumerate(names):
                    if window[j, 1] > 0:
                        row[f"loss/{name}"] = window[j, 0].item() / window[j, 1].item()
                    row[f"samples/{name}"] = drawn[j]
            window.zero_()
            log(state, row)
            tic = time.perf_counter()
        final = state.step == t.max_steps
        evaluated = None
        if (state.val or state.probes) and ((t.eval_every and state.step % t.eval_every == 0) or final):
            evaluated = validate(state)
            last = evaluated
        if (t.save_every and state.step % t.save_every == 0) or final or state.stopped:
            save(state, evaluated)
    if bar:
        bar.close()
    if state.stopped:
        acc.print(f"stopped early at step {state.step}: {state.stopped}", file=sys.stderr)
    acc.wait_for_everyone()
    acc.end_training()
    return last


def validate(state: State) -> dict:
    """Generation-based metrics on the val split and on every probe, logged with the step.

    Every process takes part: `evaluate` gives each one its share of the samples and scores the gathered
    predictions on rank 0, so every process gets the same metrics (those of a one-process run); only rank 0 writes
    files and logs. At step 0 the probes' scores become the base; later, each probe's delta from the base (points)
    is logged and the forgetting gate is applied (the verdict is returned under "gate").
    """
    acc = state.accelerator
    metrics: dict = {}
    e = state.cfg.eval
    max_new_tokens = e.max_new_tokens
    if max_new_tokens == "auto":  # sized from the val split's gold texts (the probes get the same cap)
        max_new_tokens, how = auto_max_new_tokens(state.loaded.processor.tokenizer, state.val)
        if state.step == 0:
            acc.print(how, file=sys.stderr)
    unwrapped = acc.unwrap_model(state.model)
    predictor = Predictor(Loaded(unwrapped, state.loaded.processor, state.family.name), state.family,
                          max_new_tokens=max_new_tokens, num_beams=e.num_beams, batch_size=e.batch_size,
                          max_length=state.cfg.data.max_length, vision_cache=state.vision_cache,
                          video=state.cfg.data.video,  # validation takes the frames training takes
                          autocast=lambda: train_autocast(acc),
                          # names the weights for a resumed validation (hashing them would gather a sharded model):
                          # the step and what the run was trained with, not where it is written (name, out_dir), so
                          # two runs of one config write identical predictions files
                          identity=json.dumps([state.step, {k: v for k, v in state.cfg.to_dict().items()
                                                            if k not in ("name", "out_dir")}], default=str))
    out_dir = state.run_dir / "predictions" / f"step-{state.step}"
    if state.val:
        metrics = evaluate(predictor, state.data_root, state.val, get_task(e.task), out_dir, lang=e.lang)
    row = {"step": state.step, **{f"val/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}}
    if state.probes:
        scored = forgetting.score(predictor, state.probes, out_dir)
        now = {p.name: scored[p.name][p.metric] for p in state.probes}
        if state.probe_base is None:
            state.probe_base = now
            if acc.is_main_process:
                atomic_write_text(state.run_dir / PROBES_BASE, json.dumps({"step": state.step, "scores": now}) + "\n")
        verdict = forgetting.gate(state.probe_base, now, state.cfg.forgetting.max_drop)
        for p in state.probes:
            row[f"probe/{p.name}/{p.metric}"] = now[p.name]
            row[f"probe/{p.name}/delta"] = verdict.deltas[p.name]
        metrics["probes"] = {name: {"score": now[name], "delta": verdict.deltas[name]} for name in now}
        metrics["gate"] = {"passed": verdict.passed, "reason": verdict.reason()}
        if not verdict.passed and state.step > 0:
            acc.print(f"step {state.step}: forgetting gate: {verdict.reason()}", file=sys.stderr)
            if state.cfg.forgetting.stop_on_violation:
                state.stopped = f"forgetting.stop_on_violation: {verdict.reason()}"
    log(state, row)
    acc.print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), file=sys.stderr)
    acc.wait_for_everyone()
    stopped = [state.stopped]
    if acc.num_processes > 1:  # every process must leave the loop together (rank 0's verdict is the verdict)
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(stopped, from_process=0)
    state.stopped = stopped[0]
    return metrics


def save(state: State, evaluated: dict | None) -> None:
    """A resumable checkpoint; it becomes best/ when its validation metric beats the best so far among the
    checkpoints that pass the forgetting gate. Rejected checkpoints are logged with the reason.

    The bookkeeping (best, rejected) is done by every process (the metrics are the same on all of them, see
    `validate`), so that each one returns the same result; the files are written by rank 0 alone."""
    acc = state.accelerator
    metric = state.cfg.eval.metric
    value = evaluated.get(metric) if evaluated else None
    gate = (evaluated or {}).get("gate")
    if gate and not gate["passed"]:
        state.rejected[str(state.step)] = gate["reason"]
        log(state, {"step": state.step, "gate": "rejected", "reason": gate["reason"]})
        value = None
    improved = value is not None and (state.best is None or value > state.best)
    if improved:
        state.best, state.best_step = value, state.step

    # several processes: the weights as accelerate gathers them, on every rank (a collective under FSDP / ZeRO-3,
    # where each rank holds shards); the optimizer state of a sharded run is saved by each rank for itself
    full = acc.get_state_dict(state.model) if acc.num_processes > 1 else None
    sharded = None
    if shards_parameters(acc):
        sharded = state.run_dir / "checkpoints" / f".sharded-step-{state.step}"
        acc.save_state(str(sharded))
        acc.wait_for_everyone()
    if acc.is_main_process:
        model = acc.unwrap_model(state.model)
        meta = {**state.meta, "metrics": {k: v for k, v in (evaluated or {}).items()}}
        path = ckpt.save_checkpoint(state.run_dir, state.step, model, state.loaded.processor, meta, state.optimizer,
                                    state.scheduler, {"best": state.best, "best_step": state.best_step,
                                                      "rejected": state.rejected}, full, sharded)
        # without a validation metric the first checkpoint stands in as best/; with probes, only a gated one may
        unjudged = state.best is None and not state.probes and not (state.run_dir / "best").exists()
        if improved or unjudged:
            ckpt.save_best(state.run_dir, path)
        ckpt.prune(state.run_dir, max(1, state.cfg.train.keep_checkpoints))  # best/ is a copy: pruning keeps it
    acc.wait_for_everyone()


def log(state: State, row: dict) -> None:
    """One row of metrics.jsonl (and of the trackers): written by rank 0 only, whoever calls."""
    acc = state.accelerator
    if not acc.is_main_process:
        return
    with open(state.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    if state.cfg.train.trackers:
        acc.log({k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}, step=row["step"])


def train(cfg: RunCfg) -> dict:
    """setup + fit (+ report.html); returns the final validation metrics, the best step and the gate's rejections."""
    state = setup(cfg)
    metrics = fit(state)
    out = {**{k: v for k, v in metrics.items() if k not in ("gate",)}, "best": state.best,
           "best_step": state.best_step, "run_dir": str(state.run_dir)}
    if state.probes:
        out["rejected"] = state.rejected
        if state.best_step is None:
            out["warning"] = ("no checkpoint passed the forgetting gate: best/ was not written; the last checkpoint "
                              "is in checkpoints/")
    if state.stopped:
        out["stopped"] = state.stopped
    if state.probes and state.accelerator.is_main_process:
        print(f"\nforgetting guard ({state.run_dir}):\n{forgetting.probe_table(state.run_dir)}", file=sys.stderr)
    if cfg.report and state.accelerator.is_main_process:
        out["report"] = str(write_run_report(state.run_dir))
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
