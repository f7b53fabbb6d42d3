"""Tests of image<->text Recall@K (several captions per image)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vlmtune.eval.metrics import retrieval
from vlmtune.eval.metrics.retrieval import recall_at_k

# 3 images, 2 captions each: texts 0,1 -> image 0; 2,3 -> image 1; 4,5 -> image 2.
OWNER = [0, 0, 1, 1, 2, 2]
SIM = [
    [0.9, 0.1, 0.8, 0.2, 0.3, 0.0],  # image 0: text 0 ranks first -> i2t rank 0
    [0.7, 0.6, 0.5, 0.1, 0.4, 0.3],  # image 1: own texts 2 (rank 2) and 3 (rank 5) -> rank 2
    [0.2, 0.3, 0.1, 0.9, 0.0, 0.05],  # image 2: own texts 5 (rank 4) and 4 (rank 5) -> rank 4
]
# text -> image ranks (columns): t0 0, t1 2, t2 1, t3 2, t4 2, t5 1.


def _brute_force(sim: np.ndarray, owner: list[int], ks) -> dict[str, float]:
    """ALBEF's itm_eval loop, with the stable tie order of recall_at_k."""
    n_images, n_texts = sim.shape
    i2t = []
    for i in range(n_images):
        order = list(np.argsort(-sim[i], kind="stable"))
        i2t.append(min(order.index(t) for t in range(n_texts) if owner[t] == i))
    t2i = []
    for t in range(n_texts):
        order = list(np.argsort(-sim[:, t], kind="stable"))
        t2i.append(order.index(owner[t]))
    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_R@{k}"] = 100.0 * sum(r < k for r in ranks) / len(ranks)
    out["rsum"] = sum(out.values())
    return out


def test_hand_made_matrix():
    got = recall_at_k(SIM, OWNER)
    assert list(got) == ["i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "rsum"]
    assert got["i2t_R@1"] == pytest.approx(100 / 3)
    assert got["i2t_R@5"] == 100.0 and got["i2t_R@10"] == 100.0
    assert got["t2i_R@1"] == pytest.approx(100 / 6)
    assert got["t2i_R@5"] == 100.0 and got["t2i_R@10"] == 100.0
    assert got["rsum"] == pytest.approx(450.0)


def test_hand_made_matrix_other_ks():
    got = recall_at_k(np.array(SIM), OWNER, ks=(1, 2, 3, 5))
    assert got["i2t_R@2"] == pytest.approx(100 / 3)  # i2t ranks 0, 2, 4
    assert got["i2t_R@3"] == pytest.approx(200 / 3)
    assert got["i2t_R@5"] == 100.0
    assert got["t2i_R@2"] == 50.0  # t2i ranks 0, 2, 1, 2, 2, 1
    assert got["t2i_R@3"] == 100.0
    assert got["rsum"] == pytest.approx(sum(v for k, v in got.items() if k != "rsum"))


def test_any_caption_counts_for_image_to_text():
    # Image 0's second caption is the best text; its first caption ranks last.
    sim = [[0.0, 0.9, 0.5], [0.1, 0.2, 0.3]]
    got = recall_at_k(sim, [0, 0, 1], ks=(1,))
    assert got["i2t_R@1"] == 100.0
    assert got["t2i_R@1"] == pytest.approx(100 / 3)  # texts 0 and 2 score higher with the other image


def test_ties_lower_index_first():
    # All scores equal: rank == index, as np.argsort(-s, kind="stable") orders them.
    got = recall_at_k(np.zeros((2, 4)), [0, 0, 1, 1], ks=(1, 2, 3))
    assert got["i2t_R@1"] == 50.0  # image 0 owns text 0 (rank 0); image 1 owns texts 2, 3 (ranks 2, 3)
    assert got["i2t_R@3"] == 100.0
    assert got["t2i_R@1"] == 50.0  # image 0 ranks 0 for every text, image 1 ranks 1
    assert got["t2i_R@2"] == 100.0


@pytest.mark.parametrize("seed", range(6))
def test_random_matrices_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_images = int(rng.integers(1, 12))
    owner = list(range(n_images)) + list(rng.integers(0, n_images, size=int(rng.integers(0, 25))))
    rng.shuffle(owner)
    owner = [int(o) for o in owner]
    ks = (1, 2, 5, 10)
    # Small integers produce many ties; floats produce none.
    for sim in (rng.integers(0, 4, size=(n_images, len(owner))), rng.standard_normal((n_images, len(owner)))):
        assert recall_at_k(sim, owner, ks) == pytest.approx(_brute_force(sim.astype(float), owner, ks))


def test_chunked_path_matches(monkeypatch):
    rng = np.random.default_rng(7)
    sim = rng.integers(0, 3, size=(9, 40)).astype(np.float32)
    owner = [t % 9 for t in range(40)]
    whole = recall_at_k(sim, owner)
    monkeypatch.setattr(retrieval, "_CHUNK_ELEMENTS", 50)  # chunks of 1 text
    assert recall_at_k(sim, owner) == whole
    assert whole == pytest.approx(_brute_force(sim.astype(float), owner, (1, 5, 10)))


def test_input_types_agree():
    expected = recall_at_k(SIM, OWNER)
    assert recall_at_k(np.array(SIM, dtype=np.float32), np.array(OWNER)) == expected
    assert recall_at_k(np.array(SIM), tuple(OWNER)) == expected
    assert recall_at_k((np.array(SIM) * 100).astype(np.int64), OWNER) == expected
    assert recall_at_k((np.array(SIM) * 100).astype(np.uint8), OWNER) == expected  # no -x wrap-around


def test_k_beyond_gallery_and_perfect_scores():
    sim = np.eye(3)
    got = recall_at_k(sim, [0, 1, 2], ks=(1, 100))
    assert all(v == 100.0 for k, v in got.items() if k != "rsum")
    assert got["rsum"] == 400.0


def test_bad_inputs():
    with pytest.raises(ValueError):
        recall_at_k([[1.0, 0.0]], [0])  # one owner for two texts
    with pytest.raises(ValueError):
        recall_at_k([[1.0, 0.0]], [0, 1])  # image 1 does not exist
    with pytest.raises(ValueError):
        recall_at_k([[1.0, 0.0], [0.0, 1.0]], [0, 0])  # image 1 has no caption
    with pytest.raises(ValueError):
        recall_at_k([[float("nan"), 0.0]], [0, 0])
    with pytest.raises(ValueError):
        recall_at_k([[1.0]], [0], ks=(0,))
    with pytest.raises(ValueError):
        recall_at_k([[1.0]], [0], ks=())
    with pytest.raises(ValueError):
        recall_at_k(np.zeros((0, 0)), [])
    with pytest.raises(ValueError):
        recall_at_k([1.0, 0.0], [0, 0])  # not 2-D
    with pytest.raises(ValueError):
        recall_at_k([[1.0]], [0.0])  # float image index


def test_module_does_not_import_torch():
    code = "import sys, vlmtune.eval.metrics.retrieval; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
