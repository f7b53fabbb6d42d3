"""The attribute table (.csv or .xlsx) read as text rows: `iter_table` gives each row's cells, `read_rows` each
usable row as a `Row` (its image resolved inside the images directory and hashed), or a `BadRecord` naming the row.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tqdm import tqdm

from vlmtune.data.attributes.templates import Templates, placeholders
from vlmtune.data.formats.base import check_image
from vlmtune.data.images import ImageError, resolve_inside
from vlmtune.data.store import BadRecord
from vlmtune.io import file_sha256

IMAGE_COLUMNS = ("image", "file_name", "filename")
"""Image column names tried in this order when the templates name none."""
DELIMITERS = (",", ";", "\t")
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of undecodable bytes


def _cell_text(value) -> str:
    """An .xlsx cell as the text the spreadsheet shows (numbers as Python writes them: 0.5 -> "0.5", 2 -> "2")."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == datetime.min.time() else value.isoformat(sep=" ")
    return str(value)


def _sniff_delimiter(header_line: str) -> str:
    """The delimiter among , ; TAB that occurs most often in the header row (ties: the earlier in DELIMITERS)."""
    counts = [header_line.count(d) for d in DELIMITERS]
    return DELIMITERS[counts.index(max(counts))]


def _iter_csv(path: Path) -> Iterator[tuple[int, list[str]] | BadRecord]:
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        first = f.readline()
        reader = csv.reader(itertools.chain([first], f), delimiter=_sniff_delimiter(first))
        number = 0
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                number += 1
                yield BadRecord(path, number, f"row {number}: unreadable ({e})")
                continue
            number += 1
            if any(_NOT_UTF8.search(c) for c in cells):
                yield BadRecord(path, number, f"row {number}: not valid UTF-8 (save the table as UTF-8 CSV)")
            else:
                yield number, cells


def _iter_xlsx(path: Path, sheet: str | None) -> Iterator[tuple[int, list[str]] | BadRecord]:
    import openpyxl

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises zipfile, KeyError, XML errors... for a file that is not a workbook
        raise ValueError(f"{path}: cannot open as .xlsx ({type(e).__name__}: {e})") from None
    try:
        if sheet is not None and sheet not in wb.sheetnames:
            raise ValueError(f"{path}: no sheet {sheet!r}; sheets: {wb.sheetnames}")
        ws = wb[sheet] if sheet is not None else wb.worksheets[0]
        for number, values in enumerate(ws.iter_rows(values_only=True), start=1):  # read_only starts at row 1
            yield number, [_cell_text(v) for v in values]
    finally:
        wb.close()


