"""What every outside format provides, and the two streaming drivers that use it (`import_dataset`, `export_dataset`).

A format is one file under `data/formats/` exposing `FORMAT = Format(...)`:

    read(src, images) -> iterator of Imported | BadRecord     outside files -> Samples (+ where their image bytes are)
    write(items, dest) -> dict                                 (Sample, absolute image paths) pairs -> outside files

`read` yields records in a fixed order (resume counts them), never loads all images, and yields a `BadRecord` naming
file and record for anything it cannot turn into a Sample (the driver stops or skips it): an answer or caption that
is not a string (`text_value`: never str() of a null or an object), JSON nested too deeply (`load_json`). Sample ids
and image paths come from the source itself (question_id, file name, ...), so import -> export -> import gives
identical Samples.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import reprlib
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from vlmtune.data.images import ImageError, check_image_file, load_image, resolve_inside
from vlmtune.data.sample import Sample
from vlmtune.data.store import MANIFEST, BadRecord, iter_records, json_line, load_json, write_jsonl
from vlmtune.data.video import VideoError, frame_files
from vlmtune.io import atomic_path, atomic_write_text


@dataclass
class ImageRef:
    """Where an imported image's bytes come from: a file (`path`) or bytes already in memory (`data`: base64 in a
    JSONL line, an image cell of a parquet file)."""

    path: Path | None = None
    data: bytes | None = None


@dataclass
class Imported:
    sample: Sample
    """Its `images` are the paths its images get inside the new dataset, e.g. "images/VizWiz_val_00000000.jpg"."""
    sources: list[ImageRef]
    """One per `sample.images`, in order."""
    file: Path | None = None
    line: int = 0
    """Where the record is (file, line or record number), for error messages about its images or answers."""
    videos: list[Path] = field(default_factory=list)
    """One source (a video file or a directory of frames) per `sample.videos` entry (each a path), in order."""


Record = Imported | BadRecord


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    layout: str
    """The source layout in one line, shown by `vlmtune data import --help`."""
    read: Callable[[Path, Path | None], Iterator[Record]]
    write: Callable[[Iterable[tuple[Sample, list[Path]]], Path], dict]
    videos: bool = False
    """Whether the format holds videos: export gives `write` each sample's image paths followed by its video paths
    (a file or a frame directory); a sample with videos is refused by the formats that hold none."""
    options: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Import options (`--option NAME=VALUE`): name -> its allowed values, the first the default. A format with
    options is read as `read(src, images, **options)`, every option given its value."""

    def resolve_options(self, given: dict[str, str] | None) -> dict[str, str]:
        """`given` checked against `options`, the defaults filled in; a ValueError names an unknown option or value."""
        given = dict(given or {})
        for name, value in given.items():
            if name not in self.options:
                known = ", ".join(sorted(self.options)) or "none"
                raise ValueError(f"the {self.name} format has no option {name!r} (its options: {known})")
            if value not in self.options[name]:
                raise ValueError(f"{self.name} option {name}={value!r}: expected one of {list(self.options[name])}")
        return {name: given.get(name, values[0]) for name, values in self.options.items()}


# ---------------------------------------------------------------- helpers for format files

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
_DATA_URI = re.compile(r"^data:image/(?P<ext>[a-zA-Z0-9.+-]+);base64,(?P<b64>.*)$", re.S)


def text_value(value: object, what: str) -> str:
    """An answer or caption as the source gives it: a string, or a ValueError naming `what` and what is there instead.
    Never str() of whatever is there: a null would train the answer "None", an object its repr, and a number loses
    how it was written (8.20 -> "8.2")."""
    if not isinstance(value, str):
        kind = "null" if value is None else {dict: "object", bool: "boolean", int: "number", float: "number"}.get(
            type(value), type(value).__name__)
        raise ValueError(f"{what} must be a string, got {kind} {reprlib.repr(value)}")
    return value


