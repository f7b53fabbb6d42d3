"""LLaVA instruction data (https://github.com/haotian-liu/LLaVA/blob/main/docs/Data.md): one JSON list of conversations.

    playground/data/llava_v1_5_mix665k.json
        [{"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
          "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus in the image?"},
                            {"from": "gpt", "value": "The bus in the image is white and red."},
                            {"from": "human", "value": "What feature can be seen on the back of the bus?"},
                            {"from": "gpt", "value": "The back of the bus features an advertisement."}]},
         {"id": "i6IyJda_0", "conversations": [{"from": "human", "value": "..."}, ...]},     text-only: no "image"
         {"id": "...", "image": ["a.jpg", "b.jpg"], "conversations": [...]},                  several images
         ...]
    playground/data/coco/train2017/000000033471.jpg   gqa/images/  ocr_vqa/images/  textvqa/train_images/  vg/VG_100K/

`src` is one such JSON file (or a .jsonl file with one record a line; images in `--images`, default the file's
directory) or a directory holding them (every *.json / *.jsonl file in it, images relative to it). Each record becomes
one Sample: each `<image>` placeholder becomes an image part where it stands in the human turn (`<image>\\nQ` ->
[image, text], `Q\\n<image>` -> [text, image]; the whitespace next to a placeholder is dropped, as LLaVA does), and the
placeholders must match the images in number. Turns alternate human/gpt, start with human (a leading system turn is
kept) and end with gpt: the final answer is the target (task "vqa"). The sample id is the record's "id" (mixtures
can repeat an id: a repeat gets "-2", "-3", ...; no id: "<file stem>-<record number>"), the split is the file's
stem, the images are images/<path as given> and any other record fields go to `meta`. Export writes `<split>.json`
in this layout (one record a line), with the images at their paths next to it.

The conversation helpers here (`user_parts`, `placeholder_text`, `to_messages`, `unique_id`, `jsonl_rows`) are shared
with the sharegpt and openai formats.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Iterator
from pathlib import Path

from vlmtune.data.formats.base import (
    BadRecord,
    Format,
    Imported,
    Record,
    SplitArrays,
    copy_image,
    image_ref,
    load_json,
)
from vlmtune.data.sample import Sample, count_image_slots, message_text

PLACEHOLDER = "<image>"
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
NAMES = {"user": "human", "assistant": "gpt", "system": "system"}
"""How the conversation names each vlmtune role (for error messages and export)."""
_FIELDS = ("id", "image", "conversations")


# ---------------------------------------------------------------- shared by the conversation formats

def user_parts(text: str) -> list[dict]:
    """'<image>\\nWhat is this?' -> [image, text]: each placeholder becomes an image part where it stands; whitespace
    next to a placeholder is dropped and empty pieces vanish (a turn without placeholders is kept as given)."""
    pieces = text.split(PLACEHOLDER)
    parts: list[dict] = []
    for j, piece in enumerate(pieces):
        if j > 0:
            parts.append({"type": "image"})
            piece = piece.lstrip()
        if j < len(pieces) - 1:
            piece = piece.rstrip()
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def content_parts(message: dict) -> list[dict]:
    content = message["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def placeholder_text(message: dict) -> str:
    """A user turn back to text (the inverse of `user_parts`): each image part is an `<image>` line of its own."""
    return "\n".join(PLACEHOLDER if p.get("type") == "image" else p["text"] for p in content_parts(message))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def to_messages(turns: list[tuple[str, object]], names: dict[str, str], n_images: int, first: int = 0) -> list[dict]:
    """(role, text) turns with `<image>` placeholders -> vlmtune messages. An empty system turn is dropped.
    `names` maps each role to the name the source uses and `first` is the number of the first turn, for the error
    messages."""
    messages = []
    for i, (role, text) in enumerate(turns):
        k = i + first
        if not isinstance(text, str):
            raise ValueError(f"turn {k}: the {names[role]} text must be a string, got {type(text).__name__}")
        if role == "system":
            if messages:
                raise ValueError(f"turn {k}: a {names['system']} turn is allowed only first")
            if not text.strip():
                continue
            if PLACEHOLDER in text:
                raise ValueError(f"turn {k}: a literal {PLACEHOLDER} in a {names['system']} turn")
            messages.append({"role": "system", "content": [{"type": "text", "text": text}]})
            continue
        expected = "user" if len(messages) == 0 or messages[-1]["role"] != "user" else "assistant"
        if role != expected:
            raise ValueError(f"turn {k}: expected {names[expected]!r}, got {names[role]!r} (turns alternate "
                             f"{names['user']}/{names['assistant']}, starting with {names['user']})")
        if role == "assistant":
            if PLACEHOLDER in text:
                raise ValueError(f"turn {k}: a literal {PLACEHOLDER} in a {names['assistant']} answer")
            if not text.strip():
                raise ValueError(f"turn {k}: empty {names['assistant']} answer")
            messages.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
        else:
            parts = user_parts(text)
            if not any(p["type"] == "text" and p["text"].strip() for p in parts):
                raise ValueError(f"turn {k}: empty {names['user']} question")
            messages.append({"role": "user", "content": parts})
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError(f"the conversation must end with a {names['assistant']} answer (the target)")
    slots = count_image_slots(messages)
    if slots != n_images:
        raise ValueError(f"{_plural(slots, PLACEHOLDER + ' placeholder')} but {_plural(n_images, 'image')}")
    return messages


def unique_id(raw: object, seen: set[str], fallback: str) -> str:
    """The record's own id (`fallback` when it has none), made unique: a repeat gets "-2", "-3", ..."""
    if raw is None:
        base = fallback
    elif isinstance(raw, str | int) and not isinstance(raw, bool) and str(raw).strip():
        base = str(raw)
    else:
        raise ValueError(f"'id' must be a non-empty string or integer, got {raw!r}")
    sid, k = base, 1
    while sid in seen:
        k += 1
        sid = f"{base}-{k}"
    seen.add(sid)
    return sid


