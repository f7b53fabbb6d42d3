"""Pseudo-labelling: caption unlabelled images, or answer questions about them, with a model: `vlmtune data autolabel`.

    vlmtune data autolabel photos/ --model runs/tiny_fashion_vqa --task caption --out data/photos-captions
    vlmtune data autolabel photos/ --model runs/x --task vqa --questions questions.txt --out data/photos-vqa
    vlmtune data autolabel data/unanswered --model runs/x --task vqa --prompt "{question} Answer in one word."
    torchrun --nproc_per_node 4 -m vlmtune.cli data autolabel photos/ --model runs/x --task caption --out data/c

Input: a folder of images (every image file under it, hidden ones skipped; in file-name order), or a vlmtune dataset
whose samples lack targets (their last turn is a user turn). Samples of such a dataset that already have a target
are copied unchanged. Which prompt the model is given:
* caption, folder: `--prompt` (default "Write a short caption for the image.") is the user turn of every sample;
* vqa, folder: every question of `--questions` (a text file, one question per line, "#" comments) about every image;
* a dataset: each sample's own user turn; there, and with --questions, `--prompt` is a template containing
  "{question}" that rewrites the question for generation only (LLaVA's "{question}\nAnswer the question using a
  single word or phrase."); the stored sample keeps the plain question, meta["autolabel"]["prompt"] the text used.

Generation is `eval/runner.py`'s `predict` (the Predictor, as `vlmtune predict --model` builds it: a run, checkpoint
or model directory): batched, resumable (rows go to OUT/.autolabel/predictions.jsonl as they are made; a re-run
continues where it stopped, refusing to mix in rows made with another model, prompt or setting), and sharded when
started as several processes (torchrun / accelerate launch): each process labels its share, rank 0 writes OUT, and
the result is the one a single process gives.

Output: a vlmtune dataset in OUT (default: SRC-autolabel beside SRC): manifest.jsonl + the images (copied, at
images/<path in the folder>, or at their dataset paths), usable by `vlmtune train` as it is. Each labelled sample has
`source = "autolabel:<name of the --model path>"`, the answer as target (and in `answers` / `references`), split
"train" unless the dataset gave it one (pseudo-labels are training data: validate on human labels, or re-split with
`vlmtune data split`), and

    meta["autolabel"] = {"model": "runs/x", "model_dir": "/abs/runs/x/best", "config_hash": "sha256 of its
                         config/adapter/vlmtune json files", "prompt": "...", "task": "caption",
                         "generation": {"max_new_tokens": 32, "greedy": true, "num_beams": 1}}

Empty or garbage generations (nothing, no letter or digit, one word repeated 4+ times in a row) are NOT written
to the manifest (training on them teaches the garbage; the store refuses empty targets anyway): they are listed in
OUT/flagged.jsonl (id, image, prompt, prediction, problem) and counted, with their ids, in the printed result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Literal

from vlmtune.data.formats.base import IMAGE_SUFFIXES, copy_image
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.store import MANIFEST, read_samples, write_jsonl
from vlmtune.eval.runner import dist_info, predict, with_prompt
from vlmtune.io import atomic_write_text

Task = Literal["caption", "vqa"]
DEFAULT_CAPTION_PROMPT = "Write a short caption for the image."
STATE_DIR = ".autolabel"
FLAGGED = "flagged.jsonl"
_REPEATED_WORD = re.compile(r"\b(\w+)(?:\W+\1\b){3,}", re.IGNORECASE)


def problem_of(text: str) -> str | None:
    """Why a generation is unusable as a label, or None when it looks like text."""
    if not text.strip():
        return "empty"
    if not any(c.isalnum() for c in text):
        return "no letters or digits"
    if _REPEATED_WORD.search(text):
        return "one word repeated 4+ times in a row"
    return None


def read_questions(path: str | Path) -> list[str]:
    """One question per line; blank lines and lines starting with "#" are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such questions file")
    questions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    questions = [q for q in questions if q and not q.startswith("#")]
    if not questions:
        raise ValueError(f"{path}: no questions (one per line)")
    return questions


