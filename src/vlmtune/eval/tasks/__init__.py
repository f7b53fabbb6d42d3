"""Tasks: what a dataset is asked and how its answers are scored, one file each (a `Task` of `base.py`); TASKS is
the registry.

A task scores *rows*, the lines of a predictions file:

    {"id": "42", "prediction": "two", "answers": ["2", "two", ...], "meta": {"question_type": "how many"}}   vqa
    {"id": "7", "prediction": "a dog on grass", "references": ["A dog ...", ...], "meta": {"lang": "en"}}    caption
    {"id": "c1", "prediction": "14", "target": "14"}                                                         chartqa

so predictions made by vlmtune (`vlmtune eval`, eval inside training) and predictions made anywhere else
(`vlmtune eval score --predictions FILE.jsonl`) go through the same code. Per-sample metrics are averaged; corpus
metrics (BLEU, CIDEr, answerability AP, ...) are computed over all rows at once and also give per-sample values
(for the gallery). Breakdowns average the per-sample values within each meta value (e.g. per answer type).

A row with a prediction and no gold answer is `unlabelled` (a question of a hidden-label test split, such as
VizWiz's): it is left unscored and counted under "unlabelled"; "n" counts the rows scored.
"""

from __future__ import annotations

from vlmtune.eval.tasks import caption, chart_to_table, chartqa, docvqa, retrieval, vqa
from vlmtune.eval.tasks.base import Row, Task

TASKS: dict[str, Task] = {t.TASK.name: t.TASK for t in (vqa, caption, chartqa, chart_to_table, docvqa, retrieval)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


def aggregate(task: Task, rows: list[Row], **options) -> dict:
    """Score `rows` with `task` (fills their "scores") and return the metrics."""
    return task.score_rows(rows, **options)


__all__ = ["TASKS", "aggregate", "get_task"]
