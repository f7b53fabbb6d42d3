"""The optimizer and learning-rate schedule of every training in vlmtune: AdamW with weight decay on matrices only,
and a linear warmup followed by a cosine, linear or constant schedule. `train.build.build_optimizer` calls them with
the run config's values, `retrieval.train` with the CLIP paper's; each caller passes its own hyper-parameters.

    optimizer = adamw(model, lr=2e-4, weight_decay=0.1, betas=(0.9, 0.95))
    scheduler = lr_schedule(optimizer, warmup_steps=10, total_steps=1000, schedule="cosine")   # step() once per step
"""

from __future__ import annotations

import math
from typing import Literal


def adamw(model, lr: float, weight_decay: float, betas: tuple[float, float], eps: float = 1e-8):
    """AdamW over the parameters that require a gradient, in two groups: those with 2 or more dimensions (weight
    matrices, embeddings) decay, those with fewer (biases, norms, a learnable temperature or bias) do not, as
    open_clip and nanoGPT do. The groups keep `model.parameters()` order, so a saved optimizer state loads back."""
    import torch

    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def lr_schedule(optimizer, warmup_steps: int, total_steps: int,
                schedule: Literal["cosine", "linear", "constant"] = "cosine", min_lr_ratio: float = 0.0):
    """A LambdaLR: the peak lr times `(step + 1) / warmup_steps` for the first `warmup_steps` steps (so step 0
    already trains, at 1/warmup of the peak, and the peak is reached at step `warmup_steps - 1`), then from the peak
    down to `min_lr_ratio` of it at `total_steps` along a half cosine or a straight line, or held (constant)."""
    import torch

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_lr_ratio + (1 - min_lr_ratio) * shape

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
