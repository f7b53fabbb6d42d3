"""Writing Samples as a Hugging Face `DatasetDict` with `save_to_disk` (the format: data/formats/hf/__init__.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from vlmtune.data.formats.hf.read import BATCH, CAPTION_PROMPT, _text_column
from vlmtune.data.sample import Sample, assistant, user


def _export_columns(sample: Sample) -> dict:
    """The text columns that re-import to this sample's messages / answers / references."""
    n, msgs = len(sample.images), sample.messages
    if (sample.task == "caption" and sample.references and len(msgs) == 2
            and msgs == [user(CAPTION_PROMPT, n), assistant(sample.references[0])]):
        return {"captions": list(sample.references)}
    if (sample.task == "vqa" and 1 <= len(msgs) <= 2 and msgs[0]["role"] == "user"
            and msgs[0] == user(sample.question, n)):
        answered = len(msgs) == 2 and msgs[1] == assistant(sample.target)
        if answered or (len(msgs) == 1 and not sample.answers):
            return {"question": sample.question, "answer": sample.target if answered else None,
                    "answers": list(sample.answers) if sample.answers else None}
    messages = []
    for m in msgs:
        content = [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"]
        messages.append({"role": m["role"], "content": [{"type": p["type"], "text": p.get("text")} for p in content]})
    return {"messages": messages}


def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    return "list"


def _features(kinds: dict[str, set[str]], n_images: set[int]):
    from datasets import Features, Image, List, Value

    text = Value("string")
    fixed = {"id": text, "question": text, "answer": text, "answers": List(text), "captions": List(text),
             "messages": List({"role": text, "content": List({"type": text, "text": text})})}
    features = {"id": text}
    if n_images == {1}:
        features["image"] = Image()
    elif n_images - {0}:
        features["images"] = List(Image())
    for col, seen in kinds.items():
        if col in ("answers", "captions", "messages") and seen == {"list"}:
            features[col] = fixed[col]
        elif "list" in seen:
            raise ValueError(f"column {col!r}: a meta key of that name clashes with the {col!r} column")
        elif seen == {"int64"} or seen == {"bool"}:
            features[col] = Value(next(iter(seen)))
        elif seen <= {"int64", "float64"}:
            features[col] = Value("float64")
        else:
            features[col] = text
    return Features(features)


def _generate(rows_file: str, features):
    from datasets import Image

    image_col = next((c for c in ("image", "images") if c in features), None)
    with open(rows_file, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            row = {}
            for col, feat in features.items():
                value = rec["columns"].get(col)
                if getattr(feat, "dtype", None) == "string" and value is not None and not isinstance(value, str):
                    value = str(value)
                elif getattr(feat, "dtype", None) == "float64" and value is not None:
                    value = float(value)
                row[col] = value
            if image_col:
                cells = [{"bytes": Path(p).read_bytes(), "path": Path(rel).name} for p, rel in rec["images"]]
                row[image_col] = cells[0] if isinstance(features[image_col], Image) else cells
            yield row


def write(items: Iterable[tuple[Sample, list[Path]]], dest: Path) -> dict:
    """A DatasetDict written with `save_to_disk` ("val" -> "validation", no split -> "train"), images embedded as
    bytes. The rows go through a temporary JSONL per split first (the columns and their types must be known before
    the first arrow row is written); non-scalar meta values are written as JSON text."""
    import datasets

    tmp = dest / ".hf-export"
    tmp.mkdir(parents=True)
    files: dict[str, TextIO] = {}
    kinds: dict[str, dict[str, set[str]]] = {}
    n_images: dict[str, set[int]] = {}
    counts: dict[str, int] = {}
    json_columns: set[str] = set()
    try:
        for sample, paths in items:
            split = sample.split or "train"
            key = "validation" if split == "val" else split
            columns = {"id": sample.id, **_export_columns(sample)}
            kind = _text_column(columns)
            for k, v in sample.meta.items():
                if k in columns or k in ("image", "images"):
                    raise ValueError(f"sample {sample.id!r}: meta key {k!r} clashes with the {k!r} column")
                if v is not None and not isinstance(v, str | int | float | bool):
                    v = json.dumps(v, ensure_ascii=False)
                    json_columns.add(k)
                columns[k] = v
            if _text_column(columns) != kind:
                raise ValueError(f"sample {sample.id!r}: meta key {_text_column(columns)!r} would be read back as the "
                                 f"sample's text instead of {kind!r}")
            if key not in files:
                files[key] = open(tmp / f"{len(files)}.jsonl", "w", encoding="utf-8")
                kinds[key], n_images[key] = {}, set()
            for col, value in columns.items():
                if value is not None and col != "id":
                    kinds[key].setdefault(col, set()).add(_kind(value))
            n_images[key].add(len(paths))
            images = [[str(p), rel] for p, rel in zip(paths, sample.images, strict=True)]
            files[key].write(json.dumps({"columns": columns, "images": images}, ensure_ascii=False) + "\n")
            counts[split] = counts.get(split, 0) + 1
        for f in files.values():
            f.close()
        progress = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            splits = {}
            for key, f in files.items():
                features = _features(kinds[key], n_images[key])
                splits[key] = datasets.Dataset.from_generator(
                    _generate, features=features, gen_kwargs={"rows_file": f.name, "features": features},
                    cache_dir=str(tmp / "cache"), writer_batch_size=BATCH)
            if splits:
                datasets.DatasetDict(splits).save_to_disk(str(dest))
            del splits
        finally:
            if progress:
                datasets.enable_progress_bars()
    finally:
        for f in files.values():
            f.close()
        shutil.rmtree(tmp, ignore_errors=True)
    info: dict = {"splits": counts}
    if json_columns:
        info["json_columns"] = sorted(json_columns)
    return info
