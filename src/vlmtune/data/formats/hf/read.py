"""Reading a Hugging Face `datasets` directory or parquet file(s) into Samples (the format and its rules:
data/formats/hf/__init__.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from vlmtune.data.formats.base import (
    IMAGE_SUFFIXES,
    BadRecord,
    ImageRef,
    Imported,
    Record,
    content_name,
    image_ref,
    text_value,
)
from vlmtune.data.formats.vizwiz import majority
from vlmtune.data.sample import Sample, assistant, user

CAPTION_PROMPT = "Describe the image."
CHAT_COLUMNS = ("messages", "conversations")
CAPTION_COLUMNS = ("caption", "captions", "text", "sentences")
VQA_COLUMNS = ("question", "answer", "answers")
SPLITS = {"train": "train", "training": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val",
          "test": "test"}
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
BATCH = 64


def sniff(data: bytes) -> str | None:
    """The image format of `data` from its magic bytes, as a file suffix (None: not one we know)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return ".gif"
    if data.startswith(b"BM"):
        return ".bmp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return ".tif"
    return None


def _split_name(name: str | None) -> str:
    return SPLITS.get(name, name) if name else "train"


def _parquet_split(file: Path, src: Path) -> str:
    """The Hub's conventions: data/<split>-00000-of-00001.parquet, <split>.parquet, <split>/xxx.parquet."""
    m = re.match(r"[A-Za-z]+", file.stem)
    if m and m[0].lower() in SPLITS:
        return SPLITS[m[0].lower()]
    rel = file.parent.relative_to(src) if file.is_relative_to(src) else Path()
    for part in reversed(rel.parts):
        if part.lower() in SPLITS:
            return SPLITS[part.lower()]
    return "train"


def _parts(src: Path) -> Iterator[tuple[str, Path, dict, Iterator[list[dict]]] | BadRecord]:
    """(split, file for messages, features, batches of rows) for each split / parquet file, in reading order."""
    import datasets
    import pyarrow as pa

    if src.is_dir() and any((src / f).is_file() for f in ("dataset_dict.json", "state.json")):
        loaded = datasets.load_from_disk(str(src))
        if isinstance(loaded, datasets.DatasetDict):
            parts = [(key, src / key, ds) for key, ds in loaded.items()]
        else:
            parts = [(loaded.split, src, loaded)]
        for name, file, ds in parts:
            batches = (t.to_pylist() for t in ds.with_format("arrow").iter(batch_size=BATCH))
            yield _split_name(str(name) if name else None), file, dict(ds.features), batches
        return
    if src.is_file():
        files = [src]
    elif src.is_dir():
        files = sorted(src.rglob("*.parquet"))
    else:
        files = []
    if not files:
        raise FileNotFoundError(f"{src}: neither a save_to_disk directory (dataset_dict.json / state.json) nor parquet "
                                "file(s)")
    for file in files:
        try:
            features, batches = _parquet(file)
        except (OSError, pa.ArrowException) as e:
            yield BadRecord(file, 0, f"not a readable parquet file: {e}")
            continue
        yield _parquet_split(file, src if src.is_dir() else src.parent), file, features, batches


def _parquet(file: Path) -> tuple[dict, Iterator[list[dict]]]:
    import datasets
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(file)
    try:
        features = dict(datasets.Features.from_arrow_schema(pf.schema_arrow))
    except Exception:  # unreadable "huggingface" metadata: fall back to the column names
        features = {}
    return features, (b.to_pylist() for b in pf.iter_batches(batch_size=BATCH))


def _image_column(features: dict, columns: list[str]) -> tuple[str | None, bool]:
    """(name, holds a list of images)."""
    from datasets import Image

    for name, feat in features.items():
        if isinstance(feat, Image):
            return name, False
        inner = feat[0] if isinstance(feat, list) and len(feat) == 1 else getattr(feat, "feature", None)
        if isinstance(inner, Image):
            return name, True
    for name in ("image", "images"):
        if name in columns:
            return name, False
    return None, False