def jsonl_rows(file: Path) -> Iterator[tuple[int, dict | BadRecord, str]]:
    """(line number, parsed JSON or the BadRecord saying why not, raw line) for each non-blank line, streamed."""
    with open(file, "rb") as f:
        for lineno, data in enumerate(f, start=1):
            try:
                raw = data.decode("utf-8-sig")
            except UnicodeDecodeError as e:
                yield lineno, BadRecord(file, lineno, f"not UTF-8 text: {e}", repr(data[:500])), ""
                continue
            if not raw.strip():
                continue
            try:
                yield lineno, load_json(raw), raw
            except json.JSONDecodeError as e:
                yield lineno, BadRecord(file, lineno, f"malformed JSON: {e.msg} at column {e.colno}", raw[:500]), raw


def source_files(src: Path, images: Path | None, suffixes: tuple[str, ...], what: str) -> list[tuple[Path, Path]]:
    """(annotation file, image directory) pairs: `src` itself, or every file with one of `suffixes` in directory
    `src`, sorted; images relative to `--images`, else to the file's directory."""
    if src.is_file():
        return [(src, images or src.parent)]
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such file or directory")
    files = sorted(f for f in src.iterdir() if f.is_file() and f.suffix.lower() in suffixes)
    if not files:
        raise FileNotFoundError(f"{src}: no {what} file ({' / '.join('*' + s for s in suffixes)}) in this directory")
    return [(f, images or src) for f in files]


def dataset_image(rel: str) -> str:
    """A source image path -> its path in the dataset: images/<rel>, sub-folders kept (a path already under images/
    stays as it is, so exported files, which keep their images under images/, import to the same paths)."""
    rel = posixpath.normpath(rel)
    return rel if rel.startswith("images/") else f"images/{rel}"


def export_image(rel: str) -> str:
    """A dataset image path -> its path in an export that keeps the source's own layout (images/ prefix dropped)."""
    return rel.removeprefix("images/")


# ---------------------------------------------------------------- LLaVA

