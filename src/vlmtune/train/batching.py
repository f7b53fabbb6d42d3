"""What one optimizer step trains on: this process's micro-batches of the step (`step_batches`), in an order fixed by
(seed, step) alone, with the step's mirroring (`hflip_mask`), length grouping and answer targets, encoded by the
family (`encode_batch`). `train.loop.fit` calls `step_batches` once a step.
"""

from __future__ import annotations

import re
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import ImageOps

from vlmtune.config import RunCfg
from vlmtune.data.mix import Mixture
from vlmtune.data.sample import Sample, message_text
from vlmtune.data.video import encode_with_videos, sample_inputs
from vlmtune.models import ModelFamily
from vlmtune.models.family import Loaded
from vlmtune.models.labels import IGNORE_INDEX, trained_tokens
from vlmtune.train import targets
from vlmtune.train.collate import pack
from vlmtune.train.preference import pair_samples


class StepState(Protocol):
    """What batching reads of the loop's `State` (train/loop.py), which has these and more."""

    cfg: RunCfg
    accelerator: Any
    family: ModelFamily
    loaded: Loaded
    model: Any
    mixture: Mixture
    roots: list[Path]
    """Image root of each source of the mixture."""
    vision_cache: Any
    images: Any
    """DecodedImages: the training images decoded once while they fit `train.image_cache_mb`."""
    videos: Any
    """VideoLoader: the training videos, sampled by `data.video` (decoded once while they fit the same budget)."""


def hflip_mask(seed: int, step: int, n: int) -> list[bool]:
    """Which of the `n` samples of optimizer step `step` are mirrored: a function of (seed, step) alone."""
    return [bool(x) for x in np.random.default_rng([seed, step, 1]).random(n) < 0.5]


_SIDES = re.compile(r"\b(left|right)", re.IGNORECASE)


def check_hflip(samples: list[Sample]) -> None:
    """Mirroring swaps left and right: refuse it for data whose texts talk about sides."""
    for s in samples:
        for m in s.messages:
            text = message_text(m)
            if _SIDES.search(text):
                raise ValueError(f"train.hflip: sample {s.id!r} mentions left/right ({text!r}); mirroring its image "
                                 "would make the answer wrong. Turn hflip off for this data.")


def step_batches(state: StepState, step: int, rank: int, accum: int):
    """This process's micro-batches of one optimizer step: (rows of (source index, sample) of each micro-batch,
    encoded Batches, each micro-batch's per-row loss weights or None). Rows are samples, except under
    `data.answer_targets: weighted`, where each sample has one row per distinct answer (train/targets.py)."""
    t, answer_targets = state.cfg.train, state.cfg.data.answer_targets
    items = state.mixture.step_items(t.seed, step, t.global_batch_size)
    if answer_targets == "sampled":  # each sample's answer drawn by agreement, by (seed, step, position): resumable
        items = targets.draw(t.seed, step, items)
    lo, hi = rank * t.micro_batch_size * accum, (rank + 1) * t.micro_batch_size * accum  # this process's share
    mine = items[lo:hi]
    flips = hflip_mask(t.seed, step, len(items))[lo:hi] if t.hflip else None
    if t.group_by_length and accum > 1:  # the step's samples are the same; only their micro-batches change
        order = sorted(range(len(mine)), key=lambda i: length_estimate(mine[i][1]))
        mine = [mine[i] for i in order]
        flips = [flips[i] for i in order] if flips else None
    m = t.micro_batch_size
    chunks = [mine[k : k + m] for k in range(0, len(mine), m)]
    chunk_flips = [flips[k * m : (k + 1) * m] if flips else None for k in range(len(chunks))]
    weights = None
    if answer_targets == "weighted":  # a micro-batch keeps its samples (accum micro-batches a step), as more rows
        expanded = [targets.expand(chunk) for chunk in chunks]
        chunks = [rows for rows, _, _ in expanded]
        weights = [w for _, w, _ in expanded]
        chunk_flips = [[f[i] for i in owner] if f else None for f, (_, _, owner) in zip(chunk_flips, expanded,
                                                                                         strict=True)]
    if state.vision_cache is not None:  # features computed once per image; a sample seen before is not re-encoded
        model = state.accelerator.unwrap_model(state.model)
        batches = [state.vision_cache.batch(model, cached_rows(state, chunk), state.roots,
                                            partial(encode_batch, state, chunk)) for chunk in chunks]
    else:
        batches = [encode_batch(state, chunk, f) for chunk, f in zip(chunks, chunk_flips, strict=True)]
    if weights is not None:
        import torch

        weights = [torch.tensor(w, dtype=torch.float32) for w in weights]
    if t.packing:
        model = state.accelerator.unwrap_model(state.model)
        batches = [pack(b, state.family, model) for b in batches]
    return chunks, batches, weights


def cached_rows(state: StepState, items: list[tuple[int, Sample]]) -> list[tuple[int, Sample]]:
    """The rows of the (source index, sample) items' batch, as the vision cache keys and stores them: the items
    themselves, or under train.method dpo each pair's chosen then rejected samples (ids `ID#chosen`, `ID#rejected`),
    which share their pair's image features: computed in the step that first draws the pair (one vision forward over
    the batch's pixels, both rows'), read from the cache by both rows ever after."""
    if state.cfg.train.method != "dpo":
        return items
    pairs = [(j, s.id, s.pair()) for j, s in items]
    return [(j, replace(c, id=f"{i}#chosen")) for j, i, (c, _) in pairs] + \
        [(j, replace(r, id=f"{i}#rejected")) for j, i, (_, r) in pairs]


def trained_tokens_of(state: StepState, sample: Sample) -> list[str]:
    """The tokens the loss is computed on for one sample, as strings (printed at start-up: the answer and the end
    token the model learns to stop at, nothing of the prompt)."""
    batch = encode_batch(state, [(0, sample)])
    tok, labels = state.loaded.processor.tokenizer, batch.inputs["labels"][0].tolist()
    if not state.family.shift_labels:  # encoder-decoder: the labels are the decoder's target tokens themselves
        return [tok.convert_ids_to_tokens(t) for t in labels if t != IGNORE_INDEX]
    return trained_tokens(tok, batch.inputs["input_ids"][0].tolist(), labels)


def length_estimate(sample: Sample) -> int:
    """A sample's rough length in tokens (about 4 characters a token; an image costs hundreds of positions), to put
    samples of similar length in one micro-batch. The loss is summed over the whole step, so it does not change."""
    return sum(len(message_text(m)) for m in sample.messages) // 4 + 256 * (len(sample.images) + 8 * len(sample.videos))


def encode_batch(state: StepState, items: list[tuple[int, Sample]], flips: list[bool] | None = None):
    """(source index, sample) pairs -> a training Batch; images and videos are read from each source's root (a
    video as `data.video` samples it: frames as images, or `videos=` for a family with native video). Under
    train.method dpo the samples are preference pairs and the batch has 2n rows: the chosen answers, then the
    rejected ones, each with its pair's images (train/preference.py)."""
    inputs = [sample_inputs(state.roots[j], s, state.family, state.images.load, state.videos.load) for j, s in items]
    samples, images, videos = ([x[k] for x in inputs] for k in range(3))
    if flips:
        images = [[ImageOps.mirror(im) for im in ims] if f else ims for ims, f in zip(images, flips, strict=True)]
    if state.cfg.train.method == "dpo":
        samples, images, videos = pair_samples(samples), images * 2, videos * 2
    return encode_with_videos(state.family, state.loaded.processor, samples, images, videos, "train",
                              state.cfg.data.max_length)
