"""Tests of the VizWiz answerability metrics (AP / F1 of the "unanswerable" class) and answerable_score."""

from __future__ import annotations

import random
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from vlmtune.eval.metrics.answerability import answerability_metrics, answerable_score, average_precision


def _vizwiz_reference(scores: list[float], answerable: list[int]) -> dict[str, float]:
    """The VizWiz ``evaluate_unanswerability`` computation, with numpy + scikit-learn as the script does it."""
    gt_labels_n = 1 - np.array(answerable)
    pred_n = 1.0 - np.array(scores, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate cases: sklearn warns and returns 0.0
        return {
            "average_precision": average_precision_score(gt_labels_n, pred_n),
            "f1": f1_score(gt_labels_n, pred_n > 0.5),
            "precision": precision_score(gt_labels_n, pred_n > 0.5),
            "recall": recall_score(gt_labels_n, pred_n > 0.5),
        }


def _random_case(rng: random.Random) -> tuple[list[float], list[int]]:
    n = rng.randint(1, 40)
    kind = rng.choice(["grid", "grid", "continuous", "constant", "extremes"])
    if kind == "grid":  # many ties, including exactly 0.5
        scores = [rng.choice([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]) for _ in range(n)]
    elif kind == "continuous":
        scores = [rng.random() for _ in range(n)]
    elif kind == "constant":
        scores = [rng.random()] * n
    else:
        scores = [rng.choice([0.0, 1.0]) for _ in range(n)]
    label_kind = rng.choice(["mixed", "mixed", "mixed", "all0", "all1"])
    if label_kind == "all0":
        answerable = [0] * n
    elif label_kind == "all1":
        answerable = [1] * n
    else:
        p = rng.random()
        answerable = [int(rng.random() < p) for _ in range(n)]
    return scores, answerable


RANDOM_CASES = [_random_case(random.Random(seed)) for seed in range(250)]


def test_random_cases_cover_ties_and_degenerate_labels():
    assert any(len(set(s)) < len(s) for s, _ in RANDOM_CASES)
    assert any(sum(a) == 0 for _, a in RANDOM_CASES)
    assert any(sum(a) == len(a) for _, a in RANDOM_CASES)
    assert any(0.5 in s for s, _ in RANDOM_CASES)


@pytest.mark.parametrize("seed", range(len(RANDOM_CASES)))
def test_average_precision_equals_sklearn(seed):
    scores, labels = RANDOM_CASES[seed]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = average_precision_score(np.array(labels), np.array(scores))
    assert average_precision(labels, scores) == pytest.approx(expected, abs=1e-12, rel=0)


@pytest.mark.parametrize("seed", range(len(RANDOM_CASES)))
def test_answerability_metrics_equal_vizwiz_script(seed):
    scores, answerable = RANDOM_CASES[seed]
    got = answerability_metrics(scores, answerable)
    expected = _vizwiz_reference(scores, answerable)
    assert got["average_precision"] == pytest.approx(expected["average_precision"], abs=1e-12, rel=0)
    # one division of the same integers on both sides: exact
    assert got["f1"] == expected["f1"]
    assert got["precision"] == expected["precision"]
    assert got["recall"] == expected["recall"]
    assert got["n"] == len(scores)


# ---------------------------------------------------------------- hand-computed values


def test_hand_computed_example():
    # p(answerable) = [0.9, 0.8, 0.3, 0.1], answerable = [1, 0, 0, 1]
    # unanswerable score = [0.1, 0.2, 0.7, 0.9] (approximately), unanswerable label = [0, 1, 1, 0]
    # descending: 0.9 (neg) P=0 R=0 | 0.7 (pos) P=1/2 R=1/2 | 0.2 (pos) P=2/3 R=1 | 0.1 (neg) P=1/2 R=1
    # AP = 1/2 * 1/2 + 1/2 * 2/3 = 7/12; predicted unanswerable: p < 0.5 -> items 2, 3 -> tp=1 fp=1 fn=1
    got = answerability_metrics([0.9, 0.8, 0.3, 0.1], [1, 0, 0, 1])
    assert got["average_precision"] == pytest.approx(7 / 12, abs=1e-12)
    assert got["precision"] == 0.5
    assert got["recall"] == 0.5
    assert got["f1"] == 0.5
    assert got["n"] == 4
    assert set(got) == {"average_precision", "f1", "precision", "recall", "n"}


def test_positive_class_is_unanswerable():
    # With "answerable" as the positive class F1 would be 0.8 (P=1, R=2/3); VizWiz scores "unanswerable".
    got = answerability_metrics([0.9, 0.8, 0.2, 0.1], [1, 1, 1, 0])
    assert got["f1"] == pytest.approx(2 / 3)
    assert got["precision"] == 0.5
    assert got["recall"] == 1.0
    assert got["average_precision"] == 1.0
    # Ranking the unanswerable question as the MOST answerable one is the worst case for AP.
    assert answerability_metrics([0.0, 1.0], [1, 0])["average_precision"] == 0.5
    assert answerability_metrics([1.0, 0.0], [1, 0])["average_precision"] == 1.0


def test_ties_form_one_threshold():
    # All scores equal: a single threshold, AP = fraction of positives (not an order-dependent value).
    got = answerability_metrics([0.3] * 4, [0, 1, 1, 1])
    assert got["average_precision"] == 0.25
    assert answerability_metrics([0.3] * 4, [1, 1, 1, 0])["average_precision"] == 0.25


def test_threshold_is_strict_on_unanswerable_score():
    # 1.0 - 0.5 > 0.5 is False: p = 0.5 counts as answerable.
    assert answerability_metrics([0.5], [0]) | {"average_precision": None} == {
        "average_precision": None,
        "f1": 0.0,
        "precision": 0.0,
        "recall": 0.0,
        "n": 1,
    }
    got = answerability_metrics([0.49], [0])
    assert (got["f1"], got["precision"], got["recall"]) == (1.0, 1.0, 1.0)


# ---------------------------------------------------------------- degenerate inputs


def test_all_answerable_no_positive():
    # No unanswerable question: sklearn warns and returns AP 0.0; P/R/F1 have zero denominators -> 0.0.
    got = answerability_metrics([0.9, 0.2, 0.6], [1, 1, 1])
    assert got == {"average_precision": 0.0, "f1": 0.0, "precision": 0.0, "recall": 0.0, "n": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our function itself warns about nothing
        answerability_metrics([0.9, 0.2, 0.6], [1, 1, 1])


def test_all_unanswerable():
    got = answerability_metrics([0.9, 0.2, 0.6], [0, 0, 0])
    assert got["average_precision"] == pytest.approx(1.0, abs=1e-12)
    assert got["precision"] == 1.0  # only p=0.2 is predicted unanswerable, and it is
    assert got["recall"] == pytest.approx(1 / 3)
    assert got["f1"] == pytest.approx(0.5)


def test_single_question():
    assert answerability_metrics([0.1], [0])["average_precision"] == 1.0
    assert answerability_metrics([0.1], [1])["average_precision"] == 0.0


def test_accepts_bools_and_numpy():
    a = answerability_metrics(np.array([0.9, 0.1]), np.array([1, 0]))
    b = answerability_metrics([0.9, 0.1], [True, False])
    assert a == b == answerability_metrics([0.9, 0.1], [1, 0])


@pytest.mark.parametrize(
    ("scores", "answerable"),
    [([], []), ([0.5], []), ([0.5, 0.5], [1]), ([0.5], [2]), ([0.5], [-1]), ([float("nan")], [1]), ([np.inf], [0])],
)
def test_invalid_inputs_raise(scores, answerable):
    with pytest.raises(ValueError):
        answerability_metrics(scores, answerable)


# ---------------------------------------------------------------- answerable_score


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("unanswerable", 0.0),
        ("Unanswerable", 0.0),
        ("Unanswerable.", 0.0),
        ("UNANSWERABLE!", 0.0),
        ("  unanswerable\n", 0.0),
        ('"unanswerable"', 0.0),
        ("the unanswerable", 0.0),  # the official normalisation drops articles
        ("unanswerable unanswerable", 1.0),
        ("not answerable", 1.0),
        ("The question is unanswerable.", 1.0),
        ("unanswerable because the image is blurry", 1.0),
        ("“unanswerable”", 1.0),  # typographic quotes are not in the VQA punctuation list
        ("ünanswerable", 1.0),
        ("yes", 1.0),
        ("", 1.0),  # an empty answer is not the literal "unanswerable"
        ("unsuitable", 1.0),
        ("unsuitable image", 1.0),
    ],
)
def test_answerable_score(prediction, expected):
    assert answerable_score(prediction) == expected


