"""Hugging Face `imagefolder` (https://huggingface.co/docs/datasets/image_dataset#imagefolder): images plus a metadata
file whose `file_name` column names each image (relative to the metadata file, sub-folders allowed).

    metadata.jsonl          {"file_name": "0001.png", "text": "a red square on a white wall"}
                            {"file_name": "charts/0002.png", "question": "What is the peak?", "answer": "42"}
    0001.png
    charts/0002.png

or metadata.csv (`file_name,text` header, real CSV quoting) in its place, or one such folder per split:

    train/metadata.jsonl, train/0001.png, validation/metadata.csv, validation/0001.png, test/...

`src` is the folder (or one metadata file; `--images` replaces the folder file names are relative to). A metadata
file at the top gives split None; every sub-directory holding its own metadata file is a split named after it
("validation" and "valid" -> "val"), read train, val, test, then the rest by name. Each row becomes one Sample:
  - `question` + `answer` and/or `answers` (a list) -> VQA: target = `answer`, else the first of `answers`; `answers`
    keeps the list as given. A question without either (or with them null) ends the Sample with the question.
  - else `captions` (a list), `caption` or `text` (the first present, in that order) -> caption: prompt "Describe the
    image.", target = the first caption, `references` = all of them.
  - any other column -> `meta` (as JSON gave it; CSV cells as text), except `id`: the Sample id when present.
A JSON null in question, answer(s) or a caption column counts as absent (a file mixing both kinds has every column).
The Sample id is otherwise `<split>/<file_name less its suffix>` (no `<split>/` without a split); a file named by an
earlier row too (several questions on one image) gives `<that>#<line>`. Images go to `images/<split>/<file_name>`.
Answers and captions must be strings (CSV cells are; in JSON a number or an object is a bad record: "42", not 42); an
empty one, a missing file_name or a path escaping the folder is a bad record. Rows are read line by line (CSV: record
by record). Export writes metadata.jsonl in each split's folder ("val" -> validation/) with the images beside it, and
an `id` only where the id is not the default one.
"""

from __future__ import annotations

import csv
import json
import posixpath
from collections.abc import Iterable, Iterator
from pathlib import Path

from vlmtune.data.formats.base import BadRecord, Format, Imported, Record, copy_image, image_ref, load_json, text_value
from vlmtune.data.sample import Sample, assistant, user

METADATA = ("metadata.jsonl", "metadata.csv")
SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}
SPLIT_DIRS = {"val": "validation"}
SPLIT_ORDER = ("train", "val", "test")
CAPTION_COLUMNS = ("captions", "caption", "text")
PROMPT = "Describe the image."


def _metadata_in(folder: Path) -> Path | None:
    found = [folder / name for name in METADATA if (folder / name).is_file()]
    if len(found) > 1:
        raise ValueError(f"{folder}: holds both metadata.jsonl and metadata.csv; keep one")
    return found[0] if found else None


def _split(folder_name: str) -> str:
    return SPLIT_NAMES.get(folder_name.lower(), folder_name)


def _metadata_files(src: Path, images: Path | None) -> list[tuple[Path, str | None, Path]]:
    """(metadata file, split, folder its file_names are relative to), in reading order."""
    if src.is_file():
        name = src.parent.name
        return [(src, _split(name) if name.lower() in SPLIT_NAMES else None, images or src.parent)]
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not an image folder or metadata file")
    found = []
    if top := _metadata_in(src):
        found.append((top, None, images or src))
    subs = [(d, meta) for d in sorted(src.iterdir()) if d.is_dir() and (meta := _metadata_in(d))]

    def order(item):
        split = _split(item[0].name)
        return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split, item[0].name)

    for d, meta in sorted(subs, key=order):
        found.append((meta, _split(d.name), images / d.name if images else d))
    if not found:
        raise FileNotFoundError(f"{src}: no metadata.jsonl or metadata.csv, neither at the top nor in split "
                                "sub-directories (train/, validation/, test/)")
    return found


