"""model x dataset -> predictions.jsonl + metrics.json. Batched and resumable: run the same command again and the
rows already written are kept, when nothing they depend on has changed (see `_reusable`).

    vlmtune eval --model runs/tiny_fashion_vqa --data data/fashion --split test --out runs/tiny_fashion_vqa/eval

Under several processes (a torch.distributed process group of world size > 1: `torchrun`, `accelerate launch`,
evaluation during training) each process generates for every world-th sample, the rows are gathered, rank 0 scores
them and writes the files, and every process returns the same rows and metrics as one process would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import stat
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vlmtune.data.images import ImageError, load_images, resolve_inside
from vlmtune.data.sample import Sample
from vlmtune.data.store import load_json
from vlmtune.eval.ranking import retrieval_rows
from vlmtune.eval.tasks.base import Task
from vlmtune.io import atomic_path, atomic_write_text


def _done(path: Path | None) -> dict[str, dict]:
    """Rows already written by an earlier (interrupted) run; a torn last line is ignored."""
    done: dict[str, dict] = {}
    if path is None or not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").split("\n"):  # not splitlines(): a row may hold U+2028
        try:
            row = load_json(line)
            done[row["id"]] = row
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


# ---------------------------------------------------------------- resume: which written rows still hold


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:16]


def _image_key(root: Path, rel: str) -> str:
    """sha256 of an image file's bytes; for a path that is not a readable regular file, a note saying why (never
    equal to a hash, so its row is generated again and generation reports the image). A FIFO or folder is not
    opened: reading a FIFO blocks."""
    try:
        path = resolve_inside(root, rel)
        if not stat.S_ISREG(os.stat(path).st_mode):
            return f"not a regular file: {rel}"
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except (ImageError, OSError) as e:
        return f"unreadable: {rel}: {e}"


def sample_keys(root: Path, samples: list[Sample]) -> dict[str, str]:
    """Per sample id, its `input_hash`: a hash of what its answer depends on in the sample, namely the prompt (its
    messages before the answer), the task and the content of its images (each file read and hashed once). Not the
    reference answers: they do not change what the model answers, and a kept row is scored against the current ones."""
    images: dict[str, str] = {}
    keys = {}
    for s in samples:
        for rel in s.images:
            if rel not in images:
                images[rel] = _image_key(root, rel)
        keys[s.id] = _digest({"messages": s.prompt_messages, "task": s.task, "images": [images[r] for r in s.images],
                              **({"videos": s.videos} if s.videos else {})})
    return keys


def fingerprint_path(out: Path) -> Path:
    """The file beside a predictions file that says what made its rows, the model and the generation settings
    (each row carries its own sample's `input_hash`): preds.jsonl -> preds.fingerprint.json. Kept apart from the
    rows so that two runs making the same predictions write the same predictions file."""
    return out.with_name(f"{out.stem}.fingerprint.json")


def made_by(predictor, prompt: str | None) -> dict:
    """What `fingerprint_path` records: a hash of the model's identity and the settings in full (`prompt`: the
    template applied to each question)."""
    fp = predictor.fingerprint()
    return {"model": _digest(fp["model"]), "settings": {**fp["settings"], "prompt": prompt}}


REASONS = ("model changed", "settings changed", "sample changed", "no fingerprint")
"""Why a written row is generated again."""


def _reusable(out: Path, samples: list[Sample], keys: dict[str, str], now: dict) -> dict[str, dict]:
    """The rows of an earlier run into `out` that may be kept: all of them were made by the same model with the
    same settings (`fingerprint_path`), and each one's sample has the same `input_hash`. A kept row is rebuilt
    from the current sample, so its answers and meta are the current ones (the scores are always computed from
    them); only its prediction comes from the file. Says on stderr how many rows were kept and why the others are
    generated again."""
    previous = _done(out)
    try:
        before = json.loads(fingerprint_path(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        before = None
    if not isinstance(before, dict) or not isinstance(before.get("settings"), dict):
        whole = "no fingerprint"
    else:
        whole = ("model changed" if before.get("model") != now["model"] else
                 "settings changed" if before.get("settings") != now["settings"] else None)
    kept: dict[str, dict] = {}
    why: Counter = Counter()
    rescored = 0
    for s in samples:
        old = previous.get(s.id)
        if old is None:
            continue
        if whole or not isinstance(old.get("prediction"), str) or "input_hash" not in old:
            why[whole or "no fingerprint"] += 1
        elif old["input_hash"] != keys[s.id]:
            why["sample changed"] += 1
        else:
            kept[s.id] = {**row_of(s, old["prediction"], old.get("finish_reason")), "input_hash": keys[s.id]}
            rescored += old.get("answers") != kept[s.id].get("answers")
    if previous:
        note = f"{out}: resumed {len(kept)} of {len(samples)} rows"
        if rescored:
            note += f" ({rescored} scored against changed answers)"
        if why:
            note += f"; generating {sum(why.values())} again: " + " / ".join(f"{r} {why[r]}" for r in REASONS if why[r])
        if whole == "settings changed":
            changed = sorted(k for k in {**before["settings"], **now["settings"]}
                             if before["settings"].get(k) != now["settings"].get(k))
            note += " (" + ", ".join(f"{k} {before['settings'].get(k)!r} -> {now['settings'].get(k)!r}"
                                     for k in changed) + ")"
        print(note, file=sys.stderr)
    return kept


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


AUTO_MIN_NEW_TOKENS = 16
"""`max_new_tokens: auto` never goes below this (the fixed default it replaced): VQA answers keep their old cap."""


def auto_max_new_tokens(tokenizer, samples: list[Sample]) -> tuple[int, str]:
    """`max_new_tokens: auto` (eval.max_new_tokens, `--max-new-tokens auto`): a cap sized from the data instead of
    guessed. The 99th percentile (nearest rank) of the token counts of every gold text of `samples` (a caption's
    references, the VQA answers, a target), counted with the model's own `tokenizer`, + 1 for the end token the model
    must also write, plus 25% (at least 8 tokens) for answers a little longer than the data's; never below
    `AUTO_MIN_NEW_TOKENS`. Returns (cap, a line saying how it was found). The Russian meme captioner generated with a
    fixed 48 and cut its longer captions short; a cap a caption can reach is reported after generation (`predict`)."""
    texts = [t for s in samples if s.answers or s.references or s.messages[-1]["role"] == "assistant"
             for t in s.gold() if t]  # a sample that is only a question has nothing to measure
    if not texts:
        return AUTO_MIN_NEW_TOKENS, (f"max_new_tokens auto: no gold texts to measure, using {AUTO_MIN_NEW_TOKENS} "
                                     "(set --max-new-tokens / eval.max_new_tokens)")
    counts = sorted(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    p99 = counts[math.ceil(0.99 * len(counts)) - 1]
    cap = max(AUTO_MIN_NEW_TOKENS, math.ceil((p99 + 1) * 1.25), p99 + 1 + 8)
    return cap, (f"max_new_tokens auto: {cap} (99th percentile of {len(counts)} gold texts: {p99} tokens, longest "
                 f"{counts[-1]}; + end token + 25%, at least 8, at least {AUTO_MIN_NEW_TOKENS})")


def length_limited(rows: list[dict]) -> dict:
    """How many predictions stopped at max_new_tokens without an end token (`finish_reason` "length"): answers
    possibly cut short. Rows made before `finish_reason` was recorded count as not limited."""
    n = sum(r.get("finish_reason") == "length" for r in rows)
    return {"length_limited": n, "length_limited_fraction": round(n / len(rows), 4) if rows else 0.0}


def warn_length_limited(rows: list[dict], predictor) -> None:
    """The stderr warning at the end of eval/predict when predictions reached the predictor's cap."""
    counts = length_limited(rows)
    if counts["length_limited"]:
        print(f"warning: {counts['length_limited']} of {len(rows)} predictions "
              f"({100 * counts['length_limited_fraction']:.1f}%) reached max_new_tokens={predictor.max_new_tokens} "
              "without an end token and may be cut short; raise --max-new-tokens (eval.max_new_tokens), or use auto",
              file=sys.stderr)


