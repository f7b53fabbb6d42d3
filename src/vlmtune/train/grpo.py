"""GRPO with verifiable rewards (`train.method: grpo`): rollouts from the current policy, rewards from vlmtune's own
metrics, and the clipped policy-gradient loss per token, on the training loop of SFT and DPO.

    train: {method: grpo, grpo_generations: 8, rewards: [{metric: relaxed_accuracy, weight: 1.0},
            {format: "^[0-9.]+$", weight: 0.1}, {function: "mypkg.rewards:length_penalty", weight: 0.5}]}

Rollout. Each step draws its prompts as SFT draws its samples (by (seed, step): the conversation up to its last
answer is the prompt, the answer is not shown); every prompt is repeated `grpo_generations` (k) times in one batch,
encoded by the family's `encode(..., "generate")` (the images processed exactly as in training and in `Predictor`),
and sampled by one `generate` call (batched, with the KV cache) with `grpo_temperature` / `grpo_top_p` /
`grpo_top_k` up to `grpo_max_new_tokens`. The sampling is seeded by (seed, step, micro-batch of the global batch)
under `torch.random.fork_rng`, so a resumed run, or one on more processes, draws the very same completions, and the
training RNG (dropout) is left as it was.

Rewards. Per completion, the weighted sum of the configured rewards: a per-answer metric of eval/metrics
(`METRICS`: vqa_accuracy, relaxed_accuracy, anls, exact_match) against `Sample.gold()`, a format reward (1 when the
whole stripped completion matches the regex, 0 when not or empty), or a function "module:function" called as
`reward(sample, completion) -> float`.

Advantages. Per group (one prompt's k completions): (r - mean) / (std + 1e-4), std the unbiased one (TRL's
scale_rewards "group"). A group whose rewards are all equal has ZERO advantage (set exactly, not left to float
rounding): its completions push the policy nowhere (only the KL term, if any, acts on them); the share of such
groups is logged as `grpo/zero_spread`.

Loss. Each completion is trained as it was sampled: the generation batch's rows (prompt, then the sampled token ids
up to and including the stop token the model ended with; a completion cut at grpo_max_new_tokens has none), labels
on the completion only. Per completion token t with advantage A of its completion:
    ratio = exp(logp_t - old_logp_t);  loss_t = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) + beta * kl_t
    kl_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1      (the k3 estimator, as TRL and the GRPO paper)
One optimisation step is taken per rollout, so the rollout's log-probabilities `old_logp` are those of the very
weights being trained: `logp.detach()` (TRL's num_iterations=1): the ratio is 1 and its gradient that of the policy
gradient; `grpo_loss` takes any `old_logp`, and the clip fraction is logged. Normalisation: the token SUM over the
whole global batch divided by its number of completion tokens (DAPO's token-level loss, TRL's current default
loss_type "dapo"): the loop's own SFT denominator, so gradient accumulation and processes do not change it, and a
long completion is not down-weighted per token as GRPO's per-sequence mean does. KL (`grpo_beta` > 0, default 0 as
TRL's): the reference is the model with its LoRA adapter disabled (peft's `disable_adapter()`); a full fine-tune
keeps no reference copy and refuses grpo_beta > 0 (config/run.py).

Traps handled here:
- transformers' `generate` samples with top_k=50 unless told otherwise (a default filled in at generation time,
  not in the model's generation config): `grpo_top_k` is passed always, 0 (off) by default.
- re-encoding a completion's TEXT through the chat template would train other tokens than the sampled ones (a
  partial UTF-8 byte decodes to U+FFFD and re-encodes as three other bytes; a cut completion would gain a stop
  token): the sampled ids themselves are trained.
- a sampled special or image placeholder token (likely from a small or random model) would ask the model for image
  features it has not got: such ids are suppressed in sampling (`placeholder_ids`).
"""

from __future__ import annotations

import hashlib
import importlib
import math
import numbers
import re
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

from vlmtune.data.sample import Sample
from vlmtune.eval.metrics import METRICS
from vlmtune.infer import answer_text, prompt_length, stop_ids
from vlmtune.models.family import Batch, autocast_for, input_dtype
from vlmtune.models.labels import IGNORE_INDEX
from vlmtune.models.loss import forward_token_losses
from vlmtune.train.batching import encode_with_videos, sample_inputs
from vlmtune.train.distributed import shards_parameters
from vlmtune.train.trainable import train_autocast

