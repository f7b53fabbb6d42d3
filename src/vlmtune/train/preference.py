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

from dataclasses import dataclass

from vlmtune.data.sample import Sample
from vlmtune.models.family import Batch
from vlmtune.models.loss import forward_losses


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