META_KEYS = ("question_type", "answer_type", "answerable", "subset", "chart_type", "lang", "question_id")


def row_of(sample: Sample, prediction: str, finish_reason: str | None = None) -> dict:
    """A predictions-file row: what `eval score`, the error-analysis page and submissions need. `task` is the
    sample's task, so that `eval score` / `eval compare` score the file as what it is; `finish_reason` is
    "length" when the answer reached max_new_tokens (`length_limited`), else "stop". A sample with no answer (a
    hidden-label question) gives a row without "answers", which scoring leaves out (`unlabelled`)."""
    row = {"id": sample.id, "images": sample.images, "question": sample.question, "prediction": prediction}
    if sample.gold():
        row["answers"] = sample.gold()
    row["task"] = sample.task
    if finish_reason is not None:
        row["finish_reason"] = finish_reason
    meta = {k: v for k, v in sample.meta.items() if isinstance(v, (str, int, float, bool))}
    if sample.source:
        meta["source"] = sample.source
    if meta:
        row["meta"] = meta
    return row


def predict(predictor, root: str | Path, samples: list[Sample], out: Path | None = None,
            progress: bool = False, prompt: str | None = None) -> list[dict]:
    """Generate an answer per sample. Rows are appended to `out` as they are made, each with its sample's
    `input_hash`, and `fingerprint_path(out)` records the model and settings that made them. Rows already in `out`
    are kept when all three still hold (see `_reusable`), so a killed run continues where it stopped, and a run
    after a change generates only what the change touched. Under several processes see `_predict_sharded`."""
    rank, world = dist_info()
    return _predict_sharded(predictor, Path(root), samples, out, progress, prompt, rank, world)