def image_ref(base: Path, rel: str, where: str) -> ImageRef:
    """A source image `rel` under `base`, refusing paths that escape `base` (`where` names the record)."""
    try:
        return ImageRef(path=resolve_inside(base, rel))
    except ImageError as e:
        raise ValueError(f"{where}: {e}") from None


def decode_data_uri(uri: str, where: str) -> tuple[bytes, str]:
    """A `data:image/...;base64,` URI -> (bytes, file suffix)."""
    m = _DATA_URI.match(uri.strip())
    if not m:
        raise ValueError(f"{where}: not a base64 image data URI")
    try:
        data = base64.b64decode(m["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: invalid base64 image data") from None
    ext = {"jpeg": "jpg", "svg+xml": "svg"}.get(m["ext"].lower(), m["ext"].lower())
    return data, "." + ext


def content_name(data: bytes, suffix: str) -> str:
    """A file name for inline image bytes, stable across imports: images/<sha256 prefix><suffix>."""
    return f"images/{hashlib.sha256(data).hexdigest()[:20]}{suffix}"


def data_uri(path: Path) -> str:
    """An image file as a `data:image/...;base64,` URI (for formats that carry images inline)."""
    ext = path.suffix.lower().lstrip(".")
    mime = {"jpg": "jpeg", "tif": "tiff"}.get(ext, ext)
    return f"data:image/{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def copy_image(src: Path, root: Path, rel: str) -> str:
    """Copy `src` to `root/rel` (once: an existing file of the same size is kept); returns `rel`."""
    dest = resolve_inside(root, rel)
    if dest.is_file() and dest.stat().st_size == src.stat().st_size:
        return rel
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return rel


def copy_video(src: Path, root: Path, rel: str) -> str:
    """Copy a video (a file, or a directory of frame images) to `root/rel`, checking it is there (`frame_files`: a
    VideoError naming the source when it is missing, empty or escapes); returns `rel`."""
    if not src.exists():
        raise VideoError(f"{src}: video file not found")
    if src.is_dir():
        _, frames = frame_files(src.parent, src.name)
        for f in frames:
            copy_image(f, root, f"{rel.rstrip('/')}/{f.name}")
    else:
        check_image_file(src)
        copy_image(src, root, rel)
    frame_files(root, rel)
    return rel


def new_dir(dest: Path) -> Path:
    """`dest` as a new (or empty) directory: an export never overwrites what is there."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest}: exists and is not an empty directory (an export never overwrites)")
    dest.mkdir(parents=True, exist_ok=True)
    return dest


# ---------------------------------------------------------------- drivers

STATE = ".import-state.json"
PARTIAL = MANIFEST + ".partial"


def _store(root: Path, rel: str, ref: ImageRef) -> None:
    dest = resolve_inside(root, rel)
    if ref.data is not None:
        if dest.is_file() and dest.stat().st_size == len(ref.data):
            return
        with atomic_path(dest) as tmp:
            tmp.write_bytes(ref.data)
        return
    if ref.path is None:
        raise ImageError("no image file")
    check_image_file(ref.path)  # missing, a name too long, a FIFO or a directory: an ImageError saying which
    copy_image(ref.path, root, rel)


def check_image(path: Path) -> None:
    """Decode the whole image (truncated JPEGs pass a header check), within the pixel and byte limits."""
    load_image(path)


def import_dataset(fmt: Format, src: str | Path, out: str | Path, images: str | Path | None = None,
                   skip_bad: bool = False, progress: bool = True, options: dict[str, str] | None = None) -> dict:
    """Stream `src` (in format `fmt`) into the vlmtune dataset `out`: images copied to `out`, samples appended to the
    manifest one by one (never all in memory).

    A bad record (missing or corrupt image, malformed row, empty answer, a path escaping the source) stops the import
    with a message naming file and record, or with `skip_bad` goes to `out/rejected.jsonl`. The import is resumable:
    what was written so far is kept (`manifest.jsonl.partial` + `.import-state.json`), and running the same command
    again continues after the last record written. The manifest appears only when the import is complete.
    `options` are the format's import options (`Format.options`; resuming needs the same ones)."""
    opts = fmt.resolve_options(options)
    src, out = Path(src), Path(out)
    images = Path(images) if images else None
    if (out / MANIFEST).exists():
        raise FileExistsError(f"{out}: already holds a dataset ({MANIFEST}); import into a new directory")
    out.mkdir(parents=True, exist_ok=True)
    key = {"format": fmt.name, "src": str(src.resolve()), "images": str(images.resolve()) if images else None,
           "options": opts or None}
    state_file, partial, rejected_file = out / STATE, out / PARTIAL, out / "rejected.jsonl"
    state = {**key, "records": 0, "bytes": 0, "rejected_bytes": 0, "ids": 0}
    if state_file.is_file():
        old = json.loads(state_file.read_text())
        if {k: old.get(k) for k in key} != key:
            raise ValueError(f"{out}: holds an unfinished import of {old.get('format')} {old.get('src')}; "
                             f"use another --out or delete {out}")
        state = old
    # drop whatever was written after the last saved state (a killed import may leave half a line)
    for file, n in ((partial, state["bytes"]), (rejected_file, state["rejected_bytes"])):
        with open(file, "a+b") as f:
            f.truncate(n)
    seen: set[str] = set()
    counts: dict[str, int] = {}
    with open(partial, encoding="utf-8") as f:  # what an interrupted run already wrote
        for line in f:
            row = json.loads(line)
            seen.add(row["id"])
            counts[row.get("split") or ""] = counts.get(row.get("split") or "", 0) + 1
    placed: dict[str, str] = {}  # image path in the dataset -> its source (path, or sha256 of inline bytes)
    n_bad = 0
    with open(partial, "a", encoding="utf-8") as man, open(rejected_file, "a", encoding="utf-8") as rej:

        def save_state():
            man.flush(), rej.flush()
            state.update(bytes=man.tell(), rejected_bytes=rej.tell())
            atomic_write_text(state_file, json.dumps(state))

        bar = tqdm(desc=f"import {fmt.name}", unit=" records", disable=not progress, initial=state["records"])
        for i, rec in enumerate(fmt.read(src, images, **opts) if opts else fmt.read(src, images)):
            if i < state["records"]:
                continue
            if isinstance(rec, Imported):
                try:
                    if rec.sample.id in seen:
                        raise ValueError(f"duplicate sample id {rec.sample.id!r}")
                    for rel, ref in zip(rec.sample.images, rec.sources, strict=True):
                        origin = str(ref.path) if ref.data is None else hashlib.sha256(ref.data).hexdigest()
                        if placed.get(rel, origin) != origin:
                            raise ValueError(f"{rel}: another image ({placed[rel]}) is already stored under this name")
                        if rel not in placed:  # an image shared by several records is copied and checked once
                            _store(out, rel, ref)
                            try:
                                check_image(resolve_inside(out, rel))
                            except ImageError:
                                resolve_inside(out, rel).unlink()  # a rejected image does not stay in the dataset
                                raise
                            placed[rel] = origin
                    for entry, source in zip(rec.sample.videos, rec.videos, strict=True):
                        copy_video(source, out, entry)
                    _check_answers(rec.sample)
                except (ImageError, ValueError) as e:
                    rec = BadRecord(rec.file or src, rec.line or i + 1, f"sample {rec.sample.id!r}: {e}",
                                    json.dumps(rec.sample.to_json(), ensure_ascii=False)[:2000])
            if isinstance(rec, BadRecord):
                if not skip_bad:
                    save_state()
                    raise BadRecord(rec.file, rec.line, rec.reason + " (--skip-bad skips bad records; running the "
                                    "same command again resumes after the last record written)", rec.raw)
                n_bad += 1
                rej.write(json_line(rec.to_json()) + "\n")
            else:
                seen.add(rec.sample.id)
                man.write(json_line(rec.sample.to_json()) + "\n")
                split = rec.sample.split or ""
                counts[split] = counts.get(split, 0) + 1
            state["records"] = i + 1
            bar.update()
            if state["records"] % 1000 == 0:
                save_state()
        bar.close()
        save_state()
    if not seen:
        raise ValueError(f"{src}: no samples imported ({fmt.name} format; {n_bad} bad record(s))")
    partial.replace(out / MANIFEST)
    state_file.unlink()
    if rejected_file.stat().st_size == 0:
        rejected_file.unlink()
    elif n_bad:
        print(f"{out}: {n_bad} bad record(s) skipped, listed in {rejected_file}", file=sys.stderr)
    return {"format": fmt.name, "out": str(out), "samples": len(seen), "splits": counts, "rejected": n_bad}


def _check_answers(sample: Sample) -> None:
    if sample.messages[-1]["role"] == "assistant" and not sample.target.strip():
        raise ValueError("empty caption" if sample.task == "caption" else "empty answer")
    for name in ("answers", "references"):
        values = getattr(sample, name)
        if values is not None and (not values or any(not str(v).strip() for v in values)):
            raise ValueError(f"empty entry in {name}")


def export_dataset(fmt: Format, root: str | Path, dest: str | Path, split: str | None = None) -> dict:
    """Write the dataset `root` (one split, or all) in format `fmt` to the new directory `dest`, streaming."""
    root = Path(root)

    def items():
        for rec in iter_records(root, check_images=False):
            if isinstance(rec, BadRecord):
                raise rec
            if split is None or rec.split == split:
                if rec.videos and not fmt.videos:
                    raise ValueError(f"sample {rec.id!r}: has a video; the {fmt.name} format holds no videos")
                yield rec, [resolve_inside(root, rel) for rel in rec.images] + [
                    resolve_inside(root, v if isinstance(v, str) else v["path"]) for v in rec.videos]

    info = fmt.write(items(), new_dir(Path(dest)))
    return {"format": fmt.name, "out": str(dest), **info}


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, ensure_ascii=False, indent=1)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (read from a "\udcff" escape): written as \u escapes, read back alike
        text = json.dumps(obj, indent=1)
    path.write_text(text + "\n", encoding="utf-8")