def iter_table(path: str | Path, sheet: str | None = None) -> Iterator[tuple[int, list[str]] | BadRecord]:
    """Every row of a .csv or .xlsx table, header included, as (row number, cells as text) - the numbers a
    spreadsheet shows, row 1 first - or a BadRecord for a row that cannot be read."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        return _iter_xlsx(path, sheet)
    if suffix in (".csv", ".tsv", ".txt"):
        if sheet is not None:
            raise ValueError(f"{path}: `sheet` applies to .xlsx tables only")
        return _iter_csv(path)
    raise ValueError(f"{path}: unsupported table type {path.suffix!r} (use .csv or .xlsx)")


@dataclass
class Row:
    number: int
    """The table row (1-based, the header is row 1 when it is the first row)."""
    cells: dict[str, str]
    """Column -> cell text stripped of surrounding whitespace."""
    image: str
    """The image path relative to the images directory (posix)."""
    source: Path
    sha256: str


def _header(cells: list[str], table: Path, tpl: Templates) -> tuple[list[str], str]:
    """The column names and the image column, checking that every column the templates use exists."""
    names = [c.strip() for c in cells]
    while names and not names[-1]:
        names.pop()
    dup = sorted(n for n, k in Counter(names).items() if n and k > 1)
    if dup:
        raise ValueError(f"{table}: repeated column name(s) {dup} in the header row")
    image_column = tpl.image_column or next((c for c in IMAGE_COLUMNS if c in names), None)
    if image_column is None or image_column not in names:
        raise ValueError(f"{table}: no image column {tpl.image_column or ' / '.join(IMAGE_COLUMNS)!r} in the "
                         f"header {names} (set image_column in {tpl.file})")
    needed = {a.column: f"attributes.{a.name}.column" for a in tpl.attributes}
    for a in tpl.attributes:
        for key, templates in (("questions", a.questions), ("yes_no", a.yes_no)):
            for lang, questions in templates.items():
                for q in questions:
                    for name in placeholders(q):
                        needed.setdefault(name, f"attributes.{a.name}.{key}.{lang} {q!r}")
    missing = {c: used for c, used in needed.items() if c not in names}
    if missing:
        raise ValueError(f"{tpl.file}: column(s) not in the header of {table}: "
                         + "; ".join(f"{c!r} (used by {u})" for c, u in missing.items()) + f". Columns: {names}")
    return names, image_column


def _row(number: int, cells: list[str], names: list[str], image_column: str, images: Path) -> Row:
    """One data row -> Row, or ValueError saying what is wrong with it."""
    if len(cells) < len(names) or any(c.strip() for c in cells[len(names):]):
        raise ValueError(f"{len(cells)} cells but the header has {len(names)} columns (an unquoted delimiter "
                         "inside a value, or a cut row?)")
    row = {name: cell.strip() for name, cell in zip(names, cells[:len(names)], strict=True) if name}
    rel = row[image_column]
    if not rel:
        raise ValueError(f"empty image cell ({image_column!r})")
    path = resolve_inside(images, rel)  # ImageError (a ValueError) for absolute or escaping paths
    if not path.is_file() and "\\" in rel:  # a catalogue typed on Windows: photos\look1.jpg
        rel = rel.replace("\\", "/")
        path = resolve_inside(images, rel)
    if not path.is_file():
        raise ImageError(f"image {rel!r} not found in {images}")

    check_image(path)
    # the path as written, normalised ("./a//b.png" -> "a/b.png"), not resolved: a symlink keeps its own name
    return Row(number, row, Path(os.path.normpath(rel)).as_posix(), path, file_sha256(path))


def read_rows(table: Path, images: Path, tpl: Templates, sheet: str | None, skip_bad: bool,
              progress: bool) -> tuple[list[Row], list[BadRecord]]:
    """Pass 1: the table's valid rows (text only; images hashed as streams) and its bad ones."""
    rows: list[Row] = []
    bad: list[BadRecord] = []
    header: tuple[list[str], str] | None = None
    stems: dict[str, int] = {}
    for rec in tqdm(iter_table(table, sheet), desc="read table", unit=" rows", disable=not progress):
        if isinstance(rec, tuple) and not any(c.strip() for c in rec[1]):
            continue  # blank rows (a spreadsheet's formatted-but-empty rows, blank CSV lines)
        if header is None:
            if isinstance(rec, BadRecord):
                raise ValueError(f"{table}: the header row is unreadable ({rec.reason})")
            header = _header(rec[1], table, tpl)
            continue
        if isinstance(rec, tuple):
            number, cells = rec
            try:
                row = _row(number, cells, *header, images)
                stem = Path(row.image).stem
                if stem in stems:
                    raise ValueError(f"image {row.image!r}: the name {stem!r} is already used by row {stems[stem]} "
                                     "(sample ids are <image stem>-<attribute>-<lang>)")
                stems[stem] = number
                rows.append(row)
                continue
            except (ValueError, OSError) as e:  # ImageError is a ValueError; OSError: an unreadable image file
                rec = BadRecord(table, number, f"row {number}: {e}", json.dumps(cells, ensure_ascii=False))
        if not skip_bad:
            raise BadRecord(rec.file, rec.line, rec.reason + " (--skip-bad skips bad rows)", rec.raw)
        bad.append(rec)
    if header is None:
        raise ValueError(f"{table}: empty table (no header row)")
    return rows, bad
