"""ANLS (Average Normalized Levenshtein Similarity), the DocVQA / InfographicVQA / ST-VQA metric.

Definition (Biten et al. 2019, "Scene Text Visual Question Answering", Eq. 1; reused by DocVQA,
Mathew et al. 2021):

    ANLS = 1/N * sum_i max_j s(a_ij, o_i),
    s(a_ij, o_i) = 1 - NL(a_ij, o_i)  if NL(a_ij, o_i) < tau,  else 0,

where ``NL`` is the Levenshtein distance divided by the length of the longer string and
``tau = 0.5``; answers are "not case sensitive, but space sensitive". :func:`anls` returns the
per-question term ``max_j s(a_ij, o_i)`` in [0, 1]; the dataset score is its mean.

Implementations in the field disagree on three details. Each one is a ``variant=`` value:

``"rrc"`` (default)
    The PyPI ``anls`` package (shunk031/ANLS, ``anls/metrics/score.py`` + ``anls/metrics/dist.py``),
    which implements Eq. 1 literally. Both strings are lower-cased, stripped and have whitespace
    runs collapsed to one space (``" ".join(s.strip().lower().split())``); ``NL`` is computed on
    these normalised strings (the length is ``len(s.upper())``, which differs from ``len(s)`` only
    for characters such as "ß" that upper-case to two); strict boundary: ``NL == 0.5`` scores 0.
``"lmms_eval"``
    lmms-eval ``api/metrics.py`` ``anls`` (copied from Qwen-VL ``eval_mm/infographicsvqa_eval.py``,
    which is the InfographicVQA evaluation script distributed on rrc.cvc.uab.es). The distance is
    between the same normalised strings, but the denominator is
    ``max(len(answer.upper()), len(prediction.upper()))`` of the RAW, un-normalised strings, so
    extra spaces in the prediction lower the NL. The threshold is applied to the similarity:
    ``1 - NL < threshold`` scores 0, so ``NL == 0.5`` keeps 0.5. (``threshold`` therefore means
    something else here: it agrees with the other variants' ``NL < threshold`` only at 0.5.)
``"pix2struct"``
    google-research/pix2struct ``pix2struct/metrics.py`` ``anls_metric`` as called by
    ``pix2struct_metrics`` (commit 67e9f30, 2025): both strings only lower-cased, NO strip and NO
    whitespace collapsing ("  New   York " vs "new york" is 1 - 5/13); strict boundary
    (``NL < tau``). Earlier pix2struct versions (5b086ef 2023, bd70460 2024) had ``NL <= tau``,
    which keeps 0.5 at the boundary; DePlot's table metrics call this function.

Edge cases: an empty prediction scores 0 against non-empty answers in every variant. Empty
prediction vs empty answer scores 1.0 in every variant (pix2struct itself divides by zero there).
An empty ``answers`` list raises ``ValueError`` (every reference implementation fails on ``max([])``).

The Levenshtein distance is computed here in pure Python (O(n*m)), over Unicode code points,
as ``editdistance`` and the reference scripts do. No torch import.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["AnlsVariant", "anls", "levenshtein"]

AnlsVariant = Literal["rrc", "lmms_eval", "pix2struct"]


def levenshtein(a: str, b: str) -> int:
    """Levenshtein (edit) distance between ``a`` and ``b``: unit-cost insert, delete, substitute."""
    if len(a) < len(b):
        a, b = b, a  # keep the row as short as possible
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def _collapse(text: str) -> str:
    """Lower-case, strip and collapse whitespace runs: the RRC / lmms-eval normalisation."""
    return " ".join(text.strip().lower().split())


def _score_rrc(prediction: str, answer: str, threshold: float) -> float:
    pred, gold = _collapse(prediction), _collapse(answer)
    length = max(len(pred.upper()), len(gold.upper()))
    nl = 0.0 if length == 0 else levenshtein(pred, gold) / length
    return 1.0 - nl if nl < threshold else 0.0


def _nl_lmms_eval(prediction: str, answer: str) -> float:
    # Distance between normalised strings, length of the raw ones (as in the RRC InfographicVQA script).
    length = max(len(answer.upper()), len(prediction.upper()))
    return 0.0 if length == 0 else levenshtein(_collapse(answer), _collapse(prediction)) / length


def _score_pix2struct(prediction: str, answer: str, threshold: float) -> float:
    pred, gold = prediction.lower(), answer.lower()
    length = max(len(pred), len(gold))
    if length == 0:
        return 1.0  # pix2struct raises ZeroDivisionError here
    nl = levenshtein(gold, pred) / length
    return 1.0 - nl if nl < threshold else 0.0


def anls(prediction: str, answers: list[str], threshold: float = 0.5, variant: AnlsVariant = "rrc") -> float:
    """Per-question ANLS: max over ``answers`` of the thresholded normalised Levenshtein similarity.

    ``variant`` picks the implementation to reproduce (see the module docstring):
    ``"rrc"`` (PyPI ``anls``, Eq. 1 of the paper; the default), ``"lmms_eval"`` or ``"pix2struct"``.
    ``threshold`` is tau: ``"rrc"`` and ``"pix2struct"`` score 0 when ``NL >= threshold``, ``"lmms_eval"``
    when ``1 - NL < threshold`` (the same rule only for the standard 0.5).
    Returns a float in [0, 1]. Raises ``ValueError`` on empty ``answers`` or an unknown variant.
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a list of strings, not a single string")
    if len(answers) == 0:
        raise ValueError("anls needs at least one ground-truth answer")
    if variant == "rrc":
        return max(_score_rrc(prediction, a, threshold) for a in answers)
    if variant == "lmms_eval":
        score = 1.0 - min(_nl_lmms_eval(prediction, a) for a in answers)
        return 0.0 if score < threshold else score
    if variant == "pix2struct":
        return max(_score_pix2struct(prediction, a, threshold) for a in answers)
    raise ValueError(f"unknown ANLS variant {variant!r}; expected 'rrc', 'lmms_eval' or 'pix2struct'")
