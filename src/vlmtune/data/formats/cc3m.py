"""Conceptual Captions 3M (https://ai.google.com/research/ConceptualCaptions/) once its images are downloaded.

Google distributes only `caption<TAB>url` lines (Train_GCC-training.tsv, no header); a downloader (img2dataset and
the like) fetches the images and leaves a TSV with a header row naming its columns:

    cc3m.tsv          caption<TAB>image<TAB>item_url
                      a very typical bus station<TAB>00000/000000000.jpg<TAB>http://lh6.ggpht.com/-IvRtNLNcG8o/...
    00000/000000000.jpg

`src` is such a TSV (or a directory: every *.tsv in it, by name). `image` is a path relative to `--images`, else to
the TSV's directory; `caption` and `image` are required, every other column goes to `meta` as its text (empty cells
left out; `item_url` is kept, never fetched), except two optional ones: `split` (the Sample's split) and `id`. Each row
becomes one caption Sample: prompt "Describe the image.", target and `references` = the caption, image
`images/<image>`. Its id is the `id` cell, else the image file stem; a stem an earlier row already used gives
`<stem>-<line>` (line = the row's line in its TSV). Export writes an `id` column only when some id is not its
image's stem, so such ids survive a round trip. The TSV is read line by line: only the ids given so far are held.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from vlmtune.data.formats.base import BadRecord, Format, Imported, Record, copy_image, image_ref
from vlmtune.data.sample import Sample, assistant, user

TSV = "cc3m.tsv"
PROMPT = "Describe the image."
RESERVED = ("caption", "image", "split", "id")


def _files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    files = sorted(src.glob("*.tsv")) if src.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{src}: neither a CC3M TSV file nor a directory holding *.tsv files")
    return files


def _lines(file: Path) -> Iterator[tuple[int, str | None]]:
    """(line number, text without its line end), text None for a line that is not UTF-8."""
    with open(file, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield lineno, None
                continue
            yield lineno, line.lstrip("\ufeff") if lineno == 1 else line


def _header(line: str) -> list[str]:
    cols = [c.strip() for c in line.split("\t")]
    if "caption" not in cols or "image" not in cols:
        raise ValueError(f"expected a header row naming at least the 'caption' and 'image' columns, got {line[:200]!r} "
                         "(Google's own caption<TAB>url file has no local images: download them first)")
    dups = sorted({c for c in cols if cols.count(c) > 1})
    if dups or "" in cols:
        raise ValueError(f"header: empty or repeated column name(s) {dups or ['']}")
    return cols


def _sample(cells: list[str], cols: list[str], base: Path, file: Path, line: int, used: set[str]) -> Imported:
    if len(cells) != len(cols):
        raise ValueError(f"expected {len(cols)} tab-separated fields ({', '.join(cols)}), got {len(cells)}")
    row = dict(zip(cols, cells, strict=True))
    image, caption = row.pop("image").strip(), row.pop("caption").strip()
    if not image:
        raise ValueError("missing image path")
    if not caption:
        raise ValueError(f"{image}: empty caption")
    ref = image_ref(base, image, f"image {image!r}")
    rel = posixpath.normpath(image)
    split = row.pop("split", "").strip() or None
    sid = row.pop("id", "").strip()
    if not sid:
        stem = PurePosixPath(rel).stem
        sid = stem if stem not in used else f"{stem}-{line}"
    used.add(sid)
    sample = Sample(id=sid, messages=[user(PROMPT), assistant(caption)], images=[f"images/{rel}"], task="caption",
                    references=[caption], source="cc3m", split=split, meta={k: v for k, v in row.items() if v != ""})
    return Imported(sample, [ref], file, line)


def read(src: Path, images: Path | None) -> Iterator[Record]:
    used: set[str] = set()
    for file in _files(Path(src)):
        base = images or file.parent
        cols = None
        for lineno, line in _lines(file):
            if line is None:
                yield BadRecord(file, lineno, "line is not UTF-8 text")
                continue
            if not line.strip():
                continue
            if cols is None:
                try:
                    cols = _header(line)
                except ValueError as e:
                    yield BadRecord(file, lineno, str(e), line[:500])
                    break
                continue
            try:
                yield _sample(line.split("\t"), cols, base, file, lineno, used)
            except ValueError as e:
                yield BadRecord(file, lineno, str(e), line[:500])


def _cell(value) -> tuple[str, bool]:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    flat = re.sub(r"[\t\r\n]+", " ", text)
    return flat, flat != text


def write(items: Iterable[tuple[Sample, list[Path]]], dest: Path) -> dict:
    """cc3m.tsv (caption, image, the meta columns, then split and id when needed) with the images beside it at their
    dataset paths less `images/`. The columns are known only after the last sample, so rows go to a temporary JSONL
    file first (streaming, never all in memory). Tabs and line breaks inside a cell become spaces."""
    tmp = dest / f".{TSV}.rows.jsonl"
    extra: dict[str, None] = {}
    n = n_split = n_id = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for sample, paths in items:
            if len(paths) != 1:
                raise ValueError(f"sample {sample.id!r}: a CC3M row holds exactly one image")
            rel = sample.images[0].removeprefix("images/")
            row = {"caption": sample.target, "image": rel}
            for key, value in sample.meta.items():
                if key not in RESERVED:
                    extra.setdefault(key)
                    row[key] = value
            if sample.split:
                row["split"] = sample.split
                n_split += 1
            if sample.id != PurePosixPath(rel).stem:
                row["id"] = sample.id
                n_id += 1
            copy_image(paths[0], dest, rel)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    cols = ["caption", "image", *extra, *(["split"] if n_split else []), *(["id"] if n_id else [])]
    flattened = 0
    with open(tmp, encoding="utf-8") as f, open(dest / TSV, "w", encoding="utf-8", newline="\n") as out:
        out.write("\t".join(_cell(c)[0] for c in cols) + "\n")
        for line in f:
            row = json.loads(line)
            cells = [_cell(row.get(c, "")) for c in cols]
            flattened += any(changed for _, changed in cells)
            out.write("\t".join(text for text, _ in cells) + "\n")
    tmp.unlink()
    return {"rows": n, "columns": cols, "rows_flattened": flattened}


FORMAT = Format(
    name="cc3m",
    description="CC3M-style TSV (caption, image, item_url)",
    layout="<name>.tsv with a header row caption<TAB>image<TAB>item_url..., image paths relative to it (or --images)",
    read=read,
    write=write,
)
