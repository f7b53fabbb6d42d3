"""ChartQA relaxed accuracy, reproducing Pix2Struct's ``relaxed_correctness``.

Reference: google-research/pix2struct, ``pix2struct/metrics.py`` ``relaxed_correctness``
(identical in commits 5b086ef (2023), bd70460 (2024) and 67e9f30 (2025)); the same function
is what DePlot/MatCha use for ChartQA. It quotes the ChartQA paper (Masry et al. 2022, end of §5.1):

    "We consider an answer to be correct if it is within 5% of the gold answer.
    For non-numeric answers, we still need an exact match to consider an answer
    to be correct."

Concretely, a prediction is correct iff

* both strings parse as floats (a trailing ``%`` is stripped and the number divided
  by 100), the target's float is non-zero, and ``|p - t| / |t| <= 0.05``; otherwise
* ``prediction.lower() == target.lower()``.

ChartQA's overall score is 100 * the mean over questions (human and augmented test sets,
1,250 questions each, are averaged question by question).

Behaviour of the official code reproduced on purpose (so numbers match published ones):

* No stripping, no punctuation removal. ``" 12 "`` scores against ``"12"`` only because Python's
  ``float()`` ignores surrounding whitespace; ``" yes"`` does not match ``"yes"`` and
  ``"inspired."`` does not match ``"Inspired"``. Strip model output in the task, not here.
* Python ``float()`` rules decide what a number is: ``"12."``, ``"1e3"``, ``"1_000"``, ``"nan"``
  and ``"inf"`` parse, ``"1,000"`` and ``"$5"`` do not (they fall back to the string comparison,
  so ``"1000"`` vs ``"1,000"`` is wrong).
* ``%`` on either side is read as /100: ``"0.5"`` matches ``"50%"``, while ``"50%"`` (0.5) does not
  match ``"50"``, and ``"21.6%"`` does not match ``"21.6"``. All trailing ``%`` are stripped
  (``rstrip("%")``). A ``%`` that is not the last character (``"50% "``) is no number.
* A zero target never takes the numeric branch (``target_float`` is falsy): ``"0.0"`` vs ``"0"``
  is wrong, ``"0"`` vs ``"0"`` is right (string match).
* The 5% bound is inclusive: 105 and 95 against 100 are correct.
* NaN never matches (the comparison with NaN is false): even ``"nan"`` vs ``"nan"`` is wrong.

Pure Python; no torch import.
"""

from __future__ import annotations

__all__ = ["relaxed_accuracy", "relaxed_accuracy_any"]


def _to_float(text: str) -> float | None:
    """Pix2Struct's ``_to_float``: a trailing ``%`` divides by 100; ``None`` if not a number."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, target: str, *, max_relative_change: float = 0.05) -> float:
    """1.0 if ``prediction`` is relaxed-correct for ``target`` (Pix2Struct ``relaxed_correctness``), else 0.0.

    Numeric when both sides parse as floats and the target is non-zero: correct iff
    ``|p - t| / |t| <= max_relative_change``. Otherwise a case-insensitive exact string match,
    with no stripping. See the module docstring for the quirks this reproduces.
    """
    prediction_float = _to_float(prediction)
    target_float = _to_float(target)
    if prediction_float is not None and target_float:
        relative_change = abs(prediction_float - target_float) / abs(target_float)
        return 1.0 if relative_change <= max_relative_change else 0.0
    return 1.0 if prediction.lower() == target.lower() else 0.0


def relaxed_accuracy_any(prediction: str, targets: list[str], *, max_relative_change: float = 0.05) -> float:
    """Max of :func:`relaxed_accuracy` over several ``targets`` (Pix2Struct's ``aggregate_metrics``).

    Raises ``ValueError`` if ``targets`` is empty and ``TypeError`` if it is a bare string.
    """
    if isinstance(targets, str):
        raise TypeError("targets must be a list of strings, not a single string")
    if len(targets) == 0:
        raise ValueError("relaxed_accuracy_any needs at least one target")
    return max(relaxed_accuracy(prediction, t, max_relative_change=max_relative_change) for t in targets)
