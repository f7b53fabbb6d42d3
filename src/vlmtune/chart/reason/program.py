"""The rule-based reasoner: a question -> a `Program` over the table (value, argmax/argmin, max/min, difference, sum,
average, compare, count, ratio) -> the answer, with the program as its explanation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vlmtune.chart.reason.base import Answer, ProgramError
from vlmtune.data.chart_table import Table, format_number


@dataclass(frozen=True)
class Program:
    op: str
    """value, argmax, argmin, max, min, difference, signed_difference, sum, average, compare, count, ratio."""
    operands: tuple[tuple[str, str], ...] = ()
    """(label, series) cells the program reads, in the question's order."""
    series: str | None = None
    """The column a whole-column op (argmax, max, sum, average...) reads."""
    relation: str | None = None
    """compare: "greater" or "less"."""

    def text(self) -> str:
        cells = [f"value({label!r}, {series!r})" for label, series in self.operands]
        column = f"column({self.series!r})"
        if self.op == "value":
            return cells[0]
        if self.op in ("argmax", "argmin", "max", "min"):
            return f"{self.op}({column})"
        if self.op in ("sum", "average"):
            fn = "sum" if self.op == "sum" else "mean"
            return f"{fn}({column})" if not cells else f"{fn}([{', '.join(cells)}])"
        if self.op == "difference":
            return f"abs({cells[0]} - {cells[1]})"
        if self.op == "signed_difference":
            return f"{cells[0]} - {cells[1]}"
        if self.op == "compare":
            return f"{cells[0]} {'>' if self.relation == 'greater' else '<'} {cells[1]}"
        if self.op == "ratio":
            return f"{cells[0]} / {cells[1]}"
        if self.op == "count":
            return "len(rows)"
        raise ProgramError(f"unknown program op {self.op!r}")

    def run(self, table: Table) -> str:
        def cell(label: str, series: str) -> float:
            value = table.value(label, series)
            if value is None:
                raise ProgramError(f"the cell ({label!r}, {series!r}) holds no number")
            return value

        def column() -> list[float]:
            values = table.column(self.series)
            if not values or any(v is None for v in values):
                raise ProgramError(f"column {self.series!r} has cells that are not numbers: {values}")
            return values

        values = [cell(label, series) for label, series in self.operands]
        if self.op == "value":
            return format_number(values[0])
        if self.op in ("argmax", "argmin"):
            col = column()
            pick = max(col) if self.op == "argmax" else min(col)
            return table.labels[col.index(pick)]
        if self.op in ("max", "min"):
            return format_number(max(column()) if self.op == "max" else min(column()))
        if self.op in ("sum", "average"):
            xs = values or column()
            total = sum(xs)
            return format_number(round(total if self.op == "sum" else total / len(xs), 2))
        if self.op == "difference":
            return format_number(round(abs(values[0] - values[1]), 2))
        if self.op == "signed_difference":
            return format_number(round(values[0] - values[1], 2))
        if self.op == "compare":
            yes = values[0] > values[1] if self.relation == "greater" else values[0] < values[1]
            return "Yes" if yes else "No"
        if self.op == "ratio":
            if values[1] == 0:
                raise ProgramError("ratio with a zero denominator")
            return format_number(round(values[0] / values[1], 2))
        if self.op == "count":
            return str(len(table.rows))
        raise ProgramError(f"unknown program op {self.op!r}")


_MORE = r"greater|more|higher|larger|bigger"
_LESS = r"less|lower|smaller|fewer"
_MAX = r"highest|largest|most|maximum|biggest|greatest|peak|top"
_MIN = r"lowest|smallest|least|minimum|fewest"


def _mentions(names: list[str], question: str) -> list[str]:
    """The names that occur in the question as whole words (case-insensitive), in order of first occurrence; a
    name inside a longer matched name ("Guinea" in "Papua New Guinea") is not counted twice."""
    found: list[tuple[int, int, str]] = []
    for name in sorted({n for n in names if n.strip()}, key=len, reverse=True):
        m = re.search(rf"(?<!\w){re.escape(name.strip())}(?!\w)", question, flags=re.IGNORECASE)
        if m and not any(a <= m.start() < b for a, b, _ in found):
            found.append((m.start(), m.end(), name))
    return [name for _, _, name in sorted(found)]


def parse_question(table: Table, question: str) -> Program:
    """The program that answers `question` on `table` (ProgramError when none fits)."""
    if not table.rows or len(table.header) < 2:
        raise ProgramError("the table has no data rows")
    q = question.strip()
    low = q.lower()
    labels = _mentions(table.labels, q)
    series_named = _mentions(table.series, q)
    series = series_named[0] if series_named else table.series[0]

    def pairs(n: int) -> tuple[tuple[str, str], ...]:
        if len(labels) >= n:
            return tuple((label, series) for label in labels[:n])
        if len(labels) == 1 and len(series_named) >= n:  # one label, several series: across the series
            return tuple((labels[0], s) for s in series_named[:n])
        raise ProgramError(f"the question names {len(labels)} of the table's labels {table.labels}; {n} are needed")

    def has(pattern: str) -> bool:
        return re.search(rf"\b(?:{pattern})\b", low) is not None

    if has("ratio") or has("how many times"):
        return Program("ratio", pairs(2))
    if has("difference|gap|differ"):
        return Program("difference", pairs(2))
    if re.search(rf"\bhow (?:much|many) (?:{_MORE}|{_LESS})\b", low):
        more = re.search(rf"\bhow (?:much|many) (?:{_MORE})\b", low) is not None
        a, b = pairs(2)
        return Program("signed_difference", (a, b) if more else (b, a))
    if re.match(r"(?:is|are|does|do|was|were|has|did)\b", low) and has("than"):
        relation = "greater" if has(_MORE) else "less" if has(_LESS) else None
        if relation is None:
            raise ProgramError(f"a yes/no comparison without greater/less: {question!r}")
        return Program("compare", pairs(2), relation=relation)
    if has("how many") and not labels:
        return Program("count")
    if has("average|mean"):
        return Program("average", pairs(len(labels)) if len(labels) >= 2 else (), series=series)
    if has("sum|total|combined|altogether"):
        return Program("sum", pairs(len(labels)) if len(labels) >= 2 else (), series=series)
    if has(_MAX) or has(_MIN):
        # "Which country has the highest value?" / "What year had the lowest ...?" ask for a label;
        # "What is the highest value?" for the number
        label = has("which|who") or re.match(r"what\s+(?!is\b|was\b|are\b|were\b)\w+", low) is not None
        top = has(_MAX)
        return Program(("argmax" if top else "argmin") if label else ("max" if top else "min"), series=series)
    if len(labels) >= 1:
        return Program("value", pairs(1))
    raise ProgramError(f"no program fits the question {question!r} (it names none of the labels {table.labels})")


@dataclass
class ProgramReasoner:
    """The default reasoner: parse the question into a `Program`, run it on the table."""

    name: str = "program"

    def answer(self, table: Table, question: str) -> Answer:
        try:
            program = parse_question(table, question)
            text = program.text()
            return Answer(answer=program.run(table), program=text, reasoner=self.name)
        except (ProgramError, ValueError, IndexError) as e:
            return Answer(answer="", program="", ok=False, error=str(e), reasoner=self.name)
