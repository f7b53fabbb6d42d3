"""A dataset on disk: a directory with `manifest.jsonl` (one Sample per line) and the image files it names.

    root/
      manifest.jsonl      {"id": ..., "images": ["images/0001.png"], "messages": [...], "task": "vqa", "split": "train"}
      images/0001.png

Reading streams line by line; every bad line (malformed or too deeply nested JSON, a record that does not fit the
schema `sample.SampleRecord`, an empty answer, a missing / corrupt / oversized image, a path escaping the root, an id
already used) becomes a `BadRecord` naming file and line. With `skip_bad` the rest is read and the bad lines are
returned (and added to `rejected.jsonl` by the caller); without it the first one raises. Writing is atomic: a
temporary file renamed into place, so a killed writer never leaves half a manifest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vlmtune.data.images import ImageError, check_image_file, load_image, resolve_inside
from vlmtune.data.sample import Sample
from vlmtune.data.video import frame_files, write_video
from vlmtune.io import atomic_path, atomic_write_text

MANIFEST = "manifest.jsonl"
MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays/objects accepted in a manifest line or an imported annotation file (a record itself needs
5 levels: record, messages, message, content, part; `meta` may use the rest). Deeper JSON is a bad record: Python's
parser, and much code after it, recurse once per level and would stop with a RecursionError."""


class JSONTooDeep(json.JSONDecodeError):
    def __str__(self) -> str:
        return self.msg


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply arrays/objects nest in `value` (a scalar: 0), counted level by level without recursion; the count
    stops once it passes `limit`."""
    depth, level = 0, [value]
    while depth <= limit:
        level = [v for v in level if isinstance(v, dict | list)]
        if not level:
            break
        depth += 1
        level = [c for v in level for c in (v.values() if isinstance(v, dict) else v)]
    return depth


def load_json(text: str, object_pairs_hook=None) -> Any:
    """`json.loads`, but JSON nested deeper than MAX_JSON_DEPTH raises `JSONTooDeep` (a JSONDecodeError), never a
    RecursionError, so every reader's `except json.JSONDecodeError` names the file and record. `object_pairs_hook`
    is json.loads' own (a reader that must see a key given twice, which json.loads would silently drop)."""
    try:
        value = json.loads(text, object_pairs_hook=object_pairs_hook)
    except RecursionError:
        value = None
    else:
        if json_depth(value) <= MAX_JSON_DEPTH:
            return value
    raise JSONTooDeep(f"nested deeper than {MAX_JSON_DEPTH} arrays/objects (vlmtune.data.store.MAX_JSON_DEPTH)",
                      text, 0)


class BadRecord(ValueError):
    def __init__(self, file: Path, line: int, reason: str, raw: str = ""):
        super().__init__(f"{file}:{line}: {reason}")
        self.file, self.line, self.reason, self.raw = str(file), line, reason, raw

    def to_json(self) -> dict:
        return {"file": self.file, "line": self.line, "error": self.reason, "raw": self.raw}


def check_utf8(file: Path, lineno: int, raw: str) -> None:
    """A BadRecord naming the first byte that is not UTF-8 in a line read with errors="surrogateescape" (each such
    byte is a lone surrogate there), and the sample id when the line parses anyway."""
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as e:
        try:
            row = load_json(raw)
            sample = f"sample {row['id']!r}: " if isinstance(row, dict) and isinstance(row.get("id"), str) else ""
        except ValueError:  # malformed, or nested too deeply for json.loads (JSONTooDeep)
            sample = ""
        raise BadRecord(file, lineno, f"{sample}not valid UTF-8: byte {ord(raw[e.start]) - 0xDC00:#04x} at character "
                                      f"{e.start + 1}", raw.encode("utf-8", "surrogateescape").decode(
                                          "utf-8", "backslashreplace")) from None


def parse_line(root: Path, file: Path, lineno: int, raw: str, check_images: bool) -> Sample:
    """One manifest line -> Sample, or BadRecord naming the file and line."""
    try:
        row = load_json(raw)
    except JSONTooDeep as e:
        raise BadRecord(file, lineno, f"JSON {e}", raw) from None
    except json.JSONDecodeError as e:
        raise BadRecord(file, lineno, f"malformed JSON: {e.msg} at column {e.colno}", raw) from None
    if not isinstance(row, dict):
        raise BadRecord(file, lineno, "a record must be a JSON object", raw)
    try:
        sample = Sample.from_json(row)
        if sample.messages[-1]["role"] == "assistant" and not sample.target.strip():
            raise ValueError("empty answer")
        for name in ("answers", "references"):
            values = getattr(sample, name)
            if values is not None and (not values or any(not str(v).strip() for v in values)):
                raise ValueError(f"empty entry in {name}")
    except (ValueError, TypeError, KeyError) as e:
        raise BadRecord(file, lineno, f"sample {row.get('id', '?')!r}: {e}", raw) from None
    for rel in sample.images:
        try:
            path = resolve_inside(root, rel)
            if check_images:
                load_image(path)
            else:
                check_image_file(path)  # a FIFO or directory is named as what it is, never opened
        except ImageError as e:
            raise BadRecord(file, lineno, f"sample {sample.id!r}: {e}", raw) from None
    for entry in sample.videos:  # paths inside the root and present; decoded where they are read (data/video.py)
        try:
            frame_files(root, entry)
        except ImageError as e:
            raise BadRecord(file, lineno, f"sample {sample.id!r}: {e}", raw) from None
    return sample