def _rows(file: Path) -> Iterator[tuple[int, str, dict | None, str]]:
    """(line, raw text, row or None, error) for each record of a metadata file, streamed."""
    if file.suffix == ".jsonl":
        with open(file, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8").lstrip("\ufeff")
                except UnicodeDecodeError:
                    yield lineno, "", None, "line is not UTF-8 text"
                    continue
                if not text.strip():
                    continue
                try:
                    row = load_json(text)
                except json.JSONDecodeError as e:
                    yield lineno, text, None, f"malformed JSON: {e.msg} at column {e.colno}"
                    continue
                if isinstance(row, dict):
                    yield lineno, text, row, ""
                else:
                    yield lineno, text, None, "a row must be a JSON object"
        return
    with open(file, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header, line = None, 0
        try:
            for cells in reader:
                start, line = line + 1, reader.line_num
                if not any(c.strip() for c in cells):
                    continue
                if header is None:
                    header = [c.strip() for c in cells]
                    if "file_name" not in header or len(set(header)) != len(header):
                        yield start, ",".join(cells), None, f"expected a header row with a 'file_name' column and no " \
                            f"repeated names, got {header}"
                        return
                    continue
                raw = ",".join(cells)
                if len(cells) != len(header):
                    yield start, raw, None, f"expected {len(header)} comma-separated fields, got {len(cells)}"
                else:
                    yield start, raw, dict(zip(header, cells, strict=True)), ""
        except (csv.Error, UnicodeDecodeError) as e:
            yield line + 1, "", None, f"cannot read the rest of the CSV: {e}"


def _text(value, what: str) -> str:
    """An answer or caption: a string, not empty."""
    text = text_value(value, f"'{what}'")
    if not text.strip():
        raise ValueError(f"empty '{what}'")
    return text


def _texts(value, what: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"'{what}' must be a non-empty list")
    return [_text(v, f"{what}[{i}]") for i, v in enumerate(value)]


def default_id(file_name: str, split: str | None) -> str:
    stem = posixpath.splitext(file_name)[0]
    return f"{split}/{stem}" if split else stem


def _content(row: dict) -> tuple[list[dict], str, list[str] | None, list[str] | None]:
    """Pops the question/answer or caption columns off `row`: (messages, task, answers, references)."""
    question = row.pop("question", None)
    if question is not None:
        if not isinstance(question, str) or not question.strip():
            raise ValueError("empty or non-text 'question'")
        answer, answers = row.pop("answer", None), row.pop("answers", None)
        target = None if answer is None else _text(answer, "answer")
        if answers is not None:
            answers = _texts(answers, "answers")
            target = answers[0] if target is None else target
        return [user(question)] + ([assistant(target)] if target is not None else []), "vqa", answers, None
    for key in CAPTION_COLUMNS:  # null cells count as absent (a mixed file gives every row every column)
        if key in row and row[key] is None:
            del row[key]
    key = next((k for k in CAPTION_COLUMNS if k in row), None)
    if key is None:
        raise ValueError("no 'question' nor 'captions' / 'caption' / 'text' column")
    value = row.pop(key)
    references = _texts(value, key) if key == "captions" else [_text(value, key)]
    return [user(PROMPT), assistant(references[0])], "caption", None, references


def _sample(row: dict, split: str | None, base: Path, file: Path, line: int, used: set[str]) -> Imported:
    row = dict(row)
    name = row.pop("file_name", None)
    if not isinstance(name, str) or not name.strip():
        raise ValueError("missing 'file_name'")
    ref = image_ref(base, name, f"file_name {name!r}")
    rel = posixpath.normpath(name)
    sid = row.pop("id", None)
    if sid is None or sid == "":
        sid = default_id(rel, split)
        sid = sid if sid not in used else f"{sid}#{line}"
    elif isinstance(sid, bool) or not isinstance(sid, str | int) or not str(sid).strip():
        raise ValueError(f"{name}: 'id' must be a non-empty string or integer")
    sid = str(sid)
    try:
        messages, task, answers, references = _content(row)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    used.add(sid)
    images = [f"images/{split}/{rel}" if split else f"images/{rel}"]
    sample = Sample(id=sid, messages=messages, images=images, task=task, answers=answers, references=references,
                    source="imagefolder", split=split, meta=row)
    return Imported(sample, [ref], file, line)


def read(src: Path, images: Path | None) -> Iterator[Record]:
    used: set[str] = set()  # ids given so far
    for file, split, base in _metadata_files(Path(src), images):
        for line, raw, row, error in _rows(file):
            if row is None:
                yield BadRecord(file, line, error, raw[:500])
                continue
            try:
                yield _sample(row, split, base, file, line, used)
            except ValueError as e:
                yield BadRecord(file, line, str(e), raw[:500])


def _row(sample: Sample, name: str) -> dict:
    row: dict = {"file_name": name}
    if sample.id != default_id(name, sample.split or None):
        row["id"] = sample.id
    skip = {"file_name", "id", "question"}
    ends_with_answer = sample.messages[-1]["role"] == "assistant"
    if sample.task == "caption":
        refs = sample.references or [sample.target]
        # the reading order is captions > caption > text: pick a column that wins over those left in meta
        if len(refs) > 1 or "caption" in sample.meta or "captions" in sample.meta:
            row["captions"] = list(refs)
        else:
            row["caption" if "text" in sample.meta else "text"] = refs[0]
    else:
        row["question"] = sample.question
        skip |= {"answer", "answers"}
        if sample.answers is not None:
            if ends_with_answer and sample.target != sample.answers[0]:
                row["answer"] = sample.target
            row["answers"] = list(sample.answers)
        elif ends_with_answer:
            row["answer"] = sample.target
    for key, value in sample.meta.items():
        if key not in skip and key not in row:
            row[key] = value
    return row


def write(items: Iterable[tuple[Sample, list[Path]]], dest: Path) -> dict:
    """metadata.jsonl per split folder (split None: at the top; "val" -> validation/), images beside it at their
    dataset paths less `images/<split>/`."""
    files, counts = {}, {}
    try:
        for sample, paths in items:
            if len(paths) != 1:
                raise ValueError(f"sample {sample.id!r}: an imagefolder row holds exactly one image")
            split = sample.split or None
            folder = dest / SPLIT_DIRS.get(split, split) if split else dest
            rel = sample.images[0]
            name = rel.removeprefix(f"images/{split}/") if split and rel.startswith(f"images/{split}/") else \
                rel.removeprefix("images/")
            copy_image(paths[0], folder, name)
            if split not in files:
                folder.mkdir(parents=True, exist_ok=True)
                files[split] = open(folder / "metadata.jsonl", "w", encoding="utf-8")
            files[split].write(json.dumps(_row(sample, name), ensure_ascii=False) + "\n")
            counts[split or ""] = counts.get(split or "", 0) + 1
    finally:
        for f in files.values():
            f.close()
    return {"splits": counts}


FORMAT = Format(
    name="imagefolder",
    description="image folder with metadata.jsonl or metadata.csv (Hugging Face imagefolder layout)",
    layout="DIR/metadata.jsonl|csv (file_name + question/answer(s) or text/caption(s)) beside the images, or "
           "train/, validation/, test/ each holding one",
    read=read,
    write=write,
)
