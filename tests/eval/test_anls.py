"""Tests of ANLS and its three variants (PyPI ``anls`` / lmms-eval / pix2struct)."""

from __future__ import annotations

import functools
import random
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import reference_cases

from vlmtune.eval.metrics.anls import anls, levenshtein

REFERENCE_PATH = Path(__file__).resolve().parents[3] / "shared" / "reference" / "anls_example.json"
COLUMNS = {"anls_pypi_rrc": "rrc", "lmms_eval": "lmms_eval", "pix2struct": "pix2struct"}


REFERENCE_CASES = reference_cases(REFERENCE_PATH.name)
PARAMS = [(case, column) for case in REFERENCE_CASES for column in COLUMNS]
PARAM_IDS = [f"{case['name']}-{column}" for case, column in PARAMS]


@pytest.mark.parametrize(("case", "column"), PARAMS, ids=PARAM_IDS)
def test_anls_matches_reference(case, column):
    got = anls(case["pred"], case["refs"], variant=COLUMNS[column])
    assert isinstance(got, float)
    assert got == case[column]  # exact, not approx


def test_default_variant_is_rrc():
    for case in REFERENCE_CASES:
        assert anls(case["pred"], case["refs"]) == case["anls_pypi_rrc"]


def test_reference_has_the_boundary_case():
    boundary = [c for c in REFERENCE_CASES if c["pred"] == "abxy" and c["refs"] == ["abcd"]]
    assert boundary and boundary[0]["lmms_eval"] == 0.5 and boundary[0]["anls_pypi_rrc"] == 0.0


# ---------------------------------------------------------------- variants


def test_variants_differ_on_trailing_spaces():
    # "abxd  " vs "abcd": rrc normalises to "abxd" -> NL 1/4; lmms_eval: distance on normalised strings (1) but
    # raw length 6 -> NL 1/6; pix2struct: raw strings, distance 3 over 6 -> NL 0.5 -> 0 (strict).
    assert anls("abxd  ", ["abcd"], variant="rrc") == 0.75
    assert anls("abxd  ", ["abcd"], variant="lmms_eval") == 1 - 1 / 6
    assert anls("abxd  ", ["abcd"], variant="pix2struct") == 0.0


def test_length_is_measured_after_upper_casing():
    # "ß".upper() == "SS": PyPI anls and lmms-eval measure len(s.upper()), pix2struct len(s).
    assert anls("aß", ["ab"], variant="rrc") == pytest.approx(2 / 3)
    assert anls("aß", ["ab"], variant="lmms_eval") == pytest.approx(2 / 3)
    assert anls("aß", ["ab"], variant="pix2struct") == 0.0  # NL = 1/2, strict boundary


@pytest.mark.parametrize("variant", ["rrc", "lmms_eval", "pix2struct"])
def test_case_insensitive_all_variants(variant):
    assert anls("ÉCOLE Normale", ["école normale"], variant=variant) == 1.0


def test_threshold_argument():
    # 1 edit in 4 characters: NL = 0.25, similarity 0.75.
    for variant in ("rrc", "lmms_eval", "pix2struct"):
        assert anls("abcx", ["abcd"], variant=variant) == 0.75
    # rrc / pix2struct put the threshold on NL (NL < threshold), lmms-eval on the similarity (1 - NL >= threshold):
    # the two agree only at 0.5.
    assert anls("abcx", ["abcd"], threshold=0.2, variant="rrc") == 0.0
    assert anls("abcx", ["abcd"], threshold=0.2, variant="pix2struct") == 0.0
    assert anls("abcx", ["abcd"], threshold=0.2, variant="lmms_eval") == 0.75
    assert anls("abcx", ["abcd"], threshold=0.8, variant="rrc") == 0.75
    assert anls("abcx", ["abcd"], threshold=0.8, variant="pix2struct") == 0.75
    assert anls("abcx", ["abcd"], threshold=0.8, variant="lmms_eval") == 0.0


@pytest.mark.parametrize("variant", ["rrc", "lmms_eval", "pix2struct"])
def test_best_of_several_answers(variant):
    assert anls("abcx", ["zzzz", "abcd", "abxx"], variant=variant) == 0.75
    assert anls("qqqq", ["zzzz", "abcd"], variant=variant) == 0.0


@pytest.mark.parametrize("variant", ["rrc", "lmms_eval", "pix2struct"])
def test_empty_strings(variant):
    assert anls("", [""], variant=variant) == 1.0
    assert anls("", ["42"], variant=variant) == 0.0
    assert anls("42", [""], variant=variant) == 0.0


def test_whitespace_only_prediction():
    assert anls("   ", [""], variant="rrc") == 1.0
    assert anls("   ", [""], variant="lmms_eval") == 1.0  # distance 0 over raw length 3
    assert anls("   ", [""], variant="pix2struct") == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError):
        anls("a", [])
    with pytest.raises(TypeError):
        anls("a", "a")
    with pytest.raises(ValueError):
        anls("a", ["a"], variant="docvqa")


# ---------------------------------------------------------------- levenshtein


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [("kitten", "sitting", 3), ("flaw", "lawn", 2), ("", "abc", 3), ("abc", "", 3), ("", "", 0),
     ("same", "same", 0), ("café", "cafe", 1), ("日本語", "日本", 1), ("ab", "ba", 2)],
)  # fmt: skip
def test_levenshtein_known_values(a, b, expected):
    assert levenshtein(a, b) == expected
    assert levenshtein(b, a) == expected


def test_levenshtein_matches_recursive_definition():
    @functools.cache
    def reference(a: str, b: str) -> int:
        if not a or not b:
            return len(a) + len(b)
        return min(reference(a[1:], b) + 1, reference(a, b[1:]) + 1, reference(a[1:], b[1:]) + (a[0] != b[0]))

    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choice("abcé ") for _ in range(rng.randint(0, 7)))
        b = "".join(rng.choice("abcé ") for _ in range(rng.randint(0, 7)))
        assert levenshtein(a, b) == reference(a, b), (a, b)


def test_module_does_not_import_torch():
    code = "import sys, vlmtune.eval.metrics.anls; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
