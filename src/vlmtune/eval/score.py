"""`vlmtune eval score`: score a predictions file made anywhere (vLLM, lmms-eval, another fine-tuning tool) with
the same task code as `vlmtune eval`, without loading a model.

    vlmtune eval score --task vqa --predictions preds.jsonl --vqa-variant official --out scores/

Each line is one JSON object with `id`, `prediction` and the gold answers (see `vlmtune eval score --help`);
`answer_type`, `question_type`, `answerable`, `subset` and `lang` may sit at the top level or under `meta`.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlmtune.data.store import BadRecord, load_json
from vlmtune.eval.runner import META_KEYS
from vlmtune.eval.tasks import TASKS, get_task
from vlmtune.eval.tasks.base import gold
from vlmtune.eval.tasks.base import unlabelled as is_unlabelled
from vlmtune.io import atomic_write_text


def recorded_task(path: str | Path) -> str | None:
    """The task a predictions file's rows record (`task`: written by `vlmtune eval` and `predict`), None when they
    record none; rows of several tasks are refused, naming the file and the first line of each task."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions file")
    first: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                task = load_json(raw).get("task")
            except (json.JSONDecodeError, AttributeError):
                continue  # read_rows names the bad line
            if task is not None:
                if not isinstance(task, str) or task not in TASKS:
                    raise BadRecord(path, lineno, f"unknown task {task!r}; known: {sorted(TASKS)}", raw[:500])
                first.setdefault(task, lineno)
    if len(first) > 1:
        raise ValueError(f"{path}: rows of several tasks (" + ", ".join(f"{t} from line {n}" for t, n in first.items())
                         + "); score one task per file, or pass --task")
    return next(iter(first), None)


def read_rows(path: str | Path, task: str, unlabelled: bool = False) -> list[dict]:
    """The rows of a predictions JSONL, checked: a bad line raises a BadRecord naming the file and line. A row
    without answers is such a line unless `unlabelled` (the predictions of a hidden-label split, shown unscored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions file")
    output = TASKS[task].output if task in TASKS else "text"  # an unknown task is refused where it is scored
    rows, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = load_json(raw)  # nested too deep: a JSONDecodeError, never a RecursionError
            except json.JSONDecodeError as e:
                raise BadRecord(path, lineno, f"malformed JSON: {e.msg} at column {e.colno}", raw[:500]) from None
            if not isinstance(row, dict) or "id" not in row:
                raise BadRecord(path, lineno, "each line must be a JSON object with an 'id'", raw[:500])
            row["id"] = str(row["id"])
            if row["id"] in seen:
                raise BadRecord(path, lineno, f"duplicate id {row['id']!r} (first on line {seen[row['id']]})")
            seen[row["id"]] = lineno
            try:
                _check(row, output, unlabelled)
            except (ValueError, TypeError) as e:
                raise BadRecord(path, lineno, f"id {row['id']!r}: {e}", raw[:500]) from None
            meta = dict(row.get("meta") or {})
            for key in META_KEYS:
                if key in row and key not in meta:
                    meta[key] = row.pop(key)
            if meta:
                row["meta"] = meta
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no predictions")
    return rows


def _check(row: dict, output: str, unlabelled: bool = False) -> None:
    """Refuse a row that does not hold what its task scores (`Task.output`)."""
    if output == "similarity":
        if not isinstance(row.get("similarity"), dict) or not row["similarity"]:
            raise ValueError("'similarity' must be an object {text id: score}")
        if not isinstance(row.get("positives"), list):
            raise ValueError("'positives' must list the ids of the image's own texts")
        return
    if not isinstance(row.get("prediction"), str):
        raise ValueError("'prediction' must be a string")
    if unlabelled and is_unlabelled(row):
        return
    answers = gold(row)
    if not all(isinstance(a, str) for a in answers):
        raise ValueError("answers/references/target must be strings")


def score_file(predictions: str | Path, task: str | None, out: str | Path | None = None, **options) -> dict:
    """Score `predictions` with `task` (None: the task its rows record, else vqa); with `out`, writes metrics.json and
    predictions.jsonl (per-sample scores)."""
    task = task or recorded_task(predictions) or "vqa"
    t = get_task(task)
    rows = read_rows(predictions, task)
    opts = {k: v for k, v in options.items() if v is not None}
    metrics = {"task": task, "predictions": str(predictions), **opts, **t.score_rows(rows, **opts)}
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(out / "predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return metrics