EPS = 1e-4
"""Added to a group's reward std (TRL's)."""
STATS = ("completions", "reward_sum", "reward_sq", "adv_abs", "length_sum", "groups", "zero_spread", "kl_sum",
         "clipped", "tokens", "generate_s")
"""The statistics summed over a log window (then the per-reward sums)."""


@dataclass
class Reward:
    name: str
    weight: float
    fn: Any
    """(sample, completion text) -> float."""


def reward_functions(t) -> list[Reward]:
    """`train.rewards` -> callables; ValueError naming the option for an unknown metric or a function that cannot be
    imported."""
    out = []
    for i, r in enumerate(t.rewards):
        where = f"train.rewards[{i}]"
        if r.metric is not None:
            if r.metric not in METRICS:
                raise ValueError(f"{where}.metric {r.metric!r}: not one of vlmtune's per-answer metrics "
                                 f"{sorted(METRICS)}")
            fn = _metric_reward(METRICS[r.metric])
        elif r.format is not None:
            fn = _format_reward(re.compile(r.format))
        else:
            module, name = r.function.split(":")
            try:
                fn = getattr(importlib.import_module(module), name)
            except ImportError as e:
                raise ValueError(f"{where}.function {r.function!r}: cannot import module {module!r} ({e})") from None
            except AttributeError:
                raise ValueError(f"{where}.function {r.function!r}: module {module!r} has no {name!r}") from None
            if not callable(fn):
                raise ValueError(f"{where}.function {r.function!r}: not a function")
        out.append(Reward(r.name, r.weight, fn))
    return out


def _metric_reward(metric):
    return lambda sample, completion: metric(completion, sample.gold()) if sample.gold() else 0.0


def _format_reward(pattern):
    return lambda sample, completion: float(bool(completion.strip()) and bool(pattern.fullmatch(completion.strip())))


def score(rewards: list[Reward], samples: list[Sample], completions: list[str]):
    """Per completion (its sample alongside) -> (weighted total (n,), each reward's raw value (n, R)), float64."""
    import torch

    each = torch.tensor([[_reward(r, s, c) for r in rewards] for s, c in zip(samples, completions, strict=True)],
                        dtype=torch.float64).reshape(len(completions), len(rewards))
    weights = torch.tensor([r.weight for r in rewards], dtype=torch.float64)
    return each @ weights, each


def _reward(r: Reward, sample: Sample, completion: str) -> float:
    """One reward's value, a finite number; ValueError naming the reward and the sample when the function raises or
    returns anything else (the run stops with that line; a resume starts again from its last checkpoint)."""
    try:
        value = r.fn(sample, completion)
    except Exception as e:  # a user's function: its error, named, not a traceback from inside the loop
        raise ValueError(f"reward {r.name!r} raised {type(e).__name__}: {e} (sample {sample.id!r}, completion "
                         f"{completion[:80]!r})") from None
    if not isinstance(value, numbers.Real) or not math.isfinite(value):  # a bool is 0 or 1, a NumPy float fine
        raise ValueError(f"reward {r.name!r} returned {value!r} for sample {sample.id!r}: a finite number is needed")
    return float(value)


def group_advantages(rewards, k: int):
    """(n * k,) rewards, k per group in order -> ((n * k,) advantages, (n,) bool: the groups with zero spread)."""
    groups = rewards.view(-1, k)
    flat = (groups == groups[:, :1]).all(dim=1)
    adv = (groups - groups.mean(dim=1, keepdim=True)) / (groups.std(dim=1, keepdim=True) + EPS)
    return adv.masked_fill(flat[:, None], 0.0).reshape(-1), flat


