"""RLHF-V / RLAIF-V preference data (openbmb/RLHF-V-Dataset, openbmb/RLAIF-V-Dataset): one image, one question and
a chosen and a rejected answer per row, for `train.method: dpo`.

    RLAIF-V-Dataset_000.parquet       the Hub's files; columns (RLAIF-V):
        ds_name  image {bytes, path}  question  chosen  rejected  origin_dataset  origin_split  idx  image_path
    RLHF-V-Dataset.parquet            RLHF-V: the question and answers are one JSON string in `text`:
        ds_name  image {bytes, path}  text '{"question": ..., "chosen": ..., "rejected": ...}'  origin_dataset
        origin_split  idx  image_path
    rlaif_v.jsonl / data.json         the same rows as JSON lines or one JSON list, the image a path (relative to
        {"image": "coco/train2017/000000000009.jpg", "question": ..., "chosen": ..., "rejected": ..., "idx": ...}
                                      `--images`, default the file's directory) or a base64 data URI; a row with no
                                      `image` reads `image_path` as the image's path

`src` is one such file or a directory of them (*.parquet, *.jsonl, *.json, sorted; parquet read 64 rows at a time).
Each row becomes one Sample: the user's turn is the image then the question (a question with one `<image>`
placeholder keeps the image where it stands), `chosen` / `rejected` the pair (data/sample.py), task "vqa". The id is
`idx` (a repeat gets "-2", ...; none: "<file stem>-<row>"), the split the file stem when it names one (train, val,
test, ...) else "train", and the other scalar columns (ds_name, origin_dataset, origin_split, image_path, ...) go to
`meta`. Embedded image bytes are stored as images/<sha256 prefix>.<format> (the format from the magic bytes), a path
as images/<path>. A row without both answers, with equal or empty answers, an unreadable `text`, a missing image or
an image path escaping the source is a bad record naming file and row. Export writes `<split>.jsonl` in the RLAIF-V
layout (top-level question / chosen / rejected, `idx` the sample id, `image` its path) with the images copied under
images/.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from vlmtune.data.formats.base import (
    IMAGE_SUFFIXES,
    BadRecord,
    Format,
    ImageRef,
    Imported,
    Record,
    SplitLines,
    content_name,
    copy_image,
    decode_data_uri,
    image_ref,
    load_json,
    text_value,
)
from vlmtune.data.formats.hf.read import SPLITS, sniff
from vlmtune.data.formats.llava import PLACEHOLDER, dataset_image, jsonl_rows, placeholder_text, unique_id, user_parts
from vlmtune.data.sample import Sample, count_image_slots, user

SUFFIXES = (".parquet", ".jsonl", ".json")
BATCH = 64
_FIELDS = ("image", "question", "chosen", "rejected", "text", "idx")


# ---------------------------------------------------------------- shared with vlfeedback

def row_files(src: Path, what: str) -> list[Path]:
    """`src` itself, or its *.parquet / *.jsonl / *.json files, sorted."""
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such file or directory")
    files = sorted(f for f in src.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{src}: no {what} file (*.parquet / *.jsonl / *.json) in this directory")
    return files


def rows(file: Path) -> Iterator[tuple[int, dict | BadRecord, str]]:
    """(row number from 1, the row or the BadRecord saying why not, its raw text) for each row of a parquet, JSON
    lines or JSON list file, streamed (a JSON list is one document: read whole)."""
    suffix = file.suffix.lower()
    if suffix == ".jsonl":
        yield from jsonl_rows(file)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        n = 0
        try:
            for batch in pq.ParquetFile(file).iter_batches(batch_size=BATCH):
                for row in batch.to_pylist():
                    n += 1
                    scalars = {k: v for k, v in row.items() if v is None or isinstance(v, str | int | float | bool)}
                    yield n, row, json.dumps(scalars, ensure_ascii=False)[:500]
        except (OSError, pa.ArrowException) as e:  # not parquet, truncated
            yield n + 1, BadRecord(file, n + 1, f"cannot read the parquet file: {e}"), ""
    else:
        try:
            data = load_json(file.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            yield 0, BadRecord(file, 0, f"malformed JSON: {e}"), ""
            return
        if not isinstance(data, list):
            yield 0, BadRecord(file, 0, "expected a JSON list of rows"), ""
            return
        for n, row in enumerate(data, start=1):
            yield n, row, json.dumps(row, ensure_ascii=False)[:500]


def split_of(file: Path) -> str:
    return SPLITS.get(file.stem.lower(), "train")


def row_image(cell: object, base: Path, where: str) -> tuple[str, ImageRef]:
    """An image cell -> (its path in the dataset, where its bytes are): {bytes, path} or raw bytes (a parquet image
    column), a path relative to `base`, or a base64 data URI. http(s) URLs are never fetched."""
    data, path = None, None
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
    elif isinstance(cell, bytes):
        data = cell
    elif isinstance(cell, str) and cell.strip():
        path = cell
    if data:
        if not isinstance(data, bytes):
            raise ValueError(f"{where}: image bytes must be binary, got {type(data).__name__}")
        suffix = sniff(data) or (Path(path).suffix.lower() if isinstance(path, str) else "")
        if suffix not in IMAGE_SUFFIXES:
            raise ValueError(f"{where}: image bytes of an unknown format (not png/jpeg/webp/gif/bmp/tiff)")
        return content_name(data, suffix), ImageRef(data=data)
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{where}: missing image (expected a path, a data URI or {{bytes, path}})")
    if path.startswith("data:"):
        data, suffix = decode_data_uri(path, where)
        return content_name(data, suffix), ImageRef(data=data)
    if path.lower().startswith(("http://", "https://")):
        raise ValueError(f"{where}: {path[:80]} is an http(s) URL; URLs are never fetched")
    return dataset_image(path), image_ref(base, path, where)


def scalar_meta(row: dict, used: Iterable[str]) -> dict:
    """The row's other scalar fields (nulls left out), for `meta`."""
    return {k: v for k, v in row.items() if k not in used and v is not None and isinstance(v, str | int | float | bool)}