def iter_lines(root: str | Path, check_images: bool = True) -> Iterator[tuple[int, Sample | BadRecord]]:
    """Stream the manifest: (line number, Sample or the BadRecord describing what is wrong) for each non-blank line."""
    root = Path(root)
    file = root / MANIFEST
    if not file.is_file():
        raise FileNotFoundError(f"{root}: no {MANIFEST} (not a vlmtune dataset directory)")
    with open(file, encoding="utf-8", errors="surrogateescape") as f:  # a bad byte fails its line, not the file
        for lineno, raw in enumerate(f, start=1):
            raw = raw.rstrip("\n")
            if not raw.strip():
                continue
            try:
                check_utf8(file, lineno, raw)
                yield lineno, parse_line(root, file, lineno, raw, check_images)
            except BadRecord as e:
                yield lineno, e


def iter_records(root: str | Path, check_images: bool = True) -> Iterator[Sample | BadRecord]:
    """Stream the manifest: each line yields a Sample or the BadRecord describing what is wrong with it."""
    for _, rec in iter_lines(root, check_images):
        yield rec


def read_samples(
    root: str | Path, split: str | None = None, skip_bad: bool = False, check_images: bool = True
) -> tuple[list[Sample], list[BadRecord]]:
    """All samples of `split` (None: every sample). Raises the first BadRecord unless `skip_bad`."""
    samples, bad = [], []
    seen: dict[str, int] = {}  # sample id -> the line it is first on
    for lineno, rec in iter_lines(root, check_images):
        if isinstance(rec, BadRecord):
            if not skip_bad:
                raise rec
            bad.append(rec)
            continue
        if rec.id in seen:
            err = BadRecord(Path(root) / MANIFEST, lineno, f"duplicate sample id {rec.id!r} (first on line "
                            f"{seen[rec.id]})", json.dumps(rec.to_json(), ensure_ascii=False))
            if not skip_bad:
                raise err
            bad.append(err)
            continue
        seen[rec.id] = lineno
        if split is None or rec.split == split:
            samples.append(rec)
    return samples, bad


def splits(root: str | Path) -> dict[str, int]:
    """Split name -> number of samples (None is reported as "")."""
    counts: dict[str, int] = {}
    for rec in iter_records(root, check_images=False):
        if isinstance(rec, Sample):
            counts[rec.split or ""] = counts.get(rec.split or "", 0) + 1
    return counts


def json_line(row) -> str:
    """`row` as one line of JSON: non-ASCII text as itself, unless it holds a lone surrogate (a "\\udcff" escape
    read from a JSON file), which UTF-8 cannot write: then the line is written with \\u escapes, which read back
    to the same string."""
    line = json.dumps(row, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(row)
    return line


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Atomically write rows as JSON lines (`json_line`); returns the count."""
    lines = [json_line(r) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def read_jsonl(path: Path) -> list:
    """The rows of a JSON-lines file that `write_jsonl` wrote. Lines end at "\\n" only: a row written with
    ensure_ascii=False keeps U+2028, U+0085 or \\x1c as themselves, where str.splitlines() would cut it."""
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").split("\n") if x.strip()]


def write_dataset(root: str | Path, items: Iterable[tuple]) -> int:
    """Write (Sample, [PIL images]) or (Sample, [PIL images], [[frames] per video]) items: each image to its
    `sample.images` path, each video's frames to its `sample.videos` entry (a directory of PNGs "00.png", "01.png",
    ..., or a video file, see `video.write_video`), then the manifest atomically."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for sample, imgs, *videos in items:
        for rel, img in zip(sample.images, imgs, strict=True):
            path = resolve_inside(root, rel)
            with atomic_path(path) as tmp:
                img.save(tmp, format=(path.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG"))
        for entry, frames in zip(sample.videos, videos[0], strict=True) if videos else ():  # (sample, imgs): none
            write_video(root, entry, frames)
        rows.append(sample.to_json())
    return write_jsonl(root / MANIFEST, rows)


def write_rejected(path: str | Path, bad: list[BadRecord]) -> None:
    write_jsonl(Path(path), (b.to_json() for b in bad))


def add_rejected(path: str | Path, bad: list[BadRecord], source: str | None = None) -> None:
    """Add `bad` (each row naming `source`, the data source it was read for) to the rejected.jsonl at `path`, after
    the rows already there: a run that reads several sources lists the bad records of all of them. A record already
    listed (same file, line and error: one manifest read for two splits) is not listed twice."""
    path = Path(path)
    rows = read_jsonl(path) if path.is_file() else []
    listed = {(r.get("file"), r.get("line"), r.get("error")) for r in rows}
    for b in bad:
        if (b.file, b.line, b.reason) not in listed:
            listed.add((b.file, b.line, b.reason))
            rows.append({**b.to_json(), **({"source": source} if source is not None else {})})
    write_jsonl(path, rows)
