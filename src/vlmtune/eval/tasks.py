"""Tasks: what a dataset is asked and how its answers are scored. TASKS is the registry.

A task scores one prediction against a Sample's gold answers with every metric of its set; the runner
averages them, overall and per question/answer type (from `Sample.meta`).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmtune.data.sample import Sample
from vlmtune.eval.metrics import METRICS


@dataclass(frozen=True)
class Task:
    name: str
    metrics: tuple[str, ...]
    primary: str
    """The metric reported first and used to pick the best checkpoint by default."""
    breakdown: tuple[str, ...] = ()
    """Sample.meta keys whose values get their own averages (e.g. question_type)."""

    def score(self, prediction: str, sample: Sample) -> dict[str, float]:
        gold = sample.gold()
        return {m: METRICS[m](prediction, gold) for m in self.metrics}


TASKS: dict[str, Task] = {
    "vqa": Task("vqa", ("vqa_accuracy", "exact_match"), "vqa_accuracy", ("question_type", "answer_type")),
    "caption": Task("caption", ("exact_match",), "exact_match"),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


def aggregate(task: Task, rows: list[dict]) -> dict:
    """Mean of each metric over `rows` (each {"scores": {...}, "meta": {...}}), plus breakdowns by meta key."""
    if not rows:
        return {"n": 0}
    out: dict = {"n": len(rows)}
    for m in task.metrics:
        out[m] = sum(r["scores"][m] for r in rows) / len(rows)
    for key in task.breakdown:
        groups: dict[str, list[dict]] = {}
        for r in rows:
            value = (r.get("meta") or {}).get(key)
            if value is not None:
                groups.setdefault(str(value), []).append(r)
        if groups:
            out[f"by_{key}"] = {
                v: {"n": len(g), **{m: sum(r["scores"][m] for r in g) / len(g) for m in task.metrics}}
                for v, g in sorted(groups.items())
            }
    return out