def _folder_samples(folder: Path, task: Task, prompt: str | None, questions: list[str] | None) -> list[Sample]:
    """One sample per image (caption) or per image and question (vqa), ids = paths inside the folder."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) and no {MANIFEST}")
    if task == "caption":
        text = prompt or DEFAULT_CAPTION_PROMPT
        return [Sample(id=rel, messages=[user(text)], images=[rel], task=task, split="train") for rel in files]
    if not questions:
        raise ValueError("autolabel --task vqa on a folder of images needs --questions FILE (one question per line)")
    return [Sample(id=f"{rel}#q{k}", messages=[user(q)], images=[rel], task=task, split="train")
            for rel in files for k, q in enumerate(questions, start=1)]


def config_hash(model_dir: Path) -> str:
    """sha256 over the model directory's config.json, adapter_config.json, generation_config.json and vlmtune.json
    (those that exist): which architecture, adapter and checkpoint made the labels, without reading the weights."""
    h = hashlib.sha256()
    for name in ("config.json", "adapter_config.json", "generation_config.json", "vlmtune.json"):
        if (model_dir / name).is_file():
            h.update(name.encode() + b"\0" + (model_dir / name).read_bytes() + b"\0")
    return h.hexdigest()


def _check_state(state: Path, params: dict, write: bool, verb: str = "autolabel") -> None:
    """Refuse to resume rows made with other settings; record these settings (rank 0 only writes)."""
    path = state / "params.json"
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != params:
            diff = sorted(k for k in set(before) | set(params) if before.get(k) != params.get(k))
            raise ValueError(f"{state}: an earlier {verb} run into this directory used other settings "
                             f"({', '.join(diff)}); use another --out, or delete {state} to start again")
    elif write:  # atomically: the other processes may be reading it at this moment
        atomic_write_text(path, json.dumps(params, indent=1, ensure_ascii=False) + "\n")


def autolabel(predictor, model: str | Path, src: str | Path, task: Task, out: str | Path | None = None,
              prompt: str | None = None, questions: str | Path | None = None, progress: bool = False,
              model_dir: str | Path | None = None) -> dict:
    """Label the images of `src` (a folder, or a dataset whose samples lack targets) with `predictor`, made from
    `model` (recorded in each sample); see the module docstring. Returns the summary the CLI prints. `model_dir`:
    the model directory `model` names (`vlmtune.runs.resolve_model_dir`: a run's best checkpoint), recorded with the
    hash of its config files; default `model` itself, which must then be a model directory."""
    if task not in ("caption", "vqa"):
        raise ValueError(f"autolabel: unknown task {task!r}; choose caption or vqa")
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such folder or dataset directory")
    out = Path(out) if out else src.parent / f"{src.name}-autolabel"
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise ValueError(f"{out}: the output must be a new directory outside {src}")
    asked = read_questions(questions) if questions else None
    if (src / MANIFEST).is_file():
        if asked:
            raise ValueError("autolabel --questions is for a folder of images; a dataset's samples carry their own")
        samples, _ = read_samples(src, check_images=False)  # a bad record raises, naming file and line
        todo = [s for s in samples if not s.has_target]
        out_rel = str
        template = prompt
    else:
        samples = todo = _folder_samples(src, task, prompt, asked)
        out_rel = "images/{}".format
        template = prompt if asked else None  # caption: --prompt was the user turn itself
    if not todo:
        raise ValueError(f"{src}: every sample already has a target; nothing to label")
    if template and "{question}" not in template:
        raise ValueError(f"autolabel --prompt {template!r}: here it is a template and must contain {{question}}")

    model_dir = Path(model_dir if model_dir is not None else model)
    if not any((model_dir / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise ValueError(f"autolabel: {model_dir} is not a model directory (no config.json or adapter_config.json); "
                         "for a run, pass model_dir=vlmtune.runs.resolve_model_dir(model)")
    generation = {"max_new_tokens": predictor.max_new_tokens, "greedy": predictor.num_beams == 1,
                  "num_beams": predictor.num_beams}
    record = {"model": str(model), "model_dir": str(model_dir.resolve()), "config_hash": config_hash(model_dir),
              "task": task, "generation": generation}
    rank, _ = dist_info()
    state = out / STATE_DIR
    _check_state(state, {**record, "prompt": prompt, "questions": asked, "source": str(src.resolve())},
                 write=rank == 0)

    rows = predict(predictor, src, todo, state / "predictions.jsonl", progress=progress, prompt=template)
    name = Path(model).resolve().name
    labelled, flagged = {}, []
    for s, row in zip(todo, rows, strict=True):
        text = row["prediction"].strip()
        used = with_prompt(s, template).question
        problem = problem_of(text)
        if problem:
            flagged.append({"id": s.id, "images": s.images, "prompt": used, "prediction": text, "problem": problem})
            continue
        labelled[s.id] = dataclasses.replace(
            s, messages=[*s.messages, assistant(text)], images=[out_rel(r) for r in s.images], task=task,
            answers=[text] if task == "vqa" else None, references=[text] if task == "caption" else None,
            source=f"autolabel:{name}", split=s.split or "train",
            meta={**s.meta, "autolabel": {**record, "prompt": used}})
    todo_ids = {s.id for s in todo}
    written = [labelled.get(s.id, s) for s in samples if s.id in labelled or s.id not in todo_ids]
    result = {"out": str(out), "task": task, "model": str(model), "labelled": len(labelled),
              "flagged": len(flagged), "flagged_ids": [f["id"] for f in flagged],
              "kept": len(samples) - len(todo), "samples": len(written)}
    if rank != 0:  # several processes: rank 0 writes the dataset
        return result
    if flagged:
        print(f"warning: {len(flagged)} of {len(todo)} generation(s) were empty or garbage and were left out; "
              f"listed in {out / FLAGGED}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    sources = {s.id: s.images for s in samples}  # where each written sample's images are in SRC
    for s in written:
        for rel, dest in zip(sources[s.id], s.images, strict=True):
            copy_image(src / rel, out, dest)
    write_jsonl(out / MANIFEST, (s.to_json() for s in written))
    if flagged:
        write_jsonl(out / FLAGGED, flagged)
    elif (out / FLAGGED).exists():
        (out / FLAGGED).unlink()  # from an earlier run
    return result
