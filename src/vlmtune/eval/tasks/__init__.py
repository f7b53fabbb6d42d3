"""Tasks: what a dataset is asked and how its answers are scored, one file each; TASKS is the registry.

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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]


def gold(row: Row) -> list[str]:
    """A row's acceptable answers: `answers`, else `references`, else [`target`]."""
    for key in ("answers", "references"):
        if row.get(key):
            return list(row[key])
    if row.get("target") is not None:
        return [row["target"]]
    raise ValueError(f"row {row.get('id')!r}: no 'answers', 'references' or 'target' to score against")


def unlabelled(row: Row) -> bool:
    """A prediction with nothing to score it against: the row of a question whose answers are hidden (VizWiz's
    test split). Retrieval rows have no prediction and are never unlabelled."""
    return "prediction" in row and not (row.get("answers") or row.get("references")) and row.get("target") is None


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    metrics: tuple[str, ...]
    """Every metric the task reports (a probe's or eval's selection metric must be one of them)."""
    primary: str
    """The metric reported first and used to pick the best checkpoint by default."""
    per_sample: Callable[[str, Row, dict], dict[str, float]] | None = None
    """(prediction, row, options) -> {metric: value} for one row."""
    corpus: Callable[[list[Row], dict], tuple[dict, dict]] | None = None
    """(rows, options) -> ({metric: corpus value}, {row id: {metric: value}}) over all rows at once."""
    breakdown: tuple[str, ...] = ()
    """Row meta keys whose values get their own averages (e.g. question_type)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Default options (e.g. {"vqa_variant": "official"}); overridden per call."""

    def score_rows(self, rows: list[Row], **options) -> dict:
        """Fill each row's "scores" and return the task's metrics: corpus values, per-sample means, breakdowns.
        `unlabelled` rows get no scores; their number is reported as "unlabelled" (and "n" counts the others)."""
        hidden = sum(map(unlabelled, rows))
        if hidden:
            rows = [r for r in rows if not unlabelled(r)]
            return {**self.score_rows(rows, **options), "unlabelled": hidden}
        opts = {**self.options, **options}
        if not rows:
            return {"n": 0}
        for r in rows:
            r["scores"] = self.per_sample(r["prediction"], r, opts) if self.per_sample else {}
        corpus: dict = {}
        if self.corpus:
            corpus, per_id = self.corpus(rows, opts)
            for r in rows:
                r["scores"].update(per_id.get(r["id"], {}))
        out: dict = {"n": len(rows)}
        keys = [m for m in self.metrics if m in corpus or all(m in r["scores"] for r in rows)]
        for m in keys:
            out[m] = corpus[m] if m in corpus else sum(r["scores"][m] for r in rows) / len(rows)
        out.update({k: v for k, v in corpus.items() if k not in out})
        for key in self.breakdown:
            groups: dict[str, list[Row]] = {}
            for r in rows:
                value = (r.get("meta") or {}).get(key)
                if value is not None:
                    groups.setdefault(str(value), []).append(r)
            if groups:
                out[f"by_{key}"] = {
                    v: {"n": len(g), **{m: sum(r["scores"][m] for r in g) / len(g) for m in keys
                                        if all(m in r["scores"] for r in g)}}
                    for v, g in sorted(groups.items())
                }
        return out


def _registry() -> dict[str, Task]:
    from vlmtune.eval.tasks import caption, chart_to_table, chartqa, docvqa, retrieval, vqa

    return {t.TASK.name: t.TASK for t in (vqa, caption, chartqa, chart_to_table, docvqa, retrieval)}


TASKS: dict[str, Task] = _registry()


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


def aggregate(task: Task, rows: list[Row], **options) -> dict:
    """Score `rows` with `task` (fills their "scores") and return the metrics."""
    return task.score_rows(rows, **options)


__all__ = ["TASKS", "Row", "Task", "aggregate", "get_task", "gold", "unlabelled"]