def prompt_turn(question: str) -> dict:
    """The user's turn: the image, then the question; a question with one `<image>` keeps the image where it is."""
    if PLACEHOLDER not in question:
        return user(question, 1)
    turn = {"role": "user", "content": user_parts(question)}
    if count_image_slots([turn]) != 1:
        raise ValueError(f"the question has {count_image_slots([turn])} {PLACEHOLDER} placeholders (one image)")
    return turn


def question_text(turn: dict) -> str:
    """The inverse of `prompt_turn`."""
    parts = turn["content"]
    if len(parts) == 2 and parts[0] == {"type": "image"} and parts[1]["type"] == "text" \
            and PLACEHOLDER not in parts[1]["text"]:
        return parts[1]["text"]
    return placeholder_text(turn)


# ---------------------------------------------------------------- RLHF-V / RLAIF-V

def _fields(row: dict) -> dict:
    if row.get("question") is None and row.get("text") is not None:
        text = row["text"]
        try:
            parsed = load_json(text) if isinstance(text, str) else None
        except json.JSONDecodeError as e:
            raise ValueError(f"'text' is not valid JSON: {e.msg} at column {e.colno}") from None
        if not isinstance(parsed, dict):
            raise ValueError("'text' must be a JSON object string {\"question\", \"chosen\", \"rejected\"}")
        return parsed
    return row


def _sample(row: object, file: Path, n: int, base: Path, seen: set[str]) -> Imported:
    if not isinstance(row, dict):
        raise ValueError("a row must be a JSON object")
    fields = _fields(row)
    for key in ("question", "chosen", "rejected"):
        if fields.get(key) is None:
            raise ValueError(f"missing {key!r}" + (" (in 'text')" if fields is not row else ""))
    question = text_value(fields["question"], "'question'")
    if not question.strip():
        raise ValueError("empty 'question'")
    chosen, rejected = text_value(fields["chosen"], "'chosen'"), text_value(fields["rejected"], "'rejected'")
    image_key = "image" if row.get("image") is not None else "image_path"
    rel, ref = row_image(row.get(image_key), base, f"column {image_key!r}")
    sample = Sample(id=unique_id(row.get("idx"), seen, f"{file.stem}-{n}"), messages=[prompt_turn(question)],
                    images=[rel], task="vqa", source="rlhf_v", split=split_of(file),
                    meta=scalar_meta(row, (*_FIELDS, image_key)), chosen=chosen, rejected=rejected)
    return Imported(sample, [ref], file, n)


def read(src: Path, images: Path | None) -> Iterator[Record]:
    src = Path(src)
    seen: set[str] = set()
    for file in row_files(src, "RLHF-V / RLAIF-V"):
        base = Path(images) if images else file.parent
        for n, row, raw in rows(file):
            if isinstance(row, BadRecord):
                yield row
                continue
            try:
                yield _sample(row, file, n, base, seen)
            except (ValueError, TypeError) as e:
                rid = row.get("idx") if isinstance(row, dict) else None
                yield BadRecord(file, n, f"row {n}" + (f" (idx {rid!r})" if rid is not None else "") + f": {e}",
                                raw[:500])


def write(items: Iterable[tuple[Sample, list[Path]]], dest: Path) -> dict:
    """<split>.jsonl (split "" -> "train") in the RLAIF-V layout, the images copied under their dataset paths."""
    with SplitLines(dest, "train") as out:
        for sample, paths in items:
            if not sample.is_pair or len(sample.images) != 1 or len(sample.messages) != 1:
                raise ValueError(f"sample {sample.id!r}: the rlhf_v format holds preference pairs of one question "
                                 "about one image")
            row = {"idx": sample.id, "image": sample.images[0], "question": question_text(sample.messages[0]),
                   "chosen": sample.chosen, "rejected": sample.rejected}
            row.update({k: v for k, v in sample.meta.items() if k not in row})
            copy_image(paths[0], dest, sample.images[0])
            out.add(sample.split, row)
    return {"splits": out.counts}


FORMAT = Format(
    name="rlhf_v",
    description="RLHF-V / RLAIF-V preference pairs (image, question, chosen, rejected): parquet, JSONL or JSON",
    layout="*.parquet (the Hub's: image bytes; RLHF-V's `text` JSON) or *.jsonl / *.json rows with image paths",
    read=read,
    write=write,
)
