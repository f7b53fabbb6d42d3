"""Evaluation metrics. Each metric takes ``(prediction, answers)`` and returns a float in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable

from vlmtune.eval.metrics.exact_match import exact_match
from vlmtune.eval.metrics.vqa import normalize_answer, vqa_accuracy

__all__ = ["METRICS", "exact_match", "normalize_answer", "vqa_accuracy"]

METRICS: dict[str, Callable[[str, list[str]], float]] = {
    "vqa_accuracy": vqa_accuracy,
    "exact_match": exact_match,
}
