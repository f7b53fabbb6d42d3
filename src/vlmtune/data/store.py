"""A dataset on disk: a directory with `manifest.jsonl` (one Sample per line) and the image files it names.

    root/
      manifest.jsonl      {"id": ..., "images": ["images/0001.png"], "messages": [...], "task": "vqa", "split": "train"}
      images/0001.png

Reading streams line by line; every bad line (malformed JSON, unknown field, empty answer, missing / corrupt /
oversized image, a path escaping the root) becomes a `BadRecord` naming file and line. With `skip_bad` the rest is
read and the bad lines are returned (and written to `rejected.jsonl` by the caller); without it the first one
raises. Writing is atomic: a temporary file renamed into place, so a killed writer never leaves half a manifest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from vlmtune.data.images import ImageError, check_image_file, load_image, resolve_inside
from vlmtune.data.sample import Sample

MANIFEST = "manifest.jsonl"


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
            row = json.loads(raw)
            sample = f"sample {row['id']!r}: " if isinstance(row, dict) and isinstance(row.get("id"), str) else ""
        except ValueError:
            sample = ""
        raise BadRecord(file, lineno, f"{sample}not valid UTF-8: byte {ord(raw[e.start]) - 0xDC00:#04x} at character "
                                      f"{e.start + 1}", raw.encode("utf-8", "surrogateescape").decode(
                                          "utf-8", "backslashreplace")) from None


def parse_line(root: Path, file: Path, lineno: int, raw: str, check_images: bool) -> Sample:
    """One manifest line -> Sample, or BadRecord naming the file and line."""
    try:
        row = json.loads(raw)
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
    return sample


def iter_records(root: str | Path, check_images: bool = True) -> Iterator[Sample | BadRecord]:
    """Stream the manifest: each line yields a Sample or the BadRecord describing what is wrong with it."""
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
                yield parse_line(root, file, lineno, raw, check_images)
            except BadRecord as e:
                yield e


def read_samples(
    root: str | Path, split: str | None = None, skip_bad: bool = False, check_images: bool = True
) -> tuple[list[Sample], list[BadRecord]]:
    """All samples of `split` (None: every sample). Raises the first BadRecord unless `skip_bad`."""
    samples, bad = [], []
    seen: dict[str, int] = {}
    for rec in iter_records(root, check_images):
        if isinstance(rec, BadRecord):
            if not skip_bad:
                raise rec
            bad.append(rec)
            continue
        if rec.id in seen:
            err = BadRecord(Path(root) / MANIFEST, -1, f"duplicate sample id {rec.id!r}")
            if not skip_bad:
                raise err
            bad.append(err)
            continue
        seen[rec.id] = 1
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


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Atomically write rows as JSON lines; returns the count."""
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def write_dataset(root: str | Path, items: Iterable[tuple[Sample, list]]) -> int:
    """Write (Sample, [PIL images]) pairs: each image to its `sample.images` path, then the manifest atomically."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for sample, imgs in items:
        for rel, img in zip(sample.images, imgs, strict=True):
            path = resolve_inside(root, rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            img.save(tmp, format=(path.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG"))
            tmp.replace(path)
        rows.append(sample.to_json())
    return write_jsonl(root / MANIFEST, rows)


def write_rejected(path: str | Path, bad: list[BadRecord]) -> None:
    write_jsonl(Path(path), (b.to_json() for b in bad))
