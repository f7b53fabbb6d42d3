"""Chart question answering (ChartQA): relaxed accuracy as Pix2Struct/MatCha/DePlot report it (numbers within 5%,
otherwise a case-insensitive exact match), per subset (human / augmented). ChartQA's headline number is the mean of
the human and augmented test sets (1,250 questions each), which the overall mean equals when both are complete.

Rows: {"id", "prediction", "target": "14", "meta": {"subset": "human"}} (or "answers": [several targets]).
"""

from __future__ import annotations

from vlmtune.eval.metrics.chartqa import relaxed_accuracy_any
from vlmtune.eval.metrics.exact_match import exact_match
from vlmtune.eval.tasks.base import Row, Task, gold


def per_sample(prediction: str, row: Row, options: dict) -> dict[str, float]:
    targets = gold(row)
    return {"relaxed_accuracy": relaxed_accuracy_any(prediction, targets),
            "exact_match": exact_match(prediction, targets)}


TASK = Task(
    name="chartqa",
    description="chart question answering (ChartQA, PlotQA-style numeric answers)",
    metrics=("relaxed_accuracy", "exact_match"),
    primary="relaxed_accuracy",
    per_sample=per_sample,
    breakdown=("subset", "chart_type", "source"),
)