def _image_list(value: object) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
        raise ValueError(f"'image' must be a path or a list of paths, got {json.dumps(value, ensure_ascii=False)[:80]}")
    return [posixpath.normpath(v) for v in items]


def _sample(row: object, file: Path, n: int, base: Path, seen: set[str]) -> Imported:
    if not isinstance(row, dict):
        raise ValueError("a record must be a JSON object")
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError("missing or empty 'conversations'")
    pairs = []
    for k, turn in enumerate(turns):
        who = turn.get("from") if isinstance(turn, dict) else None
        if not isinstance(who, str) or who not in ROLES:  # a list or object is no key of ROLES
            raise ValueError(f"turn {k}: expected {{'from': 'human' | 'gpt' | 'system', 'value': ...}}, got "
                             f"{json.dumps(turn, ensure_ascii=False)[:80]}")
        pairs.append((ROLES[who], turn.get("value")))
    rels = _image_list(row.get("image"))
    messages = to_messages(pairs, NAMES, len(rels))
    sources = [image_ref(base, rel, "image") for rel in rels]
    sample = Sample(id=unique_id(row.get("id"), seen, f"{file.stem}-{n}"), messages=messages,
                    images=[f"images/{rel}" for rel in rels], task="vqa", source="llava", split=file.stem,
                    meta={k: v for k, v in row.items() if k not in _FIELDS})
    return Imported(sample, sources, file, n)


def _records(file: Path) -> Iterator[tuple[int, object, str]]:
    if file.suffix.lower() == ".jsonl":
        yield from jsonl_rows(file)
        return
    try:
        rows = load_json(file.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        yield 0, BadRecord(file, 0, f"malformed JSON: {e}"), ""
        return
    if not isinstance(rows, list):
        yield 0, BadRecord(file, 0, "expected a JSON list of conversation records"), ""
        return
    for i, row in enumerate(rows):
        yield i + 1, row, ""


def read(src: Path, images: Path | None) -> Iterator[Record]:
    seen: set[str] = set()
    for file, base in source_files(Path(src), images, (".json", ".jsonl"), "LLaVA JSON"):
        for n, row, raw in _records(file):
            if isinstance(row, BadRecord):
                yield row
                continue
            try:
                yield _sample(row, file, n, base, seen)
            except ValueError as e:
                rid = row.get("id") if isinstance(row, dict) else None
                name = f"record {n}" + (f" (id {rid!r})" if rid is not None else "")
                yield BadRecord(file, n, f"{name}: {e}", raw[:500] or json.dumps(row, ensure_ascii=False)[:500])


def conversation(sample: Sample) -> list[dict]:
    """A Sample's messages as LLaVA turns ({"from": "human" | "gpt" | "system", "value": ...})."""
    return [{"from": NAMES[m["role"]], "value": placeholder_text(m) if m["role"] == "user" else message_text(m)}
            for m in sample.messages]


def write(items: Iterable[tuple[Sample, list[Path]]], dest: Path) -> dict:
    """The LLaVA layout: <split>.json (split "" -> "all"), one record a line, and the images at their paths."""
    with SplitArrays(dest) as out:
        for sample, paths in items:
            if sample.messages[-1]["role"] != "assistant":
                raise ValueError(f"sample {sample.id!r}: a LLaVA conversation ends with a gpt answer")
            rels = [export_image(rel) for rel in sample.images]
            row: dict = {"id": sample.id}
            if rels:
                row["image"] = rels[0] if len(rels) == 1 else rels
            row["conversations"] = conversation(sample)
            row.update({k: v for k, v in sample.meta.items() if k not in _FIELDS})
            for path, rel in zip(paths, rels, strict=True):
                copy_image(path, dest, rel)
            out.add(sample.split, row)
    return {"splits": out.counts}


FORMAT = Format(
    name="llava",
    description="LLaVA conversation JSON (conversations with <image> placeholders)",
    layout="<name>.json (a list of {id, image, conversations}) with images relative to it or to --images",
    read=read,
    write=write,
)
