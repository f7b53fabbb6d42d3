"""Tests of the VQA accuracy and exact-match metrics."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import reference_cases

from vlmtune.eval.metrics import METRICS, exact_match, normalize_answer, vqa_accuracy

# /work/main/tests/eval/test_metrics.py -> parents[3] == /work, where `shared/` sits beside the repo root.
REFERENCE_PATH = Path(__file__).resolve().parents[3] / "shared" / "reference" / "vqa_example.json"


REFERENCE_CASES = reference_cases(REFERENCE_PATH.name)


def test_reference_path_is_shared_dir_beside_repo_root():
    repo_root = Path(__file__).resolve().parents[2]
    assert (repo_root / "pyproject.toml").is_file()
    assert REFERENCE_PATH == repo_root.parent / "shared" / "reference" / "vqa_example.json"
    assert REFERENCE_PATH.is_file()


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=[c["name"] for c in REFERENCE_CASES])
def test_vqa_accuracy_matches_official_head(case):
    got = round(100 * vqa_accuracy(case["prediction"], case["gt_answers"]), 2)
    assert got == case["official_GT-Vision-Lab_HEAD"]


def test_module_does_not_import_torch():
    # The metric modules are pure Python; importing them must not pull torch in.
    import subprocess

    code = (
        "import sys, vlmtune.eval.metrics, vlmtune.eval.metrics.vqa, vlmtune.eval.metrics.exact_match; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------- leave-one-out


@pytest.mark.parametrize(
    ("n_humans", "expected"),
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_leave_one_out_values(n_humans, expected):
    answers = ["cat"] * n_humans + ["dog"] * (10 - n_humans)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected, abs=1e-12)


def test_unanimous_panel_is_not_normalised():
    # Official quirk: identical GT answers -> exact, case-sensitive comparison.
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("yes.", ["yes"] * 10) == 0.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0  # newline/tab/strip is always applied
    # ... while a split panel normalises both sides.
    assert vqa_accuracy("Yes.", ["yes"] * 9 + ["no"]) == 1.0


def test_always_normalize_switch():
    assert vqa_accuracy("Yes", ["yes"] * 10, always_normalize=True) == 1.0
    assert vqa_accuracy("Two.", ["2"], always_normalize=True) == 1.0
    assert vqa_accuracy("three", ["2"], always_normalize=True) == 0.0


# ---------------------------------------------------------------- single answer


def test_single_answer_exact_after_strip():
    assert vqa_accuracy("yes", ["yes"]) == 1.0
    assert vqa_accuracy("  yes\t", ["yes\n"]) == 1.0
    assert vqa_accuracy("no", ["yes"]) == 0.0


def test_single_answer_behaves_like_unanimous_panel():
    for pred in ["yes", "Yes", "yes!", "the yes", " yes "]:
        assert vqa_accuracy(pred, ["yes"]) == vqa_accuracy(pred, ["yes"] * 10)
    assert vqa_accuracy("Yes", ["yes"]) == 0.0
    assert vqa_accuracy("two", ["2"]) == 0.0


def test_single_answer_returns_only_zero_or_one():
    assert vqa_accuracy("cat", ["cat"]) in (0.0, 1.0)
    assert vqa_accuracy("dog", ["cat"]) in (0.0, 1.0)
    assert isinstance(vqa_accuracy("cat", ["cat"]), float)


def test_empty_answers_raises():
    with pytest.raises(ValueError):
        vqa_accuracy("yes", [])


def test_two_answers():
    # 2 answers: each leave-one-out subset has 1 answer -> min(1, m/3).
    assert vqa_accuracy("cat", ["cat", "dog"]) == pytest.approx((0 + 1 / 3) / 2)
    assert vqa_accuracy("cat", ["cat", "Cat"]) == pytest.approx(1 / 3)  # split panel -> both normalised to "cat"


# ---------------------------------------------------------------- normalize_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Two dogs!", "2 dogs"),
        ("The cat.", "cat"),
        ("an apple", "apple"),
        ("phone", "phone"),  # naive str.replace normalisers give "ph1"
        ("none", "0"),
        ("None of them", "0 of them"),
        ("nonetheless", "nonetheless"),
        ("someone", "someone"),
        ("ten", "10"),
        ("often", "often"),
        ("dont know", "don't know"),
        ("Im", "im"),  # capitalised contraction keys never match after lower-casing
        ("3.5", "3.5"),
        ("5.", "5"),
        ("1,000", "1000"),
        ("red,white", "red white"),  # no adjacent space: mark -> space
        ("red, white", "red white"),  # adjacent space: mark deleted
        ("a,b 1,2", "ab 12"),  # any digit,digit deletes every mark in the text
        ("t-shirt", "t shirt"),
        ("yes!", "yes"),
        ("it's", "it's"),  # apostrophe is not in the punctuation list
        ("10:30", "10:30"),  # neither is the colon
        ("  Multiple   spaces  ", "multiple spaces"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_normalize_answer_period_count_quirk():
    # Official: periodStrip.sub("", text, re.UNICODE) -> re.UNICODE (32) is the count.
    assert normalize_answer("x" + "." * 32) == "x"
    assert normalize_answer("x" + "." * 40) == "x" + "." * 8


# ---------------------------------------------------------------- exact_match


def test_exact_match_normalised():
    assert exact_match("Paris.", ["paris"]) == 1.0
    assert exact_match("  The   Eiffel Tower!? ", ["the eiffel tower"]) == 1.0
    assert exact_match("London", ["paris", "rome"]) == 0.0
    assert exact_match("rome", ["paris", "Rome"]) == 1.0
    # only trailing punctuation and whitespace are touched
    assert exact_match("t-shirt", ["t shirt"]) == 0.0
    assert exact_match("two", ["2"]) == 0.0
    assert exact_match("the cat", ["cat"]) == 0.0
    assert exact_match("!paris", ["paris"]) == 0.0


def test_exact_match_raw():
    assert exact_match("Paris", ["Paris"], normalize=False) == 1.0
    assert exact_match("Paris.", ["paris"], normalize=False) == 0.0
    assert exact_match("paris", ["Paris"], normalize=False) == 0.0
    assert exact_match(" Paris", ["Paris"], normalize=False) == 0.0


def test_exact_match_empty_answers():
    assert exact_match("paris", []) == 0.0


# ---------------------------------------------------------------- registry


def test_metrics_registry():
    assert set(METRICS) == {"vqa_accuracy", "exact_match", "relaxed_accuracy", "anls"}
    assert METRICS["vqa_accuracy"] is vqa_accuracy
    assert METRICS["exact_match"] is exact_match
    for fn in METRICS.values():
        value = fn("cat", ["cat", "dog", "cat", "cat"])
        assert isinstance(value, float)
        assert 0.0 <= value <= 1.0