def grpo_loss(logps, old_logps, advantages, epsilon: float, beta: float = 0.0, ref_logps=None):
    """Per completion token (1-D tensors alike: log-probabilities now, at rollout, of the reference; each token's
    advantage) -> (per-token loss, bool clipped, per-token KL to the reference (zeros without one))."""
    import torch

    ratio = torch.exp(logps - old_logps.detach())
    unclipped, clipped = ratio * advantages, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * advantages
    loss = -torch.minimum(unclipped, clipped)
    was_clipped = ((ratio < 1 - epsilon) & (advantages < 0)) | ((ratio > 1 + epsilon) & (advantages > 0))
    kl = torch.zeros_like(loss)
    if beta > 0:
        delta = ref_logps.detach() - logps
        kl = torch.exp(delta) - delta - 1
        loss = loss + beta * kl
    return loss, was_clipped, kl.detach()


def rollout_seed(seed: int, step: int, micro_batch: int) -> int:
    """The sampling seed of one micro-batch's rollout: fixed by (seed, step, the micro-batch's index in the step's
    global batch) alone, so N processes sample what one process sampling all the micro-batches does."""
    return int.from_bytes(hashlib.sha256(f"grpo/{seed}/{step}/{micro_batch}".encode()).digest()[:8], "little") >> 1


def prompt_of(sample: Sample) -> Sample:
    """The sample without its answer (the conversation up to its last user turn)."""
    return replace(sample, messages=sample.messages[:-1]) if sample.has_target else sample


@dataclass
class Rollout:
    batch: Any
    """The completions encoded as training rows (k per prompt, in order)."""
    completions: list[str]
    rewards: Any
    """(n * k,) weighted reward totals."""
    each: Any
    """(n * k, R) every reward's raw value."""
    advantages: Any
    zero_spread: Any
    lengths: list[int]
    """Completion tokens as generated."""
    generate_s: float


def rollout(model, family, processor, samples: list[Sample], images: list[list], videos, rewards: list[Reward], t,
            max_length: int, seed: int, autocast=None) -> Rollout:
    """k sampled completions per sample, scored, and made training rows of exactly the sampled tokens."""
    import torch

    k = t.grpo_generations
    prompts = [prompt_of(s) for s in samples for _ in range(k)]
    ims = [list(x) for x in images for _ in range(k)]
    vids = [list(x) for x in videos for _ in range(k)] if videos is not None and any(videos) else None
    batch = encode_with_videos(family, processor, prompts, ims, vids, "generate", max_length)
    batch = batch.to(model.device, input_dtype(model))
    tok = processor.tokenizer
    stop = stop_ids(model, tok)
    options = {"do_sample": True, "num_beams": 1, "temperature": t.grpo_temperature, "top_p": t.grpo_top_p,
               "top_k": t.grpo_top_k, "max_new_tokens": t.grpo_max_new_tokens,
               "suppress_tokens": sorted(placeholder_ids(model, tok) - stop) or None}
    tic, was_training = time.perf_counter(), model.training
    model.eval()
    try:  # sampled by (seed, step, micro-batch); the training RNG (dropout) is left as it was
        with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []), \
                torch.no_grad(), (autocast or (lambda: autocast_for(model)))():
            torch.manual_seed(seed)
            out = model.generate(**batch.inputs, **options)
    finally:
        model.train(was_training)
    generate_s = time.perf_counter() - tic
    new = out[:, prompt_length(family, batch):]
    labels = torch.full_like(new, IGNORE_INDEX)
    texts, lengths = [], []
    for i, row in enumerate(new.tolist()):
        end = next((j for j, x in enumerate(row) if x in stop), None)
        answer = row if end is None else row[:end]
        trained = len(row) if end is None else end + 1  # the answer and the stop token it ended with, if any
        labels[i, :trained] = new[i, :trained]
        texts.append(answer_text(tok, answer))
        lengths.append(len(answer))
    inputs = dict(batch.inputs)
    if family.shift_labels:  # the prompt (left-padded) then the completion: generate's own rows
        n, width = inputs["input_ids"].shape
        for key, value in inputs.items():  # per-token extras: a text token's type (0); Mllama's cross-attention
            if "token_type" in key or key == "cross_attention_mask":  # mask (the last position's, as generate does)
                tail = torch.zeros_like(value[:, :1]) if "token_type" in key else value[:, -1:]
                inputs[key] = torch.cat([value, tail.expand(-1, new.shape[1], *value.shape[2:])], dim=1)
        inputs["input_ids"] = out
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], (labels != IGNORE_INDEX).long()], dim=1)
        labels = torch.cat([torch.full((n, width), IGNORE_INDEX, dtype=labels.dtype, device=labels.device), labels],
                           dim=1)
    inputs["labels"] = labels  # an encoder-decoder model builds its decoder inputs from them
    trained = Batch(inputs, [f"{p.id}#{i % k}" for i, p in enumerate(prompts)], int((labels != IGNORE_INDEX).sum()))
    totals, each = score(rewards, [s for s in samples for _ in range(k)], texts)
    advantages, flat = group_advantages(totals, k)
    return Rollout(trained, texts, totals, each, advantages, flat, lengths, generate_s)


