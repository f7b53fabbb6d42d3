"""Preference optimisation (`train.method: dpo`): the DPO loss over answer log-probabilities, and preference pairs
as the batches every family already encodes.

DPO (Rafailov et al., 2023) trains a policy pi on pairs (prompt x, chosen y_w, rejected y_l) against a frozen
reference pi_ref (the model before DPO: the adapter-disabled base for LoRA):

    loss = -log sigmoid(beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])

where log pi(y|x) is the SUM of the answer tokens' log-probabilities, over exactly the tokens SFT trains (the answer
and the real stop token: `ModelFamily.encode`'s labels), so DPO and SFT agree on what "the answer" is. With
`label_smoothing` eps (conservative DPO, Mitchell 2023) the loss is (1 - eps) * that + eps * the same with the pair
swapped. beta * (log pi - log pi_ref) is each answer's implicit reward; the reported statistics are those of TRL's
DPOTrainer: rewards/chosen, rewards/rejected, rewards/margin, rewards/accuracy (the share of pairs whose chosen
answer has the higher implicit reward), logps/chosen, logps/rejected.

A pair is encoded as two ordinary samples (`Sample.pair`) in ONE call of the family's `encode`, chosen rows first:
whatever extra inputs the family builds (Qwen's image_grid_thw, Gemma's token_type_ids, LLaVA-NeXT's image_sizes,
pixel masks) are built for both answers by the code that builds them for SFT, so no extra input can be dropped from
one side (the failure other tools' DPO recipes had).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmtune.data.sample import Sample
from vlmtune.io import atomic_write_text
from vlmtune.models.family import Batch, input_dtype
from vlmtune.models.loss import accepts_logits_to_keep, forward_losses, logit_prefix_of
from vlmtune.train.trainable import train_autocast

REFERENCE = "dpo_reference.json"
"""In the run directory: every training pair's reference log-probabilities (chosen, rejected), computed before step
0 by the model as it was loaded; a resumed run reads them instead of the base model it no longer has."""
STATS = ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "logps/chosen", "logps/rejected")
"""The per-pair statistics the loop sums over a log window (their means are logged, with rewards/margin)."""


def pair_samples(samples: list[Sample]) -> list[Sample]:
    """Preference pairs -> their chosen samples then their rejected samples (2n, in that order): what `encode_pairs`
    encodes and `split_pairs` splits back."""
    pairs = [s.pair() for s in samples]
    return [c for c, _ in pairs] + [r for _, r in pairs]


def encode_pairs(family, processor, samples: list[Sample], images: list, max_length: int, videos=None) -> Batch:
    """One batch of 2n rows for n preference pairs (chosen rows, then rejected rows, each pair's images given to
    both), encoded by the family's own `encode` in training mode."""
    rows = pair_samples(samples)
    kwargs = {"videos": list(videos) * 2} if videos is not None else {}
    return family.encode(processor, rows, list(images) * 2, "train", max_length, **kwargs)


def answer_logps(model, family, batch: Batch, keep_logits: bool = True, prefix: int = 0):
    """Per row, (sum of the answer tokens' log-probabilities, number of answer tokens): SFT's per-sample loss sums
    with the sign turned (`forward_losses`, the same masking and the same logits)."""
    inputs = {k: v for k, v in batch.inputs.items() if k != "labels"}
    sums, counts = forward_losses(model, family, inputs, batch.inputs["labels"], keep_logits, prefix)
    return -sums, counts


def split_pairs(values):
    """A (2n, ...) tensor of `encode_pairs`' rows -> (chosen rows, rejected rows)."""
    n = values.shape[0] // 2
    return values[:n], values[n:]


@dataclass
class DpoOutput:
    losses: object
    """(n,) per-pair losses (the step's loss is their mean over the global batch)."""
    chosen_rewards: object
    """(n,) beta * (log pi(chosen) - log pi_ref(chosen)), detached."""
    rejected_rewards: object

    def stats(self, chosen_logps, rejected_logps) -> dict[str, float]:
        """The logged statistics (means over the pairs): TRL's names."""
        margin = self.chosen_rewards - self.rejected_rewards
        return {"rewards/chosen": self.chosen_rewards.mean().item(),
                "rewards/rejected": self.rejected_rewards.mean().item(),
                "rewards/margin": margin.mean().item(),
                "rewards/accuracy": (margin > 0).float().mean().item(),
                "logps/chosen": chosen_logps.detach().mean().item(),
                "logps/rejected": rejected_logps.detach().mean().item()}


def pair_key(source: int, sample_id: str) -> str:
    """A training pair's key in the reference file: its source's index in the mixture and its id."""
    return f"{source}/{sample_id}"


