"""What a sample with several human answers is trained to say: `data.answer_targets`.

    data:
      answer_targets: sampled        # single (default) | sampled | weighted

VQAv2 and VizWiz give ten human answers per question (`Sample.answers`); the annotators often disagree ("red" x6,
"orange" x3, "unanswerable" x1). The options:

* `single` (the default): the sample's own last assistant turn, as written by its importer. VizWiz: the most
  frequent of the ten answers compared as given, ties to the first given; VQAv2: the official
  `multiple_choice_answer`; hf datasets: `answer`, else `multiple_choice_answer`, else the most frequent answer.
* `sampled`: each time a sample is drawn, its target is one of its answers, drawn with probability proportional to
  its agreement; a function of (seed, step, position in the step) alone, like `train.hflip`, so a resumed run draws
  what an uninterrupted one would.
* `weighted`: the sample is trained on every distinct answer at once, one row each, the loss of each row weighted
  by its agreement count / number of answers (the weights of a sample sum to 1, so a sample weighs as much as under
  `single`). The loop's token-weighted mean stays exact: a row's tokens count `weight` times in the global batch's
  token total (train/loop.py). A micro-batch then holds up to (micro_batch_size x distinct answers) rows: lower
  `train.micro_batch_size` if that does not fit; the loss is the same.

Agreement is counted as the VQA metric compares answers: answers equal after its normalisation (`normalize_answer`:
case, punctuation, articles, number words) are one answer, written as its most frequent spelling (ties: the first
given). Why count / 10 and not the VQA score min(count / 3, 1) as weights: cross-entropy weighted by w over the
answers of one question is lowest when the model's probabilities are proportional to w; with min(count / 3, 1) an
answer three annotators gave would be as likely as one seven gave, and greedy decoding could pick either. count / 10
keeps the annotators' distribution, whose most likely answer is the majority (the best VQA accuracy there is).

Samples without `answers` (captions, charts, replay data), blank answers and samples whose conversation does not end
with an assistant turn keep their single target.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from vlmtune.data.sample import Sample, assistant
from vlmtune.eval.metrics.vqa import normalize_answer
from vlmtune.models.labels import IGNORE_INDEX

AnswerTargets = Literal["single", "sampled", "weighted"]


def answer_choices(sample: Sample) -> list[tuple[str, float]]:
    """(text, weight) of each distinct answer of `sample`, most agreed first; weight = agreement / answers used.
    [] when the sample keeps its single target (no answers, no final assistant turn, no non-blank answer)."""
    if not sample.answers or sample.messages[-1]["role"] != "assistant":
        return []
    answers = [a for a in sample.answers if a.strip()]
    groups: dict[str, list[str]] = {}  # normalised answer -> its spellings, in the order given
    for a in answers:
        groups.setdefault(normalize_answer(a.replace("\n", " ").replace("\t", " ").strip()), []).append(a)
    choices = []
    for spellings in groups.values():
        text = max(spellings, key=lambda s: (spellings.count(s), -spellings.index(s)))
        choices.append((text, len(spellings) / len(answers)))
    return sorted(choices, key=lambda c: -c[1])  # stable: ties stay in the order given


def with_target(sample: Sample, k: int, text: str) -> Sample:
    """`sample` trained to say `text` (its k-th choice). The id names the choice, so anything keyed by sample id (the
    vision cache's encoded rows) keeps one entry per target, never a stale one."""
    return dataclasses.replace(sample, id=f"{sample.id}#answer{k}", messages=[*sample.messages[:-1], assistant(text)])


def variants(sample: Sample) -> list[tuple[Sample, float]]:
    """Every target `sample` can be trained on under `sampled` or `weighted`, with its weight; [(sample, 1.0)] when
    it keeps its single target."""
    choices = answer_choices(sample)
    if not choices:
        return [(sample, 1.0)]
    return [(with_target(sample, k, text), w) for k, (text, w) in enumerate(choices)]


def draw(seed: int, step: int, items: list[tuple[int, Sample]]) -> list[tuple[int, Sample]]:
    """`sampled`: the items of one optimizer step, each sample given one answer drawn by agreement. The draw of the
    item at position i is a function of (seed, step, i) alone (numpy's generator seeded with them)."""
    u = np.random.default_rng([seed, step, 3]).random(len(items))
    out = []
    for (j, s), x in zip(items, u, strict=True):
        options = variants(s)
        cumulative = np.cumsum([w for _, w in options])
        k = min(int(np.searchsorted(cumulative, x * cumulative[-1], side="right")), len(options) - 1)
        out.append((j, options[k][0]))
    return out


def expand(items: list[tuple[int, Sample]]) -> tuple[list[tuple[int, Sample]], list[float], list[int]]:
    """`weighted`: one row per distinct answer of each item -> (rows, the row weights, the item index of each row)."""
    rows, weights, owner = [], [], []
    for i, (j, s) in enumerate(items):
        for v, w in variants(s):
            rows.append((j, v))
            weights.append(w)
            owner.append(i)
    return rows, weights, owner


def weighted_tokens(batch, weights=None) -> float:
    """A training Batch's target tokens for the loop's loss denominator: each row's tokens x its weight (a packed
    batch's rows are its `segments`); without weights, `batch.n_target_tokens`."""
    if weights is None:
        return batch.n_target_tokens
    import torch

    labels = batch.inputs["labels"]
    rows = batch.segments if batch.segments is not None else \
        torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)
    counts = torch.bincount(rows[labels != IGNORE_INDEX], minlength=len(weights))
    return float((counts.to(weights.dtype) * weights).sum())
