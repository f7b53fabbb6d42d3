import pytest

from vlmtune.eval.forgetting import gate, points


def test_deltas_are_points_and_only_drops_beyond_max_drop_fail():
    v = gate({"general": 0.80, "captions": 0.50}, {"general": 0.70, "captions": 0.60}, max_drop=5.0)
    assert v.deltas == {"general": pytest.approx(-10.0), "captions": pytest.approx(10.0)}
    assert not v.passed and len(v.violations) == 1
    assert "probe 'general' fell 10.0 points (80.0 -> 70.0), more than forgetting.max_drop=5" in v.reason()


def test_a_drop_exactly_at_the_limit_passes_and_no_gate_never_fails():
    assert gate({"g": 0.80}, {"g": 0.75}, max_drop=5.0).passed
    assert not gate({"g": 0.80}, {"g": 0.7499}, max_drop=5.0).passed
    v = gate({"g": 0.9}, {"g": 0.1}, max_drop=None)
    assert v.passed and v.deltas["g"] == pytest.approx(-80.0)
    assert points(0.874) == 87.4


def test_scores_for_different_probes_are_refused():
    with pytest.raises(ValueError, match="same probes"):
        gate({"a": 0.5}, {"b": 0.5}, max_drop=1.0)
