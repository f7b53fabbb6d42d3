"""Image <-> text retrieval evaluation of a dual encoder on a vlmtune dataset (the COCO / Flickr30k protocol).

    vlmtune retrieve eval --model runs/fashion-clip --data data/fashion --split test

The gallery is every caption sample of the split: each distinct image once, each of its reference captions one text
(a Flickr30k image with 5 captions gives 1 image and 5 texts, an image in two samples still counts once). Every image
is scored against every text by the cosine of their embeddings, and `vlmtune.eval.metrics.retrieval.recall_at_k`
computes Recall@1/5/10 both ways with the standard protocol (ALBEF's `itm_eval`): text -> image, a caption is found
at K if ITS image is among the K best images; image -> text, an image is found at K if ANY of its captions is among
the K best texts. Samples of other tasks (VQA questions) are left out and counted.

Mean and median rank (1-based, the VSE++ / SCAN convention `floor(median(ranks)) + 1`) come from the same function:
asked for every K, Recall@K is the distribution of the ranks, so the ranks are recovered from it exactly instead of
being computed a second way. This costs one count per K (n_texts x (n_images + n_texts) comparisons in all: about a
second for COCO's 5k images x 25k captions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlmtune.data.images import resolve_inside
from vlmtune.data.store import read_samples
from vlmtune.eval.metrics.retrieval import recall_at_k

KS = (1, 5, 10)


@dataclass
class Gallery:
    """Images and captions of one split: `texts[t]` describes `images[image_of_text[t]]`."""

    root: Path
    images: list[str] = field(default_factory=list)
    """Image paths relative to `root`."""
    texts: list[str] = field(default_factory=list)
    image_of_text: list[int] = field(default_factory=list)
    skipped: int = 0
    """Samples of the split that are not single-image caption samples."""

    def paths(self) -> list[Path]:
        return [resolve_inside(self.root, rel) for rel in self.images]

    def captions_of(self) -> list[list[str]]:
        """Per image, its captions."""
        out: list[list[str]] = [[] for _ in self.images]
        for text, owner in zip(self.texts, self.image_of_text, strict=True):
            out[owner].append(text)
        return out


def load_gallery(root: str | Path, split: str | None) -> Gallery:
    """The caption samples of `split` as a Gallery. Images are checked when embedded (an `ImageError` names them)."""
    root = Path(root)
    samples, _ = read_samples(root, split, check_images=False)
    gallery = Gallery(root)
    index: dict[str, int] = {}
    for s in samples:
        if s.task != "caption" or len(s.images) != 1:
            gallery.skipped += 1
            continue
        owner = index.setdefault(s.images[0], len(index))
        if owner == len(gallery.images):
            gallery.images.append(s.images[0])
        for text in s.references or [s.target]:
            gallery.texts.append(text)
            gallery.image_of_text.append(owner)
    if not gallery.texts:
        raise ValueError(f"{root}: no caption samples in split {split!r} ({gallery.skipped} other sample(s)); "
                         "retrieval needs images with captions (e.g. vlmtune data synth fashion --caption-fraction 1)")
    return gallery


def rank_stats(similarity: np.ndarray, image_of_text: list[int]) -> dict[str, float]:
    """Mean and median 1-based rank both ways, from `recall_at_k` asked for every K (see the module docstring)."""
    n_images, n_texts = similarity.shape
    ks = range(1, max(n_images, n_texts) + 1)
    cdf = recall_at_k(similarity, image_of_text, ks=ks)
    out = {}
    for name, n in (("i2t", n_images), ("t2i", n_texts)):
        found = np.array([0] + [round(cdf[f"{name}_R@{k}"] * n / 100.0) for k in ks])  # queries with rank < k
        ranks = np.repeat(np.arange(len(ks)), np.diff(found))  # the 0-based ranks, sorted
        out[f"{name}_mean_rank"] = float(ranks.mean()) + 1.0
        out[f"{name}_median_rank"] = float(np.floor(np.median(ranks))) + 1.0
    return out


def score(image_emb: np.ndarray, text_emb: np.ndarray, image_of_text: list[int]) -> dict[str, float]:
    """Recall@1/5/10 both ways, rsum, mean and median ranks, from normalised embeddings."""
    sim = image_emb @ text_emb.T  # [n_images, n_texts] cosine
    return {**recall_at_k(sim, image_of_text, KS), **rank_stats(sim, image_of_text)}


def evaluate(encoder, gallery: Gallery, batch_size: int = 64) -> dict[str, float]:
    """Embed the gallery with `encoder` (a DualEncoder) and score it; counts included."""
    image_emb = encoder.embed_images(gallery.paths(), batch_size)
    text_emb = encoder.embed_texts(gallery.texts, batch_size)
    return {**score(image_emb, text_emb, gallery.image_of_text), "images": len(gallery.images),
            "texts": len(gallery.texts), "skipped_samples": gallery.skipped}
