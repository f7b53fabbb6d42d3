"""VizWiz-VQA answerability: average precision and F1 of predicting that a visual question is unanswerable.

Reference: Gurari et al., "VizWiz Grand Challenge: Answering Visual Questions from Blind People",
CVPR 2018, and the VizWiz-VQA challenge's evaluation code, ``vizwiz-vqa/PythonEvaluationTools/
vqaEvaluation/vqaEval.py`` (``VQAEval.evaluate_unanswerability``; author Qing Li; no public commit
id). A submission gives, per question, ``answerable``: the predicted probability that the question
is answerable. The script then does

    gt_labels_n = 1 - gt_labels          # gt_labels: the annotation field `answerable`, 0/1
    pred_n = 1.0 - pred
    average_precision = average_precision_score(gt_labels_n, pred_n)
    one_f1_score = f1_score(gt_labels_n, pred_n > 0.5)

and reports ``round(100 * x, 2)`` of both. So:

* The POSITIVE class is "unanswerable" (``answerable == 0``), not "answerable", and the ranking
  score is ``1.0 - p(answerable)``. Every number here (AP, F1, precision, recall) is for that class.
* A question is predicted unanswerable iff ``1.0 - p > 0.5`` (strict, computed in floating point as
  written): ``p = 0.5`` counts as answerable.
* AP is scikit-learn's ``average_precision_score`` (binary, ``pos_label=1``): the uninterpolated
  step-function area ``AP = sum_k (R_k - R_{k-1}) * P_k`` over the DISTINCT score values taken as
  thresholds in decreasing order (tied scores form one threshold, never split), where ``P_k`` and
  ``R_k`` are precision and recall of "score >= threshold k" and ``R_0 = 0``. It is not the 11-point
  interpolated AP and not the trapezoid area. Implemented here by hand; the tests compare it with
  scikit-learn to 1e-12.
* Degenerate labels, as scikit-learn 1.9 (the test dependency) returns them: no unanswerable
  question at all -> AP 0.0 (scikit-learn warns "No positive class found in y_true" and sets recall
  to 1 everywhere, so AP is the precision at the top threshold, which is 0); only unanswerable
  questions -> AP 1.0. Precision, recall or F1 whose denominator is 0 are 0.0 (scikit-learn's
  ``zero_division="warn"`` value). No warnings are raised here. Very old scikit-learn versions
  returned nan for the no-positive AP; this module does not.

``precision`` and ``recall`` are not reported by the VizWiz script; they are the two factors of its
F1 (same class, same 0.5 threshold).

Generative models give a text answer, not a probability. ``answerable_score`` turns it into the 0/1
"probability" the script expects: 0.0 when the prediction, normalised as the VizWiz API normalises
predictions (strip, ``processPunctuation``, ``processDigitArticle``: see ``vqa.normalize_answer``),
is exactly "unanswerable", the answer VizWiz asks for and that its annotators typed; 1.0 otherwise.
Adaptations of the VizWiz script for generative models do the same test
(``int(normalised_answer != "unanswerable")``). VizWiz annotators could also answer "unsuitable"
/ "unsuitable image" (the photo itself is unusable); such answers are not "unanswerable" in the
answer vocabulary, so they count as answerable by default. Pass ``unsuitable_is_unanswerable=True``
to treat them as unanswerable too (not what the script-based adaptations do).

Pure Python; no numpy, sklearn or torch import.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from vlmtune.eval.metrics.vqa import normalize_answer

__all__ = [
    "UNANSWERABLE",
    "UNSUITABLE",
    "answerability_metrics",
    "answerable_score",
    "average_precision",
]

UNANSWERABLE = "unanswerable"
UNSUITABLE: frozenset[str] = frozenset({"unsuitable", "unsuitable image"})

# VizWiz: pred_n > 0.5, with pred_n = 1.0 - p(answerable).
_THRESHOLD = 0.5


def average_precision(labels: Sequence[int], scores: Sequence[float]) -> float:
    """scikit-learn's binary ``average_precision_score(labels, scores)`` (positive label 1), by hand.

    ``sum_k (R_k - R_{k-1}) * P_k`` over distinct score thresholds in decreasing order, ``R_0 = 0``;
    0.0 when ``labels`` has no positive (scikit-learn 1.9 warns and returns 0.0 there).
    """
    n_pos = sum(labels)
    if n_pos == 0:
        return 0.0
    order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
    ap = 0.0
    tp = fp = 0
    prev_recall = 0.0
    for rank, i in enumerate(order):
        tp += labels[i]
        fp += 1 - labels[i]
        is_last_of_tie = rank + 1 == len(order) or scores[order[rank + 1]] != scores[i]
        if is_last_of_tie:  # one threshold per distinct score value
            recall = tp / n_pos
            ap += (recall - prev_recall) * (tp / (tp + fp))
            prev_recall = recall
    return max(0.0, ap)  # scikit-learn clips a -0.0


def answerability_metrics(scores: Sequence[float], answerable: Sequence[int]) -> dict[str, float | int]:
    """VizWiz answerability metrics for predicted ``scores`` = p(answerable) and ground truth ``answerable`` (0/1).

    Returns ``{"average_precision", "f1", "precision", "recall": float in [0, 1], "n": int}``, all for
    the positive class "unanswerable" with ranking score ``1.0 - score`` and decision
    ``1.0 - score > 0.5``, as the VizWiz evaluation computes them (values not multiplied by 100).

    Raises ``ValueError`` on empty or mismatched inputs, labels other than 0/1, or non-finite scores.
    """
    if len(scores) != len(answerable):
        raise ValueError(f"{len(scores)} scores but {len(answerable)} answerable labels")
    if len(scores) == 0:
        raise ValueError("answerability_metrics needs at least one question")
    for label in answerable:
        if label not in (0, 1):
            raise ValueError(f"answerable labels must be 0 or 1, got {label!r}")
    unanswerable_score = [1.0 - float(s) for s in scores]
    if not all(math.isfinite(s) for s in unanswerable_score):
        raise ValueError("scores must be finite numbers")
    unanswerable = [1 - int(label) for label in answerable]

    predicted = [s > _THRESHOLD for s in unanswerable_score]
    tp = sum(1 for p, y in zip(predicted, unanswerable, strict=True) if p and y)
    fp = sum(1 for p, y in zip(predicted, unanswerable, strict=True) if p and not y)
    fn = sum(1 for p, y in zip(predicted, unanswerable, strict=True) if not p and y)
    return {
        "average_precision": average_precision(unanswerable, unanswerable_score),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "n": len(scores),
    }


def answerable_score(prediction: str, *, unsuitable_is_unanswerable: bool = False) -> float:
    """0.0 if the normalised ``prediction`` is "unanswerable" (or, optionally, "unsuitable [image]"), else 1.0.

    Normalisation is the VizWiz API's prediction normalisation (newline/tab -> space, strip, official
    ``processPunctuation`` + ``processDigitArticle``), so "Unanswerable.", '"unanswerable"' and
    "the unanswerable" (articles are dropped) count, while "The question is unanswerable", "not
    answerable" and typographic quotes such as "“unanswerable”" (not in the VQA punctuation list) do not.
    """
    answer = normalize_answer(prediction.replace("\n", " ").replace("\t", " ").strip())
    if answer == UNANSWERABLE or (unsuitable_is_unanswerable and answer in UNSUITABLE):
        return 0.0
    return 1.0