def placeholder_ids(model, tok) -> set[int]:
    """Token ids a completion must not hold: the tokenizer's special added tokens and the model config's image /
    video / vision token ids (a sampled image placeholder would ask the model for image features it has not got),
    less the tokens generation forces itself."""
    ids = {i for i, added in tok.added_tokens_decoder.items() if added.special}
    configs = [getattr(model, "config", None)]
    configs.append(getattr(configs[0], "text_config", None))
    for config in filter(None, configs):
        for key, value in config.to_dict().items():
            if isinstance(value, int) and key.endswith(("token_id", "token_index")) and \
                    any(w in key for w in ("image", "video", "vision", "boi", "eoi")):
                ids.add(value)
    generation = getattr(model, "generation_config", None)  # what generation itself forces (Florence-2's bos)
    return ids - {getattr(generation, k, None) for k in ("forced_bos_token_id", "decoder_start_token_id")}


def policy_losses(model, family, inputs: dict, labels, ro: Rollout, t, keep_logits: bool, prefix: int = 0):
    """One micro-batch of rollouts' GRPO loss -> (per-row loss sums, per-row completion tokens, (KL sum, clipped
    tokens)); the loop divides the sums by the global batch's completion tokens (DAPO)."""
    import torch

    ce, group, n = forward_token_losses(model, family, inputs, labels, keep_logits, prefix)
    logps = -ce
    ref = None
    if t.grpo_beta > 0:  # the reference: the model without its LoRA adapter
        with torch.no_grad(), base_of(model).disable_adapter():
            ref = -forward_token_losses(model, family, inputs, labels, keep_logits, prefix)[0]
    adv = ro.advantages.to(logps.device, logps.dtype)[group]
    loss, clipped, kl = grpo_loss(logps, logps.detach(), adv, t.grpo_epsilon, t.grpo_beta, ref)
    sums = loss.new_zeros(n).index_add(0, group, loss)
    return sums, torch.bincount(group, minlength=n), (float(kl.sum()), float(clipped.sum()))


def base_of(model):
    """The PEFT model under Accelerate's wrappers (what has `disable_adapter`)."""
    while not hasattr(model, "disable_adapter") and hasattr(model, "module"):
        model = model.module
    if not hasattr(model, "disable_adapter"):
        raise ValueError("train.grpo_beta > 0 needs a LoRA adapter to disable for the reference model")
    return model