def reference_logps(state, encode, resumed: bool) -> dict[str, list[float]]:
    """pair key -> [chosen, rejected] summed answer log-probabilities of the reference model: read from the run's
    REFERENCE file, else computed now, before any step, by `state.model` as loaded (under LoRA the fresh adapter is
    zero, so it IS the base model), in eval mode and under the training autocast, `micro_batch_size` pairs at a time
    (`encode(items)` encodes (source, sample) items as the loop's pair batches). Every process computes them (a
    sharded model's forward is collective) and all use what rank 0 wrote, so a resumed run's are the very same.
    `resumed`: the run has checkpoints, so the model is no longer the reference: the file must be there."""
    import torch

    acc, path = state.accelerator, Path(state.run_dir) / REFERENCE
    if resumed and not path.is_file():
        raise ValueError(f"{state.run_dir}: a DPO run with checkpoints but no {REFERENCE}: its reference model is "
                         "gone. Start the run afresh (another name or out_dir)")
    items = [(j, s) for j, src in enumerate(state.mixture.sources) for s in src.samples]
    wanted = {pair_key(j, s.id) for j, s in items}
    if path.is_file():
        stored = json.loads(path.read_text())["logps"]
        missing = sorted(wanted - set(stored))
        if not missing:
            return stored
        if resumed:
            raise ValueError(f"{path}: no reference log-probabilities for {len(missing)} training pair(s) "
                             f"({missing[0]}, ...): the data changed since the run started")
        acc.print(f"{path}: {len(missing)} pair(s) without reference log-probabilities ({missing[0]}, ...): "
                  "computing them all again", file=sys.stderr)
    model, m = state.model, state.cfg.train.micro_batch_size
    unwrapped = acc.unwrap_model(model)
    dtype, keep_logits, prefix = input_dtype(unwrapped), accepts_logits_to_keep(unwrapped), \
        logit_prefix_of(state.family, unwrapped)
    was_training = model.training
    model.eval()  # the reference has no dropout
    out: dict[str, list[float]] = {}
    with torch.no_grad():
        for k in range(0, len(items), m):
            chunk = items[k : k + m]
            batch = encode(chunk).to(acc.device, dtype)
            with train_autocast(acc):
                logps, _ = answer_logps(model, state.family, batch, keep_logits, prefix)
            chosen, rejected = split_pairs(logps.float().cpu())
            for (j, s), c, r in zip(chunk, chosen.tolist(), rejected.tolist(), strict=True):
                out[pair_key(j, s.id)] = [c, r]
    model.train(was_training)
    if acc.is_main_process:
        atomic_write_text(path, json.dumps({"logps": out}) + "\n")
    acc.wait_for_everyone()
    acc.print(f"DPO reference: answer log-probabilities of {len(out)} pair(s) computed before training, kept in "
              f"{path}", file=sys.stderr)
    return json.loads(path.read_text())["logps"]


def pair_losses(logps, chunk: list[tuple[int, Any]], reference: dict[str, list[float]], beta: float,
                label_smoothing: float):
    """A micro-batch of pairs' summed answer log-probabilities (2n rows, `encode_pairs`' order) -> (per-pair DPO
    losses, per-pair statistics (n, len(STATS)), detached)."""
    import torch

    chosen, rejected = split_pairs(logps)
    ref = torch.tensor([reference[pair_key(j, s.id)] for j, s in chunk], dtype=torch.float32, device=logps.device)
    out = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], beta, label_smoothing)
    stats = torch.stack([out.chosen_rewards, out.rejected_rewards,
                         (out.chosen_rewards > out.rejected_rewards).float(),
                         chosen.detach().float(), rejected.detach().float()], dim=1)
    return out.losses, stats


def stats_row(window) -> dict[str, float]:
    """A log window's summed per-pair statistics (len(STATS) + 1: the pair count last) -> their means."""
    n = max(1.0, float(window[-1]))
    row = {name: float(window[i]) / n for i, name in enumerate(STATS)}
    row["rewards/margin"] = row["rewards/chosen"] - row["rewards/rejected"]
    return row


def dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float = 0.1,
             label_smoothing: float = 0.0) -> DpoOutput:
    """The DPO loss per pair from summed answer log-probabilities (policy and reference, chosen and rejected),
    computed in float32."""
    import torch.nn.functional as F

    if beta <= 0:
        raise ValueError(f"DPO beta must be positive, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"DPO label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen = chosen_logps.float() - ref_chosen_logps.float().detach()
    rejected = rejected_logps.float() - ref_rejected_logps.float().detach()
    logits = beta * (chosen - rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return DpoOutput(losses, beta * chosen.detach(), beta * rejected.detach())
