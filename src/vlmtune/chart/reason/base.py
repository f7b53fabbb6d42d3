"""What every chart reasoner returns and is (the reasoners: chart/reason/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from vlmtune.data.chart_table import Table


@dataclass(frozen=True)
class Answer:
    answer: str
    """The answer ("" when none could be given)."""
    program: str
    """What was run: the program text (ProgramReasoner, PoT), the model's reply (zero-shot, CoT) or the votes (sc)."""
    ok: bool = True
    error: str | None = None
    """Why there is no answer, or what went wrong before a fallback answered."""
    reasoner: str = "program"
    samples: list[dict] | None = None
    """Self-consistency: each sample's prompt style, reply, answer and error."""


class Reasoner(Protocol):
    name: str

    def answer(self, table: Table, question: str) -> Answer: ...


class ProgramError(ValueError):
    """The question fits no program, or the table lacks what the program needs."""