__all__ = ["IMAGE_SUFFIXES", "BadRecord", "Format", "ImageRef", "Imported", "Record", "check_image", "content_name",
           "copy_image", "copy_video", "data_uri", "decode_data_uri", "export_dataset", "image_ref", "import_dataset",
           "load_json", "new_dir", "text_value", "write_json", "write_jsonl"]


class SplitLines:
    """Rows streamed into `<dest>/<split>.jsonl`, one JSON object a line (split "" -> `default`), as the ShareGPT-,
    OpenAI-, RLAIF-V- and VLFeedback-style exports write them: `with SplitLines(dest) as out: out.add(split, row)`;
    `out.counts` is the rows per split."""

    suffix = ".jsonl"

    def __init__(self, dest: Path, default: str = "all"):
        self.dest, self.default, self.files, self.counts = dest, default, {}, {}

    def add(self, split: str | None, row: dict) -> None:
        split = split or self.default
        if split not in self.files:
            self.files[split], self.counts[split] = open(self.dest / f"{split}{self.suffix}", "w", encoding="utf-8"), 0
        self.files[split].write(self._line(json.dumps(row, ensure_ascii=False), self.counts[split]))
        self.counts[split] += 1

    def _line(self, text: str, index: int) -> str:
        return text + "\n"

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for f in self.files.values():
            f.close()


class SplitArrays(SplitLines):
    """Rows streamed into `<dest>/<split>.json`, one JSON array per split (split "" -> "all"), as the LLaVA-style
    exports write them: `with SplitArrays(dest) as out: out.add(split, row)`; `out.counts` is the rows per split."""

    suffix = ".json"

    def _line(self, text: str, index: int) -> str:
        return ("[\n" if index == 0 else ",\n") + text

    def __exit__(self, *exc) -> None:
        for f in self.files.values():
            f.write("\n]\n")
        super().__exit__(*exc)
