"""Weighted mixing of training sources (the domain plus replay of general data), with per-source accounting.

    mix = Mixture([("fashion", fashion_samples, 3.0), ("replay", shapes_samples, 1.0)])
    mix.step_items(seed=0, step=12, per_step=32)   # [(source index, Sample), ...] of optimizer step 12

Every optimizer step takes from each source exactly its share of the global batch, not a random draw: source i has
contributed floor(w_i * B * s) samples after s steps (w normalised; the last source takes the remainder), so the
realised mix equals the weights at every step to within one sample, and a step's samples are a function of
(seed, step) alone - a resumed run sees exactly what an uninterrupted one would. Within a source, samples come in
epoch permutations of (seed, source, epoch); a small replay set is simply cycled more often. The step's samples are
then shuffled together, so micro-batches mix sources (text-only and image samples share a batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vlmtune.data.sample import Sample


@dataclass
class Source:
    name: str
    samples: list[Sample]
    weight: float


class Mixture:
    def __init__(self, sources: list[tuple[str, list[Sample], float]]):
        if not sources:
            raise ValueError("a mixture needs at least one source")
        self.sources = [Source(n, s, float(w)) for n, s, w in sources]
        for src in self.sources:
            if not src.samples:
                raise ValueError(f"data source {src.name!r} has no samples")
            if not src.weight > 0:
                raise ValueError(f"data source {src.name!r}: weight must be > 0, got {src.weight}")
        total = sum(s.weight for s in self.sources)
        self.shares = [s.weight / total for s in self.sources]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    def drawn(self, step: int, per_step: int) -> list[int]:
        """How many samples each source has contributed after `step` optimizer steps."""
        n = step * per_step
        counts = [math.floor(share * n + 1e-9) for share in self.shares[:-1]]
        return [*counts, n - sum(counts)]

    def step_items(self, seed: int, step: int, per_step: int) -> list[tuple[int, Sample]]:
        """The (source index, sample) pairs of optimizer step `step`, shuffled across sources."""
        before, after = self.drawn(step, per_step), self.drawn(step + 1, per_step)
        items: list[tuple[int, Sample]] = []
        for j, src in enumerate(self.sources):
            for pos in range(before[j], after[j]):
                epoch, offset = divmod(pos, len(src.samples))
                perm = _permutation(seed, j, epoch, len(src.samples))
                items.append((j, src.samples[int(perm[offset])]))
        order = np.random.default_rng([seed, step, 2]).permutation(len(items))
        return [items[int(i)] for i in order]


_PERMS: dict[tuple[int, int, int, int], object] = {}


def _permutation(seed: int, source: int, epoch: int, n: int):
    """The epoch permutation of one source (memoised: a step asks for the same few again and again)."""
    key = (seed, source, epoch, n)
    if key not in _PERMS:
        if len(_PERMS) > 64:
            _PERMS.clear()
        _PERMS[key] = np.random.default_rng([seed, 1000 + source, epoch]).permutation(n)
    return _PERMS[key]
