"""Table + question -> answer: DePlot's second stage (Liu et al. 2023, §4), where a reasoner reads the table that
the chart-to-table model wrote.

DePlot prompts a large LLM (FLAN-PaLM / Codex, with chain-of-thought or program-of-thought). vlmtune's default is a
small deterministic program-of-thought instead: the question is parsed into a program over the table, the program
is run, and both the answer and the program text are returned, so a user sees *why* ("argmax(column('Sales'))").

    ProgramReasoner().answer(Table.from_text(text), "Which country has the highest value?")
    # Answer(answer="Chile", program="argmax(column('Sales'))", ok=True, ...)

Programs (labels and series are found by name in the question, whole words, case-insensitive):

    value       "What is the value for Chile?"                  value('Chile', 'Sales')
    argmax/min  "Which country has the highest value?"          argmax(column('Sales'))
    max/min     "What is the highest value?"                    max(column('Sales'))
    difference  "What is the difference between A and B?"      abs(value('A', s) - value('B', s))
                "How much higher is A than B?"                  value('A', s) - value('B', s)
    sum         "What is the total of all values?"              sum(column(s))      (or of the named labels)
    average     "What is the average of Men?"                   mean(column('Men')) (or of the named labels)
    compare     "Is A greater than B?"                          value('A', s) > value('B', s)  -> "Yes" / "No"
    count       "How many countries are shown?"                 len(rows)
    ratio       "What is the ratio of A to B?"                  value('A', s) / value('B', s)

Two labels and one series, or one label and two series (Is Men greater than Women in 2019?) both work. A question
that fits no program, or names a label the table lacks, gives `Answer(ok=False, error=...)`, never a guess.

`LLMReasoner` is the DePlot-paper path: it prompts a text model with the table and the question (any
`prompt -> text` callable: a causal LM directory through `llm_from_path`, a vlmtune Predictor used text-only, or a
remote API), and falls back to another reasoner when the model gives nothing usable, saying so in the Answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vlmtune.chart.table import Table, format_number


@dataclass(frozen=True)
class Answer:
    answer: str
    """The answer ("" when none could be given)."""
    program: str
    """What was run: the program text (ProgramReasoner) or the model's raw output (LLMReasoner)."""
    ok: bool = True
    error: str | None = None
    """Why there is no answer, or what went wrong before a fallback answered."""
    reasoner: str = "program"


class Reasoner(Protocol):
    name: str

    def answer(self, table: Table, question: str) -> Answer: ...


class ProgramError(ValueError):
    """The question fits no program, or the table lacks what the program needs."""


# ---------------------------------------------------------------------------------------------------- programs


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


# --------------------------------------------------------------------------------------------------------- LLM

LLM_PROMPT = (
    "Read the table below and answer the question with a single word or number.\n\n"
    "{table}\n\nQuestion: {question}\nAnswer:"
)


def llm_prompt(table: Table, question: str) -> str:
    """The prompt a text model gets: the table (one row per line, cells joined by " | ") and the question."""
    return LLM_PROMPT.format(table=table.to_text("\n"), question=question.strip())


def _first_answer(text: str) -> str:
    """The answer in a model's reply: its first non-empty line, without an "Answer:" prefix or a final period."""
    for line in text.splitlines():
        line = re.sub(r"(?i)^\s*(?:the\s+)?answer\s*(?:is)?\s*[:=]?\s*", "", line).strip().rstrip(".").strip()
        if line:
            return line
    return ""


@dataclass
class LLMReasoner:
    """DePlot's LLM stage: `generate(prompt) -> reply` answers from the table; `fallback` (e.g. ProgramReasoner())
    answers when the model fails or says nothing, and the Answer names both."""

    generate: Callable[[str], str]
    fallback: Reasoner | None = None
    name: str = "llm"

    def answer(self, table: Table, question: str) -> Answer:
        prompt = llm_prompt(table, question)
        try:
            reply = self.generate(prompt)
            error = None if _first_answer(reply) else f"the model's reply has no answer: {reply!r}"
        except Exception as e:  # a remote backend may time out, a local one run out of memory: say so, fall back
            reply, error = "", f"the model failed: {type(e).__name__}: {e}"
        if error is None:
            return Answer(answer=_first_answer(reply), program=reply, reasoner=self.name)
        if self.fallback is None:
            return Answer(answer="", program=reply, ok=False, error=error, reasoner=self.name)
        other = self.fallback.answer(table, question)
        return Answer(answer=other.answer, program=other.program, ok=other.ok,
                      error=f"{error}; answered by {other.reasoner}" + (f" ({other.error})" if other.error else ""),
                      reasoner=f"{self.name}->{other.reasoner}")


def llm_from_path(path: str | Path, max_new_tokens: int = 32) -> Callable[[str], str]:
    """A greedy `prompt -> reply` function over a local model directory: a vlmtune run / VLM family directory
    (used text-only through Predictor) or a plain causal LM (transformers AutoModelForCausalLM; its chat template
    when it has one)."""
    from vlmtune.models import family_of

    path = Path(path)
    try:
        is_vlm = (path / "run_config.yaml").is_file() or bool(family_of(path))
    except (ValueError, FileNotFoundError):
        is_vlm = False
    if is_vlm:
        from vlmtune.infer import Predictor

        predictor = Predictor.from_path(path, max_new_tokens=max_new_tokens)
        if not predictor.family.text_only:
            raise ValueError(f"{path}: the {predictor.family.name} family cannot answer text-only prompts; use a "
                             "causal LM or a family that takes text-only samples")
        return lambda prompt: predictor.ask(None, prompt)
    return _causal_lm(path, max_new_tokens)


def _causal_lm(path: Path, max_new_tokens: int) -> Callable[[str], str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a causal LM directory for --llm)")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()

    def generate(prompt: str) -> str:
        if tok.chat_template:
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)["input_ids"]
        else:
            ids = tok(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    return generate

