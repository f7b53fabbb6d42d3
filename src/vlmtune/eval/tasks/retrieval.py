"""Image-text retrieval (COCO / Flickr30k Karpathy test protocol): Recall@1/5/10 image->text (an image is found
when any of its captions ranks in the top K) and text->image, and their sum (RSUM).

Rows: one per image, with its similarity to every text and the ids of its own captions:

    {"id": "img1", "similarity": {"t1": 12.3, "t2": 4.1, ...}, "positives": ["t1", "t5"]}

Every image must be scored against the same set of texts, and every text must be the caption of exactly one image.
A generative VLM gives such scores as the log-likelihood of each caption given each image
(`vlmtune eval --task retrieval`; the runner makes those rows with `eval/ranking.py`, as the task's `output` says).
"""

from __future__ import annotations

from vlmtune.eval.metrics.retrieval import recall_at_k
from vlmtune.eval.tasks.base import Row, Task


def similarity_matrix(rows: list[Row]) -> tuple[list[list[float]], list[int], list[str]]:
    """(similarity[image][text], image index of each text, text ids) from retrieval rows, checked."""
    texts = list(rows[0]["similarity"]) if rows else []
    owner: dict[str, int] = {}
    for i, r in enumerate(rows):
        if set(r["similarity"]) != set(texts):
            raise ValueError(f"row {r['id']!r}: scored against {len(r['similarity'])} texts, the first row against "
                             f"{len(texts)}; every image must be scored against the same texts")
        for t in r.get("positives") or []:
            if t in owner:
                raise ValueError(f"text {t!r} is a caption of both {rows[owner[t]]['id']!r} and {r['id']!r}")
            if t not in r["similarity"]:
                raise ValueError(f"row {r['id']!r}: its caption {t!r} has no similarity score")
            owner[t] = i
    missing = [t for t in texts if t not in owner]
    if missing:
        raise ValueError(f"{len(missing)} text(s) belong to no image (e.g. {missing[:3]}); list each in the "
                         "'positives' of its image")
    return [[float(r["similarity"][t]) for t in texts] for r in rows], [owner[t] for t in texts], texts


def corpus(rows: list[Row], options: dict) -> tuple[dict, dict]:
    sim, image_of_text, _ = similarity_matrix(rows)
    return recall_at_k(sim, image_of_text, ks=tuple(options.get("ks", (1, 5, 10)))), {}


TASK = Task(
    name="retrieval",
    description="image-text retrieval, Recall@K both directions (Karpathy-split COCO / Flickr30k protocol)",
    metrics=("rsum", "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"),
    primary="rsum",
    corpus=corpus,
    output="similarity",
)
