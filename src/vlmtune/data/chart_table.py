"""A chart's data table and DePlot's linearised text for it.

DePlot (Liu et al. 2023, §3 and google-research ``deplot``) writes a table as one string: an optional title line,
a header row, then one row per x-axis label; cells are separated by ``" | "`` and rows by the newline, which DePlot's
tokenizer (a T5 sentencepiece model with byte fallback) spells as the literal token ``<0x0A>``:

    TITLE | Sales by country <0x0A> Country | Sales <0x0A> Chile | 12 <0x0A> Peru | 30

`Table.to_text` writes exactly that. `Table.from_text` reads what models actually emit, tolerantly: ``<0x0A>`` with
or without the spaces around it, real newlines, stray spaces around cells, a lower-case ``title |``, blank lines,
ragged rows (short rows are padded with "", extra cells dropped), and ChartQA's CSV tables (``tables/*.csv``,
kept as `meta["table"]` by the chartqa importer; a ``|`` inside some of their cells leaves them CSV). Scoring
tables is not done here: RMS-F1 and RNSS live in `vlmtune.eval.metrics.table`, which matches the official
``deplot/metrics.py``. A table is data: the drawn charts (`charts.py`) and the ChartQA stand-in (`standin.py`) write
theirs with it, and `vlmtune.chart` reads a model's.

`parse_number` reads a cell as a number the way a reader of the chart would: ``"1,234"``, ``"46%"``, ``"$12.5"``,
``"12 kg"``, ``"(3)"`` are 1234, 46, 12.5, 12 and -3. (A percentage stays in percent: ChartQA answers a
question about a "46%" cell with "46".)
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

NEWLINE_TOKEN = "<0x0A>"
"""The newline as DePlot's checkpoints write it (sentencepiece's byte-fallback piece for 0x0A)."""
ROW_SEPARATOR = f" {NEWLINE_TOKEN} "
CELL_SEPARATOR = " | "

_NEWLINE = re.compile(r"\s*<0x0A>\s*|\r\n|\r|\n")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_THOUSANDS = re.compile(r"(?<=\d)[,\u202f\u00a0' ](?=\d{3}(?!\d))")
_CURRENCY = "$€£¥₹"


def parse_number(cell: str) -> float | None:
    """The number a table cell holds, or None when it holds none (see the module docstring for what is accepted).

    The cell must start with the number (after an optional sign, currency symbol or opening parenthesis) and may
    end with a unit (``%``, ``kg``, ``M``...); ``"2019 Q1"`` is 2019, ``"Q1 2019"`` and ``"N/A"`` are not numbers.
    """
    text = cell.strip()
    if not text:
        return None
    negative = text.startswith("(") and text.endswith(")")  # accounting style: (3) is -3
    text = text.strip("()").strip()
    sign = ""
    if text[:1] in "+-−":
        sign, text = ("-" if text[0] in "-−" else ""), text[1:].lstrip()
    text = text.lstrip(_CURRENCY).lstrip()
    text = _THOUSANDS.sub("", text)
    match = _NUMBER.match(text)
    if match is None:
        return None
    rest = text[match.end():].strip()
    if rest and (rest[0].isdigit() or rest[0] in ".,"):  # "1.2.3", "12,5,6": not one number
        return None
    value = float(sign + match.group())
    return -value if negative else value


def format_number(value: float) -> str:
    """A number as an answer: integers without a decimal point, others rounded to 2 decimals ("12", "2.5")."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _is_csv(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    if NEWLINE_TOKEN in text or "," not in text or re.match(r"(?i)\s*title\s*\|", lines[0]):
        return False
    return not all("|" in line for line in lines)


@dataclass(frozen=True)
class Table:
    """A chart's data: `header[0]` names the x axis (or the categories), `header[1:]` the series (columns); each row
    is a label followed by one cell per series."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    title: str | None = None

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.header):
                raise ValueError(f"table row {i} has {len(row)} cells, the header {len(self.header)}: {row!r}")

    # -------------------------------------------------------------------------------------------- text

    def to_text(self, row_separator: str = ROW_SEPARATOR) -> str:
        """DePlot's linearisation (``row_separator="\\n"`` gives the newline form the metrics read)."""
        lines = [] if self.title is None else [f"TITLE{CELL_SEPARATOR}{self.title}"]
        lines += [CELL_SEPARATOR.join(self.header)] + [CELL_SEPARATOR.join(row) for row in self.rows]
        return row_separator.join(lines)

    def to_csv(self) -> str:
        """ChartQA's `tables/*.csv` form: header and rows, comma-separated and quoted where needed, no title (ChartQA
        tables have none)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.header)
        writer.writerows(self.rows)
        return buf.getvalue()

    @classmethod
    def from_text(cls, text: str) -> Table:
        """Parse DePlot text or ChartQA's CSV tolerantly; an empty text is an empty table.

        CSV is text with a comma, no ``<0x0A>``, no ``title |`` line and some line without any ``|``: so a ``|``
        inside some cells of a ChartQA CSV (``"Dem | Rep",12``) leaves it CSV."""
        if _is_csv(text):
            return cls._from_csv(text)
        lines = [line.strip() for line in _NEWLINE.split(text)]
        lines = [line for line in lines if line]
        title = None
        if lines and re.match(r"(?i)title\s*\|", lines[0]):
            title = lines[0].split("|", 1)[1].strip()
            lines = lines[1:]
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
        if not cells:
            return cls(header=(), rows=(), title=title)
        width = len(cells[0])
        rows = tuple(tuple((row + [""] * width)[:width]) for row in cells[1:])
        return cls(header=tuple(cells[0]), rows=rows, title=title)

    @classmethod
    def _from_csv(cls, text: str) -> Table:
        rows = csv.reader(text.strip().splitlines())
        cells = [[c.strip() for c in row] for row in rows if any(c.strip() for c in row)]
        if not cells:
            return cls(header=(), rows=())
        width = len(cells[0])
        return cls(header=tuple(cells[0]), rows=tuple(tuple((r + [""] * width)[:width]) for r in cells[1:]))

    # -------------------------------------------------------------------------------------------- access

    @property
    def labels(self) -> list[str]:
        """The row labels (x-axis categories, pie slices), in order."""
        return [row[0] for row in self.rows]

    @property
    def series(self) -> list[str]:
        """The column names after the label column (one per data series)."""
        return list(self.header[1:])

    def column(self, series: str) -> list[float | None]:
        """The numbers of one series, row by row (None where a cell holds no number)."""
        j = self.header.index(series)
        return [parse_number(row[j]) for row in self.rows]

    def value(self, label: str, series: str) -> float | None:
        return parse_number(self.rows[self.labels.index(label)][self.header.index(series)])
