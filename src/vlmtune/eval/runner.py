"""model x dataset -> predictions.jsonl + metrics.json. Batched, resumable (finished ids are not redone).

    vlmtune eval --model runs/tiny_fashion_vqa --data data/fashion --split test --out runs/tiny_fashion_vqa/eval
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from vlmtune.data.images import load_image, resolve_inside
from vlmtune.data.sample import Sample
from vlmtune.data.store import atomic_write_text
from vlmtune.eval.tasks import Task


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


def with_prompt(sample: Sample, template: str | None) -> Sample:
    """The sample with its last question rewritten by `template` ("{question}" is the original text), e.g.
    "{question}\nAnswer the question using a single word or phrase." (LLaVA-1.5's VQAv2 prompt)."""
    if not template:
        return sample
    if "{question}" not in template:
        raise ValueError(f"prompt template {template!r} must contain {{question}}")
    messages = [dict(m) for m in sample.prompt_messages]
    k = max(i for i, m in enumerate(messages) if m["role"] == "user")
    content = [dict(part) for part in messages[k]["content"]]
    texts = [i for i, part in enumerate(content) if part.get("type") == "text"]
    content[texts[-1]]["text"] = template.format(question=content[texts[-1]]["text"])
    messages[k] = {**messages[k], "content": content}
    return dataclasses.replace(sample, messages=messages + sample.messages[len(sample.prompt_messages):])


META_KEYS = ("question_type", "answer_type", "answerable", "subset", "chart_type", "lang", "question_id")


def row_of(sample: Sample, prediction: str) -> dict:
    """A predictions-file row: what `eval score`, the error-analysis page and submissions need."""
    row = {"id": sample.id, "images": sample.images, "question": sample.question, "prediction": prediction,
           "answers": sample.gold()}
    meta = {k: v for k, v in sample.meta.items() if isinstance(v, (str, int, float, bool))}
    if sample.source:
        meta["source"] = sample.source
    if meta:
        row["meta"] = meta
    return row


def predict(predictor, root: str | Path, samples: list[Sample], out: Path | None = None,
            progress: bool = False, prompt: str | None = None) -> list[dict]:
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
            answers = predictor.generate([with_prompt(s, prompt) for s in chunk],
                                         [load_images(root, s) for s in chunk])
            for s, a in zip(chunk, answers, strict=True):
                row = row_of(s, a)
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


def write_submission(rows: list[dict], out_dir: Path, kind: str) -> Path:
    """The official submission file: VQAv2 [{"question_id": int, "answer"}], VizWiz [{"image": file, "answer"}]."""
    if kind == "vqav2":
        items = [{"question_id": int((r.get("meta") or {}).get("question_id", r["id"])), "answer": r["prediction"]}
                 for r in rows]
    elif kind == "vizwiz":
        items = [{"image": Path(r["images"][0]).name, "answer": r["prediction"]} for r in rows]
    else:
        raise ValueError(f"unknown submission format {kind!r}; known: vqav2, vizwiz")
    path = out_dir / f"submission_{kind}.json"
    atomic_write_text(path, json.dumps(items, ensure_ascii=False) + "\n")
    return path


def evaluate(predictor, root: str | Path, samples: list[Sample], task: Task, out_dir: str | Path | None = None,
             progress: bool = False, prompt: str | None = None, submission: str | None = None,
             **options) -> dict:
    """Predict and score; with `out_dir`, writes predictions.jsonl (with per-sample scores) and metrics.json there,
    and the official submission file for VQAv2/VizWiz data (`submission`, or detected from the samples' source)."""
    out_dir = Path(out_dir) if out_dir else None
    if task.name == "retrieval":
        from vlmtune.eval.tasks.retrieval import retrieval_rows

        rows = retrieval_rows(predictor, root, samples, progress)
    else:
        rows = predict(predictor, root, samples, out_dir / "predictions.jsonl" if out_dir else None, progress, prompt)
    metrics = {"task": task.name, **{k: v for k, v in options.items() if v is not None},
               **task.score_rows(rows, **{k: v for k, v in options.items() if v is not None})}
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "predictions.jsonl",
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        sources = {s.source for s in samples}
        kind = submission or (sources.pop() if len(sources) == 1 and sources <= {"vqav2", "vizwiz"} else None)
        if kind and task.name == "vqa":
            metrics["submission"] = str(write_submission(rows, out_dir, kind))
        atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return metrics