# ---------------------------------------------------------------- several processes


def dist_info() -> tuple[int, int]:
    """(rank, world size) of the active torch.distributed process group; (0, 1) without one."""
    try:
        import torch.distributed as dist
    except ImportError:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast(obj, rank: int, world: int):
    """Rank 0's `obj` on every process."""
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_gather(obj, world: int) -> list:
    """Every process's `obj`, in rank order, on every process."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _predict_sharded(predictor, root: Path, samples: list[Sample], out: Path | None, progress: bool,
                     prompt: str | None, rank: int, world: int) -> list[dict]:
    """`predict` under `world` processes (one process does all of it): rank r generates for todo[r::world]
    (todo: the samples not yet in `out`, as rank 0 reads it), the rows of each round of batches are gathered onto
    every process, and rank 0 alone appends them to `out` (so a killed run still resumes) and finally rewrites it in
    dataset order.

    Every process runs the same number of `generate` calls (a process whose share has run out generates for one
    sample and drops the row): sharded models (FSDP, DeepSpeed ZeRO-3) gather their parameters in every forward
    pass, collectively, and would otherwise wait forever for the process that stopped."""
    main = rank == 0
    keys: dict[str, str] = {}
    done: dict[str, dict] = {}
    now = None
    if out is not None:  # rank 0 reads the images and the earlier rows; every process gets the outcome
        if main:
            now, keys = made_by(predictor, prompt), sample_keys(root, samples)
            done = _reusable(out, samples, keys, now)
        keys, done = _broadcast((keys, done), rank, world)
    todo = [s for s in samples if s.id not in done]
    mine = todo[rank::world]
    step = predictor.batch_size
    rounds = math.ceil(math.ceil(len(todo) / world) / step)
    if main and out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, "".join(json.dumps(done[s.id], ensure_ascii=False) + "\n"
                                       for s in samples if s.id in done))
        # after the rows: the rows kept are valid under the old fingerprint and the new one alike
        atomic_write_text(fingerprint_path(out), json.dumps(now, indent=1, ensure_ascii=False) + "\n")
    bar = None
    if progress and main:
        bar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc="predict", file=sys.stderr)
    fh = open(out, "a", encoding="utf-8") if main and out is not None else None
    try:
        for k in range(rounds):
            chunk = mine[k * step : (k + 1) * step]
            batch = chunk or todo[:1]  # an idle process keeps step with the others
            inputs = [predictor.inputs(root, q) if q.videos else (q, load_images(root, q), [])  # videos: as trained
                      for q in (with_prompt(s, prompt) for s in batch)]
            native = {"videos": [x[2] for x in inputs]} if any(x[2] for x in inputs) else {}
            answers = predictor.complete([x[0] for x in inputs], [x[1] for x in inputs], **native)
            rows = [row_of(s, c.text, c.finish_reason) | ({"input_hash": keys[s.id]} if keys else {})
                    for s, c in zip(chunk, answers[: len(chunk)], strict=True)]
            for part in _all_gather(rows, world):
                for row in part:
                    done[row["id"]] = row
                    if fh:
                        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                if bar:
                    bar.update(len(part))
            if fh:
                fh.flush()
    finally:
        if fh:
            fh.close()
        if bar:
            bar.close()
    rows = [done[s.id] for s in samples]
    if main and out is not None:  # the same file one process writes: dataset order
        atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if main:
        warn_length_limited(rows, predictor)
    return rows


SUBMISSIONS = ("vqav2", "vizwiz", "vizwiz-npy")
"""The submission files `write_submission` writes, one per kind."""


def write_submission(rows: list[dict], out_dir: Path, kind: str) -> Path:
    """The official submission file of `kind`, the rows in the order given (the data's order):

    vqav2       submission_vqav2.json    [{"question_id": int, "answer"}]  (VQAv2's EvalAI server)
    vizwiz      submission_vizwiz.json   [{"image": "VizWiz_test_00000000.jpg", "answer"}]  (VizWiz's EvalAI server)
    vizwiz-npy  submission_vizwiz.npy    the answer strings alone, in the order of the test file's questions:
                                         `np.save(path, np.array(answers))`, a 1-D array of dtype <U(longest
                                         answer), byte for byte what the original VizWiz project's pipeline wrote
                                         for its competition (`np.save("submission.npy", np.array(answers))`)

    The .npy names no image, so its answers are matched to the questions by position alone; see `check_order`."""
    if kind == "vqav2":
        items = [{"question_id": int((r.get("meta") or {}).get("question_id", r["id"])), "answer": r["prediction"]}
                 for r in rows]
    elif kind == "vizwiz":
        items = [{"image": Path(r["images"][0]).name, "answer": r["prediction"]} for r in rows]
    elif kind == "vizwiz-npy":
        path = out_dir / "submission_vizwiz.npy"
        check_order([Path(r["images"][0]).name for r in rows], path)
        # dtype=str: the same array as np.array(answers) (fixed-width unicode, as wide as the longest answer),
        # and still a string array when there is no answer at all
        answers = np.array([r["prediction"] for r in rows], dtype=str)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, answers)
        return path
    else:
        raise ValueError(f"unknown submission format {kind!r}; known: {', '.join(SUBMISSIONS)}")
    path = out_dir / f"submission_{kind}.json"
    atomic_write_text(path, json.dumps(items, ensure_ascii=False) + "\n")
    return path


_VIZWIZ_IMAGE = re.compile(r"VizWiz_[A-Za-z]+_(\d+)\.\w+")
"""VizWiz's image names carry the question's position in its split's file: VizWiz_test_00000042.jpg is the 43rd."""


def check_order(images: list[str], path: Path) -> None:
    """Refuse an answers-only submission whose rows are not questions 0, 1, 2, ... of the test file, in order, when
    the images carry VizWiz's numbered names (other names cannot be checked: the rows are taken in the data's order).
    A question left out (a bad record skipped with --skip-bad) or out of place would shift every answer after it
    onto the wrong question, silently."""
    found = [_VIZWIZ_IMAGE.fullmatch(name) for name in images]
    if not all(found):
        return
    for k, (name, m) in enumerate(zip(images, found, strict=True)):
        if int(m[1]) != k:
            raise ValueError(
                f"{path}: an answers-only submission is matched to the questions by position, so answer {k} must be "
                f"question {k} of the test file, but row {k} is {name} (question {int(m[1])}): a question is missing "
                "(skipped as bad?) or out of order, which would shift every answer after it. Evaluate the whole "
                "test split in its order, or submit the JSON (--submission vizwiz), which names each image")


def evaluate(predictor, root: str | Path, samples: list[Sample], task: Task, out_dir: str | Path | None = None,
             progress: bool = False, prompt: str | None = None, submission: str | list[str] | None = None,
             **options) -> dict:
    """Predict and score; with `out_dir`, writes predictions.jsonl (with per-sample scores) and metrics.json there,
    and the official submission files for VQAv2/VizWiz data (`submission`: one kind of `SUBMISSIONS` or a list;
    by default detected from the samples' source). Samples without answers (a hidden-label split) are predicted,
    written and put in the submission, and not scored: "unlabelled" counts them, "n" counts the rows scored.

    Under several processes each one predicts its share (see `predict`), rank 0 scores all rows and writes the
    files, and every process returns rank 0's metrics (an error in scoring is raised on every process)."""
    out_dir = Path(out_dir) if out_dir else None
    rank, world = dist_info()
    if task.output == "similarity":
        # every image is scored against every text: not sharded, each process computes the same rows
        rows = retrieval_rows(predictor, root, samples, progress and rank == 0)
    else:
        rows = predict(predictor, root, samples, out_dir / "predictions.jsonl" if out_dir else None, progress, prompt)
    if world == 1:
        return _score(rows, samples, task, out_dir, submission, options)
    result = None
    if rank == 0:
        try:
            result = {"metrics": _score(rows, samples, task, out_dir, submission, options)}
        except Exception as e:
            _broadcast({"error": f"{type(e).__name__}: {e}"}, rank, world)
            raise
    result = _broadcast(result, rank, world)
    if "error" in result:
        raise RuntimeError(f"scoring failed on rank 0: {result['error']}")
    return result["metrics"]


def _score(rows: list[dict], samples: list[Sample], task: Task, out_dir: Path | None, submission: str | None,
           options: dict) -> dict:
    """Metrics of predicted rows (+ predictions.jsonl, metrics.json and the submission file under `out_dir`). Each
    row records the task it was scored as (`eval compare` and `eval score` read it back)."""
    for r in rows:
        r["task"] = task.name
    metrics = {"task": task.name, **{k: v for k, v in options.items() if v is not None},
               **task.score_rows(rows, **{k: v for k, v in options.items() if v is not None})}
    if metrics.get("unlabelled"):
        print(f"{metrics['unlabelled']} of {len(rows)} samples have no answer (a hidden-label split): their "
              f"predictions are written and not scored; {metrics['n']} scored", file=sys.stderr)
    if task.output == "text":
        metrics |= length_limited(rows)
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "predictions.jsonl",
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        sources = {s.source for s in samples}
        kinds = ([submission] if isinstance(submission, str) else list(submission or [])) or (
            [sources.pop()] if len(sources) == 1 and sources <= {"vqav2", "vizwiz"} else [])
        if kinds and task.submission:
            paths = [str(write_submission(rows, out_dir, kind)) for kind in dict.fromkeys(kinds)]
            metrics["submission"] = paths[0] if len(paths) == 1 else paths
        atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return metrics
