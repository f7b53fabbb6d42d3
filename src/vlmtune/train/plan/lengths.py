"""The sequence lengths a run will train on, measured with the code training uses: each sample goes through the
family's `encode` (chat template, the real processor at each image's real size: Qwen2-VL's dynamic resolution,
SmolVLM/Idefics3's tiling, LLaVA's fixed size), so image tokens, text tokens and trained (answer) tokens are exact.

Without data a stated assumption stands in for it: one ASSUMED_IMAGE image and a short question and answer, encoded
the same way. Over a large split, a seeded random subset of `max_samples` is measured (the output says so).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from vlmtune.config import RunCfg
from vlmtune.data.dataset import load_split
from vlmtune.data.resize import resized_size
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.video import encode_with_videos, sample_inputs
from vlmtune.models import ModelFamily
from vlmtune.models.labels import IGNORE_INDEX

ASSUMED_IMAGE = (448, 448)
ASSUMED_QUESTION = "What is shown in this picture? Answer with a short phrase, naming the main object and its colour."
ASSUMED_ANSWER = "A red cotton shirt with long sleeves."
MAX_SAMPLES = 1000
CHUNK = 16
"""Samples encoded per call (memory stays small on 1,000 real-size images)."""


@dataclass
class Lengths:
    """Per-sample lengths and their summary. `tokens`: positions of the sample (image tokens included); `targets`:
    trained tokens; `image_tokens`: positions its images take; `patches`: vision-tower positions (before any merge)."""

    tokens: list[int]
    targets: list[int]
    image_tokens: list[int]
    patches: list[int]
    source: str
    """How they were obtained: the data's split and how many samples, or the assumption."""
    n_split: int = 0
    """Samples in the split (the epoch's size); 0 without data."""
    largest_image: int = 0
    """Pixels of the largest measured image after the processor's resize (what `model.max_pixels` limits)."""

    def stats(self, values: list[int]) -> dict:
        v = sorted(values)
        pick = lambda q: v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))]  # noqa: E731
        return {"p50": pick(0.5), "p95": pick(0.95), "max": v[-1], "mean": sum(v) / len(v)}

    def summary(self) -> dict:
        return {"source": self.source, "measured": len(self.tokens), "split_size": self.n_split,
                "largest_image_pixels": self.largest_image,
                **{k: self.stats(getattr(self, k)) for k in ("tokens", "targets", "image_tokens", "patches")}}

    def to_dict(self) -> dict:
        return asdict(self)


