"""Retrieval with a generative model: every (image, text) pair of a captioning set scored by the model's likelihood
of the text as the image's caption, giving the rows the retrieval task scores (`eval/tasks/retrieval.py`). The
runner uses it for a task whose `output` is "similarity".

    vlmtune eval --model runs/tiny_fashion_vqa --data data/fashion --split test --task retrieval
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from vlmtune.data.images import load_images
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.eval.tasks.base import Row


def retrieval_rows(predictor, root: Path, samples: list[Sample], progress: bool = False) -> list[Row]:
    """Score every (image, caption) pair of a captioning set with a generative model: the similarity of an image
    and a text is the mean log-probability per token of the text as the image's caption (`Predictor.loglik`),
    prompted with the sample's own question (e.g. "Describe the image."). N images x M texts forward passes: meant
    for test sets of a few hundred images (1,000 x 5,000 pairs is 5 million passes)."""
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
