"""The training loss: summed token cross-entropy on the answer tokens, per sample, the same way everywhere.

`forward_losses` is the one forward pass that gives a loss: the training loop, `Predictor.loglik` (answer scores),
the contract test and the benchmarks call it. It returns per-sample (sum of token losses, number of target tokens)
rather than a mean, so the loop can average over a whole global batch and log the same sums per data source. With
`logits_to_keep` (`loss_positions`) the LM head runs only where a target token is predicted.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from vlmtune.models.family import base_model
from vlmtune.models.labels import IGNORE_INDEX

if TYPE_CHECKING:
    from vlmtune.models.family import ModelFamily


def accepts_logits_to_keep(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (most transformers LMs and VLMs; a PEFT wrapper passes it
    on to the model it wraps)."""
    return "logits_to_keep" in inspect.signature(base_model(model).forward).parameters


def logit_prefix_of(family: ModelFamily, model) -> int:
    """`family.logit_prefix` of a (possibly PEFT- or Accelerate-wrapped) model; 0 for most families."""
    if family.logit_prefix is None:
        return 0
    return family.logit_prefix(base_model(model))


def forward_losses(model, family: ModelFamily, inputs: dict, labels, keep_logits: bool, prefix: int = 0,
                   segments=None):
    """One forward pass the training loop's way -> per-sample (loss sums, target counts), see `token_losses`.

    With `keep_logits` the model computes logits only where a target is predicted (`loss_positions`). An
    encoder-decoder model whose inputs carry no decoder_input_ids gets the labels too: it builds its decoder inputs
    from them (and computes its own loss, which is not used). `segments` (a packed batch's) make the sums per sample
    rather than per row."""
    per_token, group, n = forward_token_losses(model, family, inputs, labels, keep_logits, prefix, segments)
    return per_token.new_zeros(n).index_add(0, group, per_token), torch_bincount(group, n)


def forward_token_losses(model, family: ModelFamily, inputs: dict, labels, keep_logits: bool, prefix: int = 0,
                         segments=None):
    """`forward_losses` before the sums: (each target token's cross-entropy, the sample it belongs to, the number
    of samples), the target tokens in row-major order (GRPO weighs each token: train/grpo.py)."""
    kept = loss_positions(labels, family.shift_labels, prefix) if keep_logits else None
    extra = {"logits_to_keep": kept} if kept is not None else {}
    if not family.shift_labels and "decoder_input_ids" not in inputs:
        extra["labels"] = labels
    logits = model(**inputs, **extra).logits
    return per_token_losses(logits, labels, family.shift_labels, kept, prefix, segments)


def torch_bincount(group, n: int):
    import torch

    return torch.bincount(group, minlength=n)


def loss_positions(labels, shift: bool = True, prefix: int = 0):
    """(batch, seq) bool: the positions whose logits predict a target token (for a causal LM: the one before it).

    Passed to the model as `logits_to_keep`, the LM head and the softmax run at these positions only, not over the
    whole sequence (image tokens included): the same loss, for a fraction of the logits' time and memory."""
    import torch

    targets = labels != IGNORE_INDEX
    keep = torch.zeros((labels.shape[0], prefix + labels.shape[1]), dtype=torch.bool, device=labels.device)
    if shift:
        keep[:, prefix : prefix + labels.shape[1] - 1] = targets[:, 1:]
    else:
        keep[:, prefix:] = targets
    return keep


def token_losses(logits, labels, shift: bool = True, kept=None, prefix: int = 0, segments=None):
    """Per-sample (sum of token cross-entropies, number of target tokens) over the label positions != IGNORE_INDEX.

    `logits` are (batch, seq, vocab), or with `kept` (the `loss_positions` mask) the (n_kept, vocab) rows the model
    computed at those positions only; the first `prefix` logit positions (`ModelFamily.logit_prefix`) are not text.
    `segments` (same shape as `labels`, a packed batch's sample index per position) sum per sample instead of per
    row. The training loop backpropagates sum/total over the whole global batch, and logs the same sums per data source.
    """
    per_token, group, n = per_token_losses(logits, labels, shift, kept, prefix, segments)
    return per_token.new_zeros(n).index_add(0, group, per_token), torch_bincount(group, n)


def per_token_losses(logits, labels, shift: bool = True, kept=None, prefix: int = 0, segments=None):
    """`token_losses` per target token: (cross-entropies, the sample index of each, number of samples)."""
    import torch

    if segments is None:  # one sample per row
        n = labels.shape[0]
        segments = torch.arange(n, device=labels.device)[:, None].expand_as(labels)
    else:  # a packed batch: samples back to back in a row
        n = int(segments.max()) + 1
    if shift:  # a target belongs to the sample of its label position
        labels, segments = labels[:, 1:], segments[:, 1:]
    if kept is not None:
        kept = kept[:, prefix:][:, : labels.shape[1]]
        per_token = torch.nn.functional.cross_entropy(logits.float(), labels[kept], reduction="none")
        group = segments[kept]
    else:
        logits = logits[:, prefix:][:, : labels.shape[1]]
        mask = labels != IGNORE_INDEX
        per_token = torch.nn.functional.cross_entropy(logits.float()[mask], labels[mask], reduction="none")
        group = segments[mask]
    return per_token, group, n