class _Reader:
    """Turns the rows of one split / file into Samples."""

    def __init__(self, split: str, file: Path, features: dict, base: Path):
        from datasets import ClassLabel

        self.split, self.file, self.base = split, file, base
        self.features = features
        self.class_labels = {k: f for k, f in features.items() if isinstance(f, ClassLabel)}
        self.image_col: str | None = None
        self.image_list = False

    def columns(self, row: dict) -> None:
        self.image_col, self.image_list = _image_column(self.features, list(row))

    def image(self, cell, where: str) -> tuple[str, ImageRef]:
        data, path = None, None
        if isinstance(cell, dict):
            data, path = cell.get("bytes"), cell.get("path")
        elif isinstance(cell, bytes):
            data = cell
        elif isinstance(cell, str):
            path = cell
        if not data:
            if not isinstance(path, str) or not path:
                raise ValueError(f"{where}: missing image (no bytes and no path)")
            rel = path
            if Path(path).is_absolute():
                root = self.base.resolve()
                if not Path(path).resolve().is_relative_to(root):
                    raise ValueError(f"{where}: image path {path!r} escapes {self.base} (--images DIR reads it there)")
                rel = str(Path(path).resolve().relative_to(root))
            file = image_ref(self.base, rel, where).path
            if not file.is_file():
                raise ValueError(f"{where}: {file}: image file not found")
            data = file.read_bytes()
        suffix = sniff(data)
        if suffix is None:
            suffix = Path(path).suffix.lower() if isinstance(path, str) else ""
            if suffix not in IMAGE_SUFFIXES:
                raise ValueError(f"{where}: image bytes of an unknown format (not png/jpeg/webp/gif/bmp/tiff)")
        return content_name(data, suffix), ImageRef(data=data)

    def sample(self, row: dict, index: int, line: int) -> Imported:
        where = f"column {self.image_col!r}"
        names, refs = [], []
        if self.image_col is not None:
            cells = row[self.image_col]
            if cells is None and not self.image_list:
                raise ValueError(f"missing image (null in column {self.image_col!r})")
            cells = cells if isinstance(cells, list) else [] if cells is None else [cells]
            for cell in cells:
                name, ref = self.image(cell, where)
                names.append(name)
                refs.append(ref)
        if row.get("chosen") is not None and row.get("rejected") is not None:  # not a question with no answer
            raise ValueError("a preference pair (chosen / rejected columns): import it with the rlhf_v format")
        used = {self.image_col, "id"}
        col = _text_column(row)
        answers = references = None
        if col in CHAT_COLUMNS:
            task, messages = "vqa", _messages(row[col], len(names), col)
            used.add(col)
        elif col == "question":
            task, (messages, answers) = "vqa", _vqa(row, len(names))
            used.update(VQA_COLUMNS)
        elif col in CAPTION_COLUMNS:
            task, references = "caption", _captions(row[col], col)
            messages = [user(CAPTION_PROMPT, len(names)), assistant(references[0])]
            used.add(col)
        else:
            raise ValueError("no question, caption or messages column with a value")
        meta = {}
        for key, value in row.items():
            if key in used or value is None:
                continue
            if key in self.class_labels and isinstance(value, int) and value >= 0:
                value = self.class_labels[key].int2str(value)
            if isinstance(value, str | int | float | bool):
                meta[key] = value
        sample = Sample(id=_id(row, self.split, index), messages=messages, images=names, task=task, answers=answers,
                        references=references, source="hf", split=self.split, meta=meta)
        return Imported(sample, refs, self.file, line)


def _text_column(row: dict) -> str | None:
    """The column that says what a row is: the first chat column with a value, else question, else a caption one."""
    for col in (*CHAT_COLUMNS, "question", *CAPTION_COLUMNS):
        if row.get(col) is not None:
            return col
    return None


def _id(row: dict, split: str, index: int) -> str:
    for key in ("id", "question_id"):
        value = row.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise ValueError(f"{key!r} must be a string or an integer, not {type(value).__name__}")
            return str(value)
    return f"{split}-{index}"