class GrpoRun:
    """The loop's GRPO side: rollouts for a step's micro-batches, their losses, the logged statistics."""

    def __init__(self, state):
        import torch

        self.state, self.t = state, state.cfg.train
        t = self.t
        if shards_parameters(state.accelerator):
            raise ValueError(f"train.method grpo: each process samples its rollouts with the whole model, which "
                             f"{state.accelerator.distributed_type.value} shards; use DDP (or DeepSpeed ZeRO-1/2)")
        self.rewards = reward_functions(t)
        state.accelerator.print(
            f"GRPO: {t.grpo_generations} completions per prompt, temperature {t.grpo_temperature}, top_p "
            f"{t.grpo_top_p}, top_k {t.grpo_top_k or 'off'}, at most {t.grpo_max_new_tokens} new tokens, clip "
            f"{t.grpo_epsilon}, KL beta {t.grpo_beta}; reward = "
            + " + ".join(f"{r.weight:g} x {r.name}" for r in self.rewards), file=sys.stderr)
        self.pending: list[Rollout] = []
        self.window = torch.zeros(len(STATS) + len(self.rewards), dtype=torch.float64)
        self.maxes = torch.full((2,), float("-inf"), dtype=torch.float64)  # reward, completion length
        self.tic = time.perf_counter()

    def step_batches(self, step: int, rank: int, accum: int):
        """Like batching.step_batches: this process's micro-batches of the step, as rollouts (rows: (source,
        sample) per completion, k per prompt; the encoded completions; no row weights)."""
        s, t = self.state, self.t
        items = s.mixture.step_items(t.seed, step, t.global_batch_size)
        m = t.micro_batch_size
        mine = items[rank * m * accum : (rank + 1) * m * accum]
        chunks = [mine[i : i + m] for i in range(0, len(mine), m)]
        model = s.accelerator.unwrap_model(s.model)
        self.pending = []
        for position, chunk in enumerate(chunks):
            inputs = [sample_inputs(s.roots[j], x, s.family, s.images.load, s.videos.load) for j, x in chunk]
            ro = rollout(model, s.family, s.loaded.processor, [x[0] for x in inputs], [x[1] for x in inputs],
                         [x[2] for x in inputs], self.rewards, t, s.cfg.data.max_length,
                         rollout_seed(t.seed, step, rank * accum + position), lambda: train_autocast(s.accelerator))
            self.pending.append(ro)
            self._count(ro)
        rows = [[r for r in chunk for _ in range(t.grpo_generations)] for chunk in chunks]
        return rows, [ro.batch for ro in self.pending], None

    def losses(self, model, inputs: dict, labels, keep_logits: bool, prefix: int = 0):
        """The next micro-batch's per-row GRPO loss sums and completion tokens (the loop's forward_losses)."""
        ro = self.pending.pop(0)
        sums, counts, (kl, clipped) = policy_losses(model, self.state.family, inputs, labels, ro, self.t,
                                                    keep_logits, prefix)
        self.window[STATS.index("kl_sum")] += kl
        self.window[STATS.index("clipped")] += clipped
        self.window[STATS.index("tokens")] += float(counts.sum())
        return sums, counts

    def _count(self, ro: Rollout) -> None:
        import torch

        w, i = self.window, STATS.index
        w[i("completions")] += len(ro.completions)
        w[i("reward_sum")] += ro.rewards.sum()
        w[i("reward_sq")] += (ro.rewards ** 2).sum()
        w[i("adv_abs")] += ro.advantages.abs().sum()
        w[i("length_sum")] += sum(ro.lengths)
        w[i("groups")] += len(ro.zero_spread)
        w[i("zero_spread")] += ro.zero_spread.sum()
        w[i("generate_s")] += ro.generate_s
        w[len(STATS):] += ro.each.sum(0)
        self.maxes = torch.maximum(self.maxes, torch.tensor([ro.rewards.max(), float(max(ro.lengths))],
                                                            dtype=torch.float64))

    def stats_row(self, acc) -> dict[str, float]:
        """The log window's statistics over every process (then reset)."""
        w = acc.reduce(self.window.to(acc.device), reduction="sum").cpu()
        maxes = acc.gather(self.maxes.to(acc.device)[None]).reshape(-1, 2).max(0).values.cpu()
        n, i = max(1.0, float(w[STATS.index("completions")])), STATS.index
        mean = float(w[i("reward_sum")]) / n
        elapsed = time.perf_counter() - self.tic
        row = {"reward/mean": mean, "reward/max": float(maxes[0]),
               "reward/std": max(0.0, float(w[i("reward_sq")]) / n - mean ** 2) ** 0.5,
               **{f"reward/{r.name}": float(w[len(STATS) + j]) / n for j, r in enumerate(self.rewards)},
               "advantage/abs_mean": float(w[i("adv_abs")]) / n,
               "completion/length_mean": float(w[i("length_sum")]) / n, "completion/length_max": float(maxes[1]),
               "grpo/zero_spread": float(w[i("zero_spread")]) / max(1.0, float(w[i("groups")])),
               "grpo/kl": float(w[i("kl_sum")]) / max(1.0, float(w[i("tokens")])),
               "grpo/clip_fraction": float(w[i("clipped")]) / max(1.0, float(w[i("tokens")])),
               "grpo/generate_share": min(1.0, float(w[i("generate_s")]) / acc.num_processes / max(elapsed, 1e-9))}
        self.window.zero_()
        self.maxes.fill_(float("-inf"))
        self.tic = time.perf_counter()
        return row
