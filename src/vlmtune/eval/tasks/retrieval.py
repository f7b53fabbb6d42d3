"""Image-text retrieval (COCO / Flickr30k Karpathy test protocol): Recall@1/5/10 image->text (an image is found
when any of its captions ranks in the top K) and text->image, and their sum (RSUM).

Rows: one per image, with its similarity to every text and the ids of its own captions:

    {"id": "img1", "similarity": {"t1": 12.3, "t2": 4.1, ...}, "positives": ["t1", "t5"]}

Every image must be scored against the same set of texts, and every text must be the caption of exactly one image.
A generative VLM gives such scores as the log-likelihood of each caption given each image
(`vlmtune eval --task retrieval`).
"""

from __future__ import annotations

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


def retrieval_rows(predictor, root, samples: list, progress: bool = False) -> list[Row]:
    """Score every (image, caption) pair of a captioning set with a generative model: the similarity of an image
    and a text is the mean log-probability per token of the text as the image's caption (`Predictor.loglik`),
    prompted with the sample's own question (e.g. "Describe the image."). N images x M texts forward passes: meant
    for test sets of a few hundred images (1,000 x 5,000 pairs is 5 million passes)."""
    from tqdm import tqdm

    from vlmtune.data.images import load_images
    from vlmtune.data.sample import Sample, assistant, user

    if any(len(s.images) != 1 for s in samples):
        raise ValueError("retrieval: every sample must have exactly one image")
    uncaptioned = [s.id for s in samples if not (s.references or s.has_target)]
    if uncaptioned:  # a hidden-label split: nothing to retrieve
        raise ValueError(f"retrieval: {len(uncaptioned)} sample(s) have no caption (references or an answer) to "
                         f"retrieve, e.g. {uncaptioned[:3]}; every image is scored against the captions of the set")
    texts = [(f"{s.id}#{k}", t) for s in samples for k, t in enumerate(s.references or [s.target])]
    rows = []
    for s in tqdm(samples, desc="retrieval", disable=not progress):
        image = load_images(root, s)
        pairs = [Sample(id=tid, messages=[user(s.question), assistant(text)], images=s.images) for tid, text in texts]
        scores = predictor.loglik(pairs, [image] * len(pairs))
        own = [tid for tid, _ in texts if tid.rsplit("#", 1)[0] == s.id]
        similarity = dict(zip([t for t, _ in texts], scores, strict=True))
        rows.append({"id": s.id, "images": s.images, "similarity": similarity, "positives": own,
                     "answers": [text for tid, text in texts if tid in own]})
    return rows


def corpus(rows: list[Row], options: dict) -> tuple[dict, dict]:
    from vlmtune.eval.metrics.retrieval import recall_at_k

    sim, image_of_text, _ = similarity_matrix(rows)
    return recall_at_k(sim, image_of_text, ks=tuple(options.get("ks", (1, 5, 10)))), {}


TASK = Task(
    name="retrieval",
    description="image-text retrieval, Recall@K both directions (Karpathy-split COCO / Flickr30k protocol)",
    metrics=("rsum", "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"),
    primary="rsum",
    corpus=corpus,
)
