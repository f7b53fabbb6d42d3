"""Retrieval evaluation: the gallery of a split (several captions per image) and the rank statistics."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.store import write_dataset
from vlmtune.retrieval.evaluate import load_gallery, rank_stats, score


def _brute_ranks(sim: np.ndarray, owner: list[int]) -> tuple[list[int], list[int]]:
    i2t = [min(list(np.argsort(-sim[i], kind="stable")).index(t) for t in range(sim.shape[1]) if owner[t] == i)
           for i in range(sim.shape[0])]
    t2i = [list(np.argsort(-sim[:, t], kind="stable")).index(owner[t]) for t in range(sim.shape[1])]
    return i2t, t2i


@pytest.mark.parametrize("seed", range(4))
def test_rank_stats_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_images = int(rng.integers(2, 9))
    owner = [i % n_images for i in range(n_images * 3)]  # 3 captions per image, as in a small Flickr30k
    sim = rng.standard_normal((n_images, len(owner)))
    got = rank_stats(sim, owner)
    for name, ranks in zip(("i2t", "t2i"), _brute_ranks(sim, owner), strict=True):
        assert got[f"{name}_mean_rank"] == pytest.approx(np.mean(ranks) + 1)
        assert got[f"{name}_median_rank"] == np.floor(np.median(ranks)) + 1  # VSE++: floor(median(ranks)) + 1


def test_score_perfect_embeddings_find_every_pair():
    images = np.eye(3, dtype=np.float32)
    texts = images[[0, 0, 1, 2, 2]]  # image 0 and image 2 have two captions each
    got = score(images, texts, [0, 0, 1, 2, 2])
    assert got["i2t_R@1"] == got["t2i_R@1"] == 100.0 and got["rsum"] == 600.0
    assert got["t2i_median_rank"] == got["i2t_mean_rank"] == 1.0


def test_gallery_groups_the_captions_of_each_image(tmp_path):
    img = Image.new("RGB", (8, 8), (200, 10, 10))

    def cap(i, image, refs):
        return Sample(id=f"c{i}", messages=[user("Describe the image."), assistant(refs[0])], images=[image],
                      task="caption", references=refs, split="test")

    items = [(cap(0, "images/a.png", ["red a", "red b"]), [img]), (cap(1, "images/b.png", ["blue"]), [img]),
             (cap(2, "images/a.png", ["red c"]), [img]),  # the same image in a second sample: still one image
             (Sample(id="q", messages=[user("What colour?"), assistant("red")], images=["images/a.png"],
                     split="test"), [img]),
             (cap(3, "images/c.png", ["other split"]), [img])]
    items[-1][0].split = "train"
    write_dataset(tmp_path, items)
    g = load_gallery(tmp_path, "test")
    assert g.images == ["images/a.png", "images/b.png"]
    assert g.texts == ["red a", "red b", "blue", "red c"] and g.image_of_text == [0, 0, 1, 0]
    assert g.captions_of() == [["red a", "red b", "red c"], ["blue"]]
    assert g.skipped == 1  # the VQA sample
    with pytest.raises(ValueError, match="no caption samples in split 'val'"):
        load_gallery(tmp_path, "val")
