"""model x dataset -> predictions.jsonl + metrics.json. Batched, resumable (finished ids are not redone).

    vlmtune eval --model runs/tiny_fashion_vqa --data data/fashion --split test --out runs/tiny_fashion_vqa/eval
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vlmtune.data.images import load_image, resolve_inside
from vlmtune.data.sample import Sample
from vlmtune.data.store import atomic_write_text
from vlmtune.eval.tasks import Task, aggregate


def load_images(root: Path, sample: Sample) -> list:
    return [load_image(resolve_inside(root, rel)) for rel in sample.images]


def _done(path: Path | None) -> dict[str, dict]:
    """Rows already written by an earlier (interrupted) run; a torn last line is ignored."""
    done: dict[str, dict] = {}
    if path is None or not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            done[row["id"]] = row
        except (json.JSONDecodeError, KeyError):
            continue
    return done


def predict(predictor, root: str | Path, samples: list[Sample], out: Path | None = None,
            task: Task | None = None, progress: bool = False) -> list[dict]:
    """Generate an answer per sample. Rows are appended to `out` as they are made; rows already in `out` are
    reused, so a killed run continues where it stopped."""
    root = Path(root)
    done = _done(out)
    todo = [s for s in samples if s.id not in done]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        # rewrite what is kept (drops a torn line) before appending
        atomic_write_text(out, "".join(json.dumps(done[s.id], ensure_ascii=False) + "\n"
                                       for s in samples if s.id in done))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc="predict", file=sys.stderr)
    fh = open(out, "a", encoding="utf-8") if out is not None else None
    try:
        step = predictor.batch_size
        for i in range(0, len(todo), step):
            chunk = todo[i : i + step]
            answers = predictor.generate(chunk, [load_images(root, s) for s in chunk])
            for s, a in zip(chunk, answers, strict=True):
                row = {"id": s.id, "images": s.images, "question": s.question, "prediction": a, "answers": s.gold()}
                if s.meta:
                    row["meta"] = {k: v for k, v in s.meta.items() if isinstance(v, (str, int, float, bool))}
                if task is not None:
                    row["scores"] = task.score(a, s)
                done[s.id] = row
                if fh:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                    fh.flush()
            if bar:
                bar.update(len(chunk))
    finally:
        if fh:
            fh.close()
        if bar:
            bar.close()
    return [done[s.id] for s in samples]


def evaluate(predictor, root: str | Path, samples: list[Sample], task: Task, out_dir: str | Path | None = None,
             progress: bool = False) -> dict:
    """Predict and score; with `out_dir`, writes predictions.jsonl and metrics.json there."""
    out_dir = Path(out_dir) if out_dir else None
    rows = predict(predictor, root, samples, out_dir / "predictions.jsonl" if out_dir else None, task, progress)
    by_id = {s.id: s for s in samples}
    for r in rows:  # rows reused from an earlier run of another task get rescored
        if "scores" not in r or set(r["scores"]) != set(task.metrics):
            r["scores"] = task.score(r["prediction"], by_id[r["id"]])
    metrics = {"task": task.name, **aggregate(task, rows)}
    if out_dir:
        atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
