"""Tests of the VQA accuracy variants (EvalAI server, VizWiz API, LAVIS pre-2021, lmms-eval)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import reference_cases

from vlmtune.eval.metrics.vqa import VQA_VARIANTS, vqa_accuracy

# /work/main/tests/eval/test_vqa_variants.py -> parents[3] == /work, where `shared/` sits beside the repo root.
REFERENCE_PATH = Path(__file__).resolve().parents[3] / "shared" / "reference" / "vqa_example.json"

# variant name -> reference column
COLUMNS = {
    "official": "official_GT-Vision-Lab_HEAD",
    "evalai": "evalai_server_variant",
    "vizwiz": "vizwiz_api_variant",
    "lavis_pre2021": "lavis_pre2021_variant",
    "lmms_eval": "lmms_eval_vqav2_variant",
}


REFERENCE_CASES = reference_cases(REFERENCE_PATH.name)
CASE_X_VARIANT = [(case, variant) for case in REFERENCE_CASES for variant in VQA_VARIANTS]


def test_variants_tuple_matches_reference_columns():
    assert VQA_VARIANTS == ("official", "evalai", "vizwiz", "lavis_pre2021", "lmms_eval")
    assert set(COLUMNS) == set(VQA_VARIANTS)
    for case in REFERENCE_CASES:
        assert all(column in case for column in COLUMNS.values()), case["name"]


@pytest.mark.parametrize(("case", "variant"), CASE_X_VARIANT, ids=[f"{c['name']}-{v}" for c, v in CASE_X_VARIANT])
def test_reference_case_every_variant(case, variant):
    got = round(100 * vqa_accuracy(case["prediction"], case["gt_answers"], variant=variant), 2)
    assert got == case[COLUMNS[variant]]


def test_reference_columns_actually_differ():
    # Guards against a reference file (or a test) where every column is the same.
    for variant in VQA_VARIANTS[1:]:
        assert any(c[COLUMNS[variant]] != c[COLUMNS["official"]] for c in REFERENCE_CASES), variant


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=[c["name"] for c in REFERENCE_CASES])
def test_default_variant_is_official(case):
    pred, answers = case["prediction"], case["gt_answers"]
    assert vqa_accuracy(pred, answers) == vqa_accuracy(pred, answers, variant="official")


# ---------------------------------------------------------------- variant-specific behaviour

# (name, prediction, answers, {variant: expected}) -- expected values worked out from each tool's source.
PINS = [
    (
        "GT not stripped (all but official and lmms-eval)",
        "yes",
        ["yes "] * 10,
        {"official": 1.0, "evalai": 0.0, "vizwiz": 0.0, "lavis_pre2021": 0.0, "lmms_eval": 1.0},
    ),
    (
        "GT not lower-cased when panel disagrees",
        "yes",
        ["Yes"] * 5 + ["no"] * 5,
        {"official": 1.0, "evalai": 0.0, "vizwiz": 0.0, "lavis_pre2021": 0.0, "lmms_eval": 1.0},
    ),
    (
        "GT keeps its article",
        "a dog",
        ["a dog"] * 4 + ["cat"] * 6,
        {"official": 1.0, "evalai": 0.0, "vizwiz": 0.0, "lavis_pre2021": 0.0, "lmms_eval": 1.0},
    ),
    (
        "evalai splits marks only between ASCII letters (digits)",
        "3-4",
        ["3 4"] * 4 + ["x"] * 6,
        {"official": 1.0, "evalai": 0.0, "vizwiz": 1.0, "lavis_pre2021": 1.0, "lmms_eval": 1.0},
    ),
    (
        "evalai splits marks only between ASCII letters (unicode)",
        "café-crème",
        ["café crème"] * 4 + ["x"] * 6,
        {"official": 1.0, "evalai": 0.0, "vizwiz": 1.0, "lavis_pre2021": 1.0, "lmms_eval": 1.0},
    ),
    (
        "evalai keeps marks at the text edges",
        "(yes)",
        ["yes"] * 8 + ["no"] * 2,
        {"official": 1.0, "evalai": 0.0, "vizwiz": 1.0, "lavis_pre2021": 1.0, "lmms_eval": 1.0},
    ),
    (
        "vizwiz compares with the raw GT",
        "red,white",
        ["red,white"] * 4 + ["x"] * 6,
        # lmms-eval deletes the comma outright ("redwhite"); the others turn it into a space.
        {"official": 1.0, "evalai": 1.0, "vizwiz": 0.0, "lavis_pre2021": 1.0, "lmms_eval": 0.0},
    ),
    (
        "lmms-eval splits the possessive 's",
        "dog's",
        ["dog's"] * 5 + ["cat"] * 5,
        {"official": 1.0, "evalai": 1.0, "vizwiz": 1.0, "lavis_pre2021": 1.0, "lmms_eval": 0.0},
    ),
    (
        "unanimous capitalised GT is compared as typed",
        "Yes",
        ["Yes"] * 10,
        {"official": 1.0, "evalai": 0.0, "vizwiz": 0.0, "lavis_pre2021": 0.0, "lmms_eval": 0.0},
    ),
    (
        "lmms-eval normalises the prediction twice (32-period count quirk)",
        "x" + "." * 40,
        ["x"] * 5 + ["y"] * 5,
        {"official": 0.0, "evalai": 0.0, "vizwiz": 0.0, "lavis_pre2021": 0.0, "lmms_eval": 1.0},
    ),
    (
        "comma runs between digits",
        "a-b 1,,2",
        ["a-b 1,,2"] * 5 + ["x"] * 5,
        # official: both sides -> "b 1 2"; lmms-eval: "1,,2" counts as digit,digit in the GT -> "ab 12",
        # while its prediction lost the commas up front -> "b 12".
        {"official": 1.0, "evalai": 0.0, "vizwiz": 0.0, "lavis_pre2021": 0.0, "lmms_eval": 0.0},
    ),
]


@pytest.mark.parametrize(("name", "prediction", "answers", "expected"), PINS, ids=[p[0] for p in PINS])
def test_variant_specific_behaviour(name, prediction, answers, expected):
    assert set(expected) == set(VQA_VARIANTS)
    got = {variant: vqa_accuracy(prediction, answers, variant=variant) for variant in VQA_VARIANTS}
    assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("variant", VQA_VARIANTS)
@pytest.mark.parametrize(("n_humans", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_every_variant_uses_leave_one_out(variant, n_humans, expected):
    answers = ["cat"] * n_humans + ["dog"] * (10 - n_humans)
    assert vqa_accuracy("cat", answers, variant=variant) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("variant", VQA_VARIANTS)
@pytest.mark.parametrize("prediction", ["yes", "Yes", "yes!", "the yes", " yes ", "two", "2", "t-shirt"])
@pytest.mark.parametrize("answer", ["yes", "Yes", "2", "two", "t-shirt", "yes "])
def test_single_answer_scores_as_unanimous_panel(variant, prediction, answer):
    single = vqa_accuracy(prediction, [answer], variant=variant)
    assert single in (0.0, 1.0)
    assert single == vqa_accuracy(prediction, [answer] * 10, variant=variant)


def test_single_answer_examples():
    assert vqa_accuracy("Yes", ["yes"], variant="official") == 0.0
    for variant in ("evalai", "vizwiz", "lavis_pre2021", "lmms_eval"):
        assert vqa_accuracy("Yes", ["yes"], variant=variant) == 1.0, variant
        assert vqa_accuracy("two", ["2"], variant=variant) == 1.0, variant
        assert vqa_accuracy("no", ["yes"], variant=variant) == 0.0, variant


# ---------------------------------------------------------------- edge cases and errors


@pytest.mark.parametrize("variant", VQA_VARIANTS)
def test_empty_prediction(variant):
    assert vqa_accuracy("", ["yes"] * 9 + ["no"], variant=variant) == 0.0
    assert vqa_accuracy("", ["yes"], variant=variant) == 0.0
    assert vqa_accuracy("", [""] * 10, variant=variant) == 1.0


@pytest.mark.parametrize("variant", VQA_VARIANTS)
def test_unicode(variant):
    answers = ["café"] * 4 + ["thé"] * 6
    assert vqa_accuracy("café", answers, variant=variant) == 1.0
    assert vqa_accuracy("Café", answers, variant=variant) == 1.0  # the panel disagrees / prediction lower-cased
    assert vqa_accuracy("thé", answers, variant=variant) == 1.0
    assert vqa_accuracy("cafe", answers, variant=variant) == 0.0  # no accent folding anywhere
    assert vqa_accuracy("猫", ["猫"] * 3 + ["狗"] * 7, variant=variant) == pytest.approx(0.9)


@pytest.mark.parametrize("variant", VQA_VARIANTS)
def test_empty_answers_raises(variant):
    with pytest.raises(ValueError):
        vqa_accuracy("yes", [], variant=variant)


@pytest.mark.parametrize("variant", VQA_VARIANTS)
def test_single_string_answers_raises(variant):
    with pytest.raises(TypeError):
        vqa_accuracy("yes", "yes", variant=variant)


def test_unknown_variant_raises():
    with pytest.raises(ValueError, match="unknown VQA accuracy variant"):
        vqa_accuracy("yes", ["yes"], variant="vqa_v1")


@pytest.mark.parametrize("variant", [v for v in VQA_VARIANTS if v != "official"])
def test_always_normalize_only_for_official(variant):
    with pytest.raises(ValueError, match="always_normalize"):
        vqa_accuracy("Yes", ["yes"] * 10, variant=variant, always_normalize=True)
    assert vqa_accuracy("Yes", ["yes"] * 10, variant="official", always_normalize=True) == 1.0


@pytest.mark.parametrize("variant", VQA_VARIANTS)
def test_answers_not_mutated(variant):
    answers = ["T-Shirt ", "two", "two", "a dog"]
    before = list(answers)
    vqa_accuracy("two", answers, variant=variant)
    assert answers == before


@pytest.mark.parametrize("variant", VQA_VARIANTS)
def test_returns_float_in_unit_interval(variant):
    for case in REFERENCE_CASES:
        got = vqa_accuracy(case["prediction"], case["gt_answers"], variant=variant)
        assert isinstance(got, float)
        assert 0.0 <= got <= 1.0