def _vqa(row: dict, n_images: int) -> tuple[list[dict], list[str] | None]:
    question = row["question"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError("empty or non-string 'question'")
    raw, answers = row.get("answers"), None
    if raw is not None:
        if not isinstance(raw, list):
            raise ValueError("'answers' must be a list")
        answers = [text_value(a["answer"] if isinstance(a, dict) and "answer" in a else a, f"answers[{j}]")
                   for j, a in enumerate(raw)] or None
    answer = next((row[k] for k in ("answer", "multiple_choice_answer") if row.get(k) is not None), None)
    if answer is None and answers:
        answer = majority(answers)
    messages = [user(question, n_images)]
    if answer is not None:
        messages.append(assistant(text_value(answer, "'answer'")))
    return messages, answers


def _captions(value, column: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"no captions in {column!r}")
    return [text_value(v["raw"] if isinstance(v, dict) and "raw" in v else v, f"a caption in {column!r}")
            for v in values]


def _content(content, where: str) -> list[dict]:
    if isinstance(content, str):
        if "<image>" not in content:
            return [{"type": "text", "text": content}]
        parts: list[dict] = []
        for i, piece in enumerate(content.split("<image>")):
            if i:
                parts.append({"type": "image"})
            if piece.strip():
                parts.append({"type": "text", "text": piece.strip()})
        return parts
    if not isinstance(content, list):
        raise ValueError(f"{where}: content must be a string or a list of parts")
    out = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            out.append({"type": "image"})
        elif kind == "text" and isinstance(part.get("text"), str):
            out.append({"type": "text", "text": part["text"]})
        else:
            raise ValueError(f"{where}: a content part must be {{'type': 'image'}} or {{'type': 'text', 'text': ...}}")
    return out


def _messages(value, n_images: int, column: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{column!r} must be a non-empty list of messages")
    messages = []
    for i, m in enumerate(value):
        where = f"{column}[{i}]"
        if not isinstance(m, dict):
            raise ValueError(f"{where}: a message must be an object with role and content")
        role = m.get("role", m.get("from"))
        if not isinstance(role, str) or role not in ROLES:  # a list or object is no key of ROLES
            raise ValueError(f"{where}: unknown role {role!r}")
        content = m.get("content", m.get("value"))
        messages.append({"role": ROLES[role], "content": _content(content, where)})
    slots = sum(p["type"] == "image" for m in messages for p in m["content"])
    if slots == 0 and n_images:
        first = next((m for m in messages if m["role"] == "user"), None)
        if first is None:
            raise ValueError(f"{column!r}: no user turn to hold the images")
        first["content"] = [{"type": "image"}] * n_images + first["content"]
    elif slots != n_images:
        raise ValueError(f"{column!r}: {slots} image slot(s) in the messages but {n_images} image(s)")
    return messages


def _raw(row: dict) -> str:
    scalars = {k: v for k, v in row.items() if v is None or isinstance(v, str | int | float | bool)}
    return json.dumps(scalars, ensure_ascii=False, default=str)[:500]


def read(src: Path, images: Path | None) -> Iterator[Record]:
    import pyarrow as pa

    src = Path(src)
    base = Path(images) if images else (src if src.is_dir() else src.parent)
    counts: dict[str, int] = {}
    for part in _parts(src):
        if isinstance(part, BadRecord):
            yield part
            continue
        split, file, features, batches = part
        reader = _Reader(split, file, features, base)
        line = 0
        try:
            for batch in batches:
                for row in batch:
                    line += 1
                    index = counts.get(split, 0)
                    counts[split] = index + 1
                    if line == 1:
                        reader.columns(row)
                    try:
                        yield reader.sample(row, index, line)
                    except (ValueError, TypeError, KeyError) as e:
                        yield BadRecord(file, line, f"row {line - 1}: {e}", _raw(row))
        except (OSError, pa.ArrowException) as e:  # a truncated parquet file, a corrupt arrow file
            yield BadRecord(file, line, f"cannot read: {e}")
