"""Image-text retrieval Recall@K with several captions per image (COCO / Flickr30k Karpathy splits).

Protocol (CLIP, ALBEF, BLIP; reference implementation: salesforce/ALBEF ``Retrieval.py``
``itm_eval``, same in salesforce/BLIP ``train_retrieval.py``):

* image -> text: the rank of an image is the best (smallest) rank among ALL of its captions when
  every text is sorted by similarity to that image; the image counts as retrieved at K if that
  rank is < K, i.e. if ANY of its captions is in the top K.
* text -> image: the rank of a text is the rank of its own image when every image is sorted by
  similarity to that text; retrieved at K if that rank is < K.
* ``R@K`` is the percentage (0-100) of queries retrieved at K; ``rsum`` is the sum of all the
  reported recalls, i.e. with ``ks=(1, 5, 10)`` the usual sum of six numbers (max 600).

Ties: items are ranked as ``np.argsort(-scores, kind="stable")`` ranks them, so among equal
scores the lower index ranks first. (ALBEF/BLIP use ``np.argsort(scores)[::-1]`` with the default,
unstable quicksort, which tends to put the HIGHER index first among ties; identical scores are
rare with float embeddings, but a constant or quantised similarity matrix differs between the two.)
Ranks are counted, not sorted (items scoring strictly higher, plus equal ones at a lower index), in
the input's own dtype (no copy, no float conversion); memory stays bounded by working in chunks of
queries. NaN scores raise ``ValueError``.

An image without any caption cannot be retrieved by image -> text; ALBEF's loop would silently count
it as a miss, here it raises ``ValueError``. Images without captions are otherwise fine as extra
distractors for text -> image, but the i2t recall needs every image to own a caption.

numpy only; no torch import (a CPU torch tensor is accepted through ``np.asarray``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["recall_at_k"]


_CHUNK_ELEMENTS = 4_000_000  # bounds the [chunk, N] comparison matrices (COCO 5k: 25k texts)


def _rank_of(rows: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Rank (0-based) of item ``own[q]`` in row ``q`` under ``np.argsort(-row, kind="stable")``.

    Counted instead of sorted: the items strictly above it, plus the equal ones at a lower index.
    """
    own_score = rows[np.arange(len(rows)), own][:, None]  # [C, 1]
    above = np.count_nonzero(rows > own_score, axis=1)
    ties_before = np.count_nonzero((rows == own_score) & (np.arange(rows.shape[1])[None, :] < own[:, None]), axis=1)
    return above + ties_before


def recall_at_k(
    similarity: Sequence[Sequence[float]] | np.ndarray,
    image_of_text: Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@K in percent for both retrieval directions, plus ``rsum``.

    ``similarity[i][t]`` is the score of image ``i`` with text ``t`` (shape ``[n_images, n_texts]``);
    ``image_of_text[t]`` is the index of the image that text ``t`` describes.

    Returns ``{"i2t_R@k" for k in ks, "t2i_R@k" for k in ks, "rsum"}`` (in that order), each in
    [0, 100]; ``rsum`` is the sum of the ``2 * len(ks)`` recalls.
    """
    scores = np.asarray(similarity)
    if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)):
        raise ValueError(f"similarity must hold real numbers, got dtype {scores.dtype}")
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"similarity must be a non-empty [n_images, n_texts] matrix, got shape {scores.shape}")
    if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
        raise ValueError("similarity contains NaN")
    n_images, n_texts = scores.shape
    owner = np.asarray(image_of_text)
    if owner.shape != (n_texts,):
        raise ValueError(f"image_of_text must have one entry per text ({n_texts}), got shape {owner.shape}")
    if not np.issubdtype(owner.dtype, np.integer) or owner.min() < 0 or owner.max() >= n_images:
        raise ValueError(f"image_of_text must hold image indices in [0, {n_images})")
    captionless = np.setdiff1d(np.arange(n_images), owner)
    if captionless.size:
        raise ValueError(f"images without a caption cannot be scored for image->text: {captionless[:10].tolist()}")
    if not ks or any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")

    texts = np.arange(n_texts)
    chunk = max(1, _CHUNK_ELEMENTS // max(n_images, n_texts))
    caption_rank = np.empty(n_texts, dtype=np.int64)  # rank of text t among all texts, for its own image
    t2i_rank = np.empty(n_texts, dtype=np.int64)  # rank of t's own image among all images, for text t
    for start in range(0, n_texts, chunk):
        part = texts[start : start + chunk]
        caption_rank[part] = _rank_of(scores[owner[part]], part)  # rows [C, T]
        t2i_rank[part] = _rank_of(scores[:, start : start + chunk].T, owner[part])  # rows [C, I]
    # image -> text: the best rank among the image's own captions.
    i2t_rank = np.full(n_images, n_texts, dtype=np.int64)
    np.minimum.at(i2t_rank, owner, caption_rank)

    out: dict[str, float] = {}
    for name, ranks in (("i2t", i2t_rank), ("t2i", t2i_rank)):
        for k in ks:
            out[f"{name}_R@{int(k)}"] = 100.0 * float(np.count_nonzero(ranks < k)) / len(ranks)
    out["rsum"] = sum(out.values())
    return out
