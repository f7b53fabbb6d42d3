"""What a task is: `Task` (its metrics and how it scores rows) and `Row` (a line of a predictions file), with the
two questions every task asks of a row (`gold`, `unlabelled`). Each task file (`vqa.py`, `caption.py`, ...) builds
one `Task` from these; the registry in `__init__.py` gathers them. See `__init__.py` for the rows of each task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

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
    output: Literal["text", "similarity"] = "text"
    """What the runner asks the model for each sample: generated `text` (the row's "prediction", scored against its
    gold answers), or the `similarity` of its image to every text of the set, from the model's likelihood of each
    text (`eval/ranking.py`; the row holds "similarity" and "positives", and no prediction): retrieval."""
    submission: bool = False
    """Its predictions can be written as the official submission files (`eval.runner.SUBMISSIONS`: VQAv2, VizWiz)."""

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