def vision_patches(pixel_values, patch_size: int) -> int:
    """Vision-tower positions of one encoded sample: Qwen-VL flattens its patches ([patches, C*T*p*p]); the others
    give images or tiles ([..., C, H, W]), each (H/p) x (W/p) patches."""
    if pixel_values is None:
        return 0
    if pixel_values.ndim == 2:
        return int(pixel_values.shape[0])
    n = 1
    for d in pixel_values.shape[:-3]:
        n *= int(d)
    return n * (int(pixel_values.shape[-2]) // patch_size) * (int(pixel_values.shape[-1]) // patch_size)


def _measure(family: ModelFamily, processor, samples: list[Sample], images: list[list], patch_size: int,
             videos: list[list] | None = None):
    """(tokens, targets, patches) of each sample, encoded one by one (no padding) in train mode."""
    batch = encode_with_videos(family, processor, samples, images, videos, "train", 1 << 30)
    inputs = batch.inputs
    if len(samples) != 1:
        raise AssertionError("encode one sample at a time")
    labels = inputs["labels"]
    mask = inputs.get("attention_mask")
    tokens = int(mask.sum()) if mask is not None else int(labels.shape[-1])
    return tokens, int((labels != IGNORE_INDEX).sum()), vision_patches(inputs.get("pixel_values"), patch_size)


def measure_lengths(cfg: RunCfg, family: ModelFamily, processor, patch_size: int,
                    data: str | Path | list[tuple[Path, Sample]] | None, max_samples: int = MAX_SAMPLES,
                    seed: int = 0) -> Lengths:
    """Lengths of the training split of `data` (a vlmtune dataset directory), of the samples already read (a list of
    (image root, sample): `vlmtune train`'s mixture), or of the stated assumption."""
    if data is None:
        img = Image.new("RGB", ASSUMED_IMAGE, (127, 127, 127))
        sample = Sample(id="assumed", messages=[user(ASSUMED_QUESTION), assistant(ASSUMED_ANSWER)], images=["x"])
        tokens, targets, patches = _measure(family, processor, [sample], [[img]], patch_size)
        n_img = family.image_tokens(processor, *ASSUMED_IMAGE)
        return Lengths([tokens], [targets], [n_img], [patches],
                       f"assumed: one {ASSUMED_IMAGE[0]}x{ASSUMED_IMAGE[1]} image, a {len(ASSUMED_QUESTION.split())}"
                       f"-word question and a {len(ASSUMED_ANSWER.split())}-word answer (no --data)",
                       largest_image=_pixels(processor, *ASSUMED_IMAGE))
    if isinstance(data, list):
        pairs, what = data, "the run's training samples"
    else:
        root = Path(data)
        if not root.is_dir():
            raise ValueError(f"--data {str(root)!r}: no such dataset directory")
        pairs, what = [(root, s) for s in load_split(root, "train", skip_bad=True)], f"{root} train split"
    n_split = len(pairs)
    if n_split > max_samples:
        pairs = random.Random(seed).sample(pairs, max_samples)
        source = f"{what}: a seeded random {max_samples} of its {n_split} samples"
    else:
        source = f"{what}: all {n_split} samples"
    out = Lengths([], [], [], [], source, n_split)
    for k in range(0, len(pairs), CHUNK):
        chunk = pairs[k:k + CHUNK]
        # a video as data.video samples it: its frames as images, or a native family's Videos
        inputs = [sample_inputs(root, s, family, policy=cfg.data.video) for root, s in chunk]
        for sample, imgs, vids in inputs:
            for s in sample.pair() if sample.is_pair else (sample,):  # a preference pair: both answers' rows
                tokens, targets, patches = _measure(family, processor, [s], [imgs], patch_size, [vids])
                out.tokens.append(tokens)
                out.targets.append(targets)
                out.patches.append(patches)
            out.image_tokens.append(sum(family.image_tokens(processor, *im.size) for im in imgs)
                                    + sum(family.video_tokens(processor, v) for v in vids))
            out.largest_image = max([out.largest_image, *(_pixels(processor, *im.size) for im in imgs)])
    return out


def _pixels(processor, width: int, height: int) -> int:
    ip = getattr(processor, "image_processor", None)
    w, h = resized_size(width, height, ip) if ip is not None else (width, height)
    return w * h


def padding(lengths: list[int], micro_batch: int, accum: int, group_by_length: bool, packing: bool,
            seed: int = 0) -> dict:
    """Padded positions under the recipe's batching, simulated on the measured lengths: a seeded order, each
    process's share of a step sorted by length when `group_by_length` (and accum > 1), micro-batches padded to their
    longest sample, or packed back to back in one row (`packing`: no padding; the row is the sum). Returns the
    padded fraction and the longest micro-batch row."""
    order = list(lengths)
    random.Random(seed).shuffle(order)
    step = micro_batch * accum
    real = padded = 0
    longest_row = 0
    for k in range(0, len(order), step):
        share = order[k:k + step]
        if group_by_length and accum > 1:
            share = sorted(share)
        for j in range(0, len(share), micro_batch):
            mb = share[j:j + micro_batch]
            real += sum(mb)
            if packing:
                padded += sum(mb)
                longest_row = max(longest_row, sum(mb))
            else:
                padded += max(mb) * len(mb)
                longest_row = max(longest_row, max(mb))
    return {"padding_fraction": 1 - real / max(1, padded), "longest_row": longest_row,
            "mode": "packed" if packing else ("grouped by length" if group_by_length and accum > 1 else "padded")}
