"""VizWiz VQA (https://vizwiz.org/tasks-and-datasets/vqa/): one JSON list per split.

    Annotations/val.json   [{"image": "VizWiz_val_00000000.jpg", "question": "What is this?",
                             "answers": [{"answer": "cereal", "answer_confidence": "yes"}, ... 10 in all],
                             "answer_type": "other", "answerable": 1}, ...]
    val/VizWiz_val_00000000.jpg

`src` is either one split's JSON file (images in `--images`) or the dataset directory (Annotations/ or annotations/
plus one image folder per split). Each record becomes one VQA Sample: `answers` keeps the ten human answers as given
(never normalised: the metric normalises, the training text must not; each must be a string: a null answer is a bad
record, not the answer "None"), the target is the most frequent of them (ties: the first given), and `meta` keeps
answer_type, answerable and the confidences. Test-split records have no answers: their Sample ends with the question.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from vlmtune.data.formats.base import (
    BadRecord,
    Format,
    Imported,
    Record,
    copy_image,
    image_ref,
    load_json,
    text_value,
    write_json,
)
from vlmtune.data.sample import Sample, assistant, user


def majority(answers: list[str]) -> str:
    """The most frequent answer; ties go to the one given first."""
    counts = Counter(answers)
    return max(answers, key=lambda a: (counts[a], -answers.index(a)))


def _split_files(src: Path, images: Path | None) -> list[tuple[Path, Path]]:
    if src.is_file():
        return [(src, images or src.parent)]
    ann = next((src / d for d in ("Annotations", "annotations") if (src / d).is_dir()), None)
    if ann is None:
        raise FileNotFoundError(f"{src}: neither a VizWiz JSON file nor a directory with Annotations/")
    return [(f, (images or src) / f.stem) for f in sorted(ann.glob("*.json"))]


def _sample(row: dict, split: str | None, file: Path, i: int, images: Path) -> Imported:
    if not isinstance(row, dict):
        raise ValueError("a record must be a JSON object")
    image, question = row.get("image"), row.get("question")
    if not isinstance(image, str) or not image:
        raise ValueError("missing 'image'")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{image}: missing or empty 'question'")
    messages = [user(question)]
    answers, meta = None, {}
    if "answers" in row:
        raw = row["answers"]
        if not isinstance(raw, list) or not raw or not all(isinstance(a, dict) and "answer" in a for a in raw):
            raise ValueError(f"{image}: 'answers' must be a non-empty list of {{'answer': ...}} objects")
        answers = [text_value(a["answer"], f"{image}: answers[{j}].answer") for j, a in enumerate(raw)]
        messages.append(assistant(majority(answers)))
        meta["answer_confidence"] = [a.get("answer_confidence") for a in raw]
    for key in ("answer_type", "answerable"):
        if key in row:
            meta[key] = row[key]
    sample = Sample(id=Path(image).stem, messages=messages, images=[f"images/{image}"], task="vqa", answers=answers,
                    source="vizwiz", split=split, meta=meta)
    return Imported(sample, [image_ref(images, image, f"{file} record {i}")], file, i + 1)


def read(src: Path, images: Path | None) -> Iterator[Record]:
    for file, image_dir in _split_files(Path(src), images):
        try:
            rows = load_json(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            yield BadRecord(file, 0, f"malformed JSON: {e}")
            continue
        if not isinstance(rows, list):
            yield BadRecord(file, 0, "expected a JSON list of questions")
            continue
        split = file.stem.lower()
        for i, row in enumerate(rows):
            try:
                yield _sample(row, split, file, i, image_dir)
            except ValueError as e:
                yield BadRecord(file, i + 1, f"record {i}: {e}", json.dumps(row, ensure_ascii=False)[:500])


def write(items: Iterable[tuple[Sample, list[Path]]], dest: Path) -> dict:
    """The VizWiz layout: Annotations/<split>.json and <split>/<image> (split "" -> "all")."""
    by_split: dict[str, list[dict]] = {}
    for sample, paths in items:
        if len(paths) != 1:
            raise ValueError(f"sample {sample.id!r}: VizWiz holds exactly one image per question")
        split = sample.split or "all"
        name = Path(sample.images[0]).name
        row: dict = {"image": name, "question": sample.question}
        if sample.answers is not None or sample.messages[-1]["role"] == "assistant":
            answers = sample.answers or [sample.target]
            conf = sample.meta.get("answer_confidence") or ["yes"] * len(answers)
            row["answers"] = [{"answer": a, "answer_confidence": c} for a, c in zip(answers, conf, strict=True)]
        for key in ("answer_type", "answerable"):
            if key in sample.meta:
                row[key] = sample.meta[key]
        copy_image(paths[0], dest, f"{split}/{name}")
        by_split.setdefault(split, []).append(row)
    for split, rows in by_split.items():
        write_json(dest / "Annotations" / f"{split}.json", rows)
    return {"splits": {s: len(r) for s, r in by_split.items()}}


FORMAT = Format(
    name="vizwiz",
    description="VizWiz VQA JSON (10 answers with confidence, answer_type, answerable)",
    layout="Annotations/<split>.json + <split>/VizWiz_<split>_*.jpg, or one <split>.json with --images DIR",
    read=read,
    write=write,
)
