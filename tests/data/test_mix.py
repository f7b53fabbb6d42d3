from collections import Counter

import pytest

from vlmtune.data.mix import Mixture
from vlmtune.data.sample import Sample, assistant, user


def _samples(prefix: str, n: int) -> list[Sample]:
    return [Sample(id=f"{prefix}{i}", messages=[user("q", n_images=0), assistant("a")], images=[]) for i in range(n)]


def test_one_source_is_epochs_of_permutations_fixed_by_seed_and_step():
    mix = Mixture([("train", _samples("s", 10), 1.0)])
    a = [[s.id for _, s in mix.step_items(0, step, 4)] for step in range(5)]
    assert a == [[s.id for _, s in mix.step_items(0, step, 4)] for step in range(5)]
    flat = [i for step in a for i in step]
    assert Counter(flat) == {f"s{i}": 2 for i in range(10)}, "two epochs see every sample twice"
    assert len(set(flat[:8])) == 8, "no repeats inside an epoch"
    assert [s.id for _, s in mix.step_items(1, 0, 4)] != a[0], "another seed, another order"


def test_every_step_takes_each_source_share_exactly():
    mix = Mixture([("domain", _samples("d", 50), 3.0), ("replay", _samples("r", 7), 1.0)])
    for step in range(20):
        counts = Counter(j for j, _ in mix.step_items(0, step, 8))
        assert counts == {0: 6, 1: 2}
    assert mix.drawn(20, 8) == [120, 40]
    # the small replay set is cycled: 40 draws of 7 samples = 5 full epochs + 5
    replay = [s.id for step in range(20) for j, s in mix.step_items(0, step, 8) if j == 1]
    counts = Counter(replay)
    assert len(replay) == 40 and set(counts) == {f"r{i}" for i in range(7)}
    assert all(v in (5, 6) for v in counts.values()), counts


def test_shares_that_do_not_divide_the_batch_are_met_cumulatively():
    mix = Mixture([("a", _samples("a", 30), 2.0), ("b", _samples("b", 30), 1.0)])
    per_step = [Counter(j for j, _ in mix.step_items(5, step, 8)) for step in range(30)]
    assert all(c[0] + c[1] == 8 for c in per_step)
    total_a = sum(c[0] for c in per_step)
    assert total_a == mix.drawn(30, 8)[0] == 160  # 2/3 of 240
    assert {c[0] for c in per_step} <= {5, 6}, "each step within one sample of its share"


def test_sources_are_shuffled_together_within_a_step():
    mix = Mixture([("a", _samples("a", 40), 1.0), ("b", _samples("b", 40), 1.0)])
    orders = [[j for j, _ in mix.step_items(0, step, 8)] for step in range(10)]
    assert any(o != sorted(o) for o in orders), "micro-batches mix sources"


def test_bad_sources_are_refused():
    with pytest.raises(ValueError, match="'empty' has no samples"):
        Mixture([("empty", [], 1.0)])
    with pytest.raises(ValueError, match="weight must be > 0"):
        Mixture([("a", _samples("a", 3), 0.0)])