@pytest.mark.parametrize("prediction", ["unsuitable", "Unsuitable image.", "unsuitable  image", "unanswerable"])
def test_answerable_score_unsuitable_option(prediction):
    assert answerable_score(prediction, unsuitable_is_unanswerable=True) == 0.0


@pytest.mark.parametrize("prediction", ["unsuitable answer", "suitable", "image"])
def test_answerable_score_unsuitable_option_is_exact(prediction):
    assert answerable_score(prediction, unsuitable_is_unanswerable=True) == 1.0


def test_answerable_score_feeds_metrics():
    predictions = ["Unanswerable.", "a red car", "unanswerable", "two"]
    scores = [answerable_score(p) for p in predictions]
    assert scores == [0.0, 1.0, 0.0, 1.0]
    got = answerability_metrics(scores, [0, 1, 1, 1])
    assert (got["precision"], got["recall"]) == (0.5, 1.0)


def test_module_imports_no_heavy_dependency():
    # Only what this module itself pulls in (the package __init__ is someone else's to keep light).
    code = (
        "import sys, vlmtune.eval.metrics.vqa; before = set(sys.modules); "
        "import vlmtune.eval.metrics.answerability; "
        "sys.exit(1 if {'torch', 'numpy', 'sklearn'} & (set(sys.modules) - before) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
