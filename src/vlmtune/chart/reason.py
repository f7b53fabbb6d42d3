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

DePlot's own setups put an LLM over the table (`build_reasoner(setup, lm)`; `SETUPS`):

    zero_shot   ZeroShotReasoner          the table and the question; the first line of the reply
    cot         CoTReasoner               few-shot chain-of-thought; the answer after "The answer is"
    pot         PoTReasoner               few-shot program-of-thought; the program runs in chart/sandbox.py
    sc          SelfConsistencyReasoner   k samples per style (cot and pot) at a temperature; majority vote

Each takes plain callables (`prompt -> reply`; for sc `(prompt, n, temperature) -> replies`), so a test passes a
scripted fake and `vlmtune chart` a local LM (`vlmtune.chart.lm`); the prompts and exemplars are in
`vlmtune.chart.prompts`. A model that fails or states no answer gives `Answer(ok=False)` with the reason, never a
guess; `Fallback(reasoner, ProgramReasoner())` lets the program answer then, and the Answer says so.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from vlmtune.chart.lm import TextLM, generator, sampler
from vlmtune.chart.prompts import (
    COT_EXEMPLARS,
    POT_EXEMPLARS,
    STOP,
    Exemplar,
    answer_text,
    clean_answer,
    cot_answer,
    cot_prompt,
    cut_reply,
    normalise_answer,
    pot_prompt,
    program_of,
)
from vlmtune.chart.sandbox import MEMORY_LIMIT_MB, TIME_LIMIT_S, SandboxError, run_program
from vlmtune.data.chart_table import Table, format_number


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
SC_K = 5
"""Self-consistency: samples per prompt style (with the default styles cot and pot, 10 samples a question)."""
SC_TEMPERATURE = 0.7
"""Self-consistency's sampling temperature (Wang et al. 2023 sampled GPT-3 and PaLM at 0.7)."""
MAX_NEW_TOKENS = {"zero_shot": 32, "cot": 160, "pot": 200}
"""Reply tokens per prompt style: ~2x the longest exemplar reply (CoT 72 tokens, a PoT program 135, in the GPT-2
vocabulary of ai-forever/rugpt3small_based_on_gpt2)."""


def llm_prompt(table: Table, question: str) -> str:
    """The zero-shot prompt: the table (one row per line, cells joined by " | ") and the question."""
    return LLM_PROMPT.format(table=table.to_text("\n"), question=question.strip())


def _first_answer(text: str) -> str:
    """The answer in a model's reply: its first non-empty line, without an "Answer:" prefix or a final period."""
    for line in text.splitlines():
        line = re.sub(r"(?i)^\s*(?:the\s+)?answer\s*(?:is)?\s*[:=]?\s*", "", line).strip().rstrip(".").strip()
        if line:
            return line
    return ""


def _failed(e: Exception) -> str:
    return f"the model failed: {type(e).__name__}: {e}"


@dataclass
class ZeroShotReasoner:
    """One prompt, no examples: the table and the question, the first line of the reply is the answer."""

    generate: Callable[[str], str]
    name: str = "zero_shot"

    def answer(self, table: Table, question: str) -> Answer:
        try:
            reply = self.generate(llm_prompt(table, question))
        except Exception as e:  # a remote backend may time out, a local one run out of memory: say so
            return Answer(answer="", program="", ok=False, error=_failed(e), reasoner=self.name)
        found = _first_answer(reply)
        return Answer(answer=found, program=reply, ok=bool(found), reasoner=self.name,
                      error=None if found else f"the model's reply has no answer: {reply!r}")


@dataclass
class CoTReasoner:
    """Few-shot chain-of-thought (DePlot with FlanPaLM / GPT-3): the exemplars' reasoning in words, then the table;
    the answer follows the reply's last "The answer is"."""

    generate: Callable[[str], str]
    exemplars: tuple[Exemplar, ...] = COT_EXEMPLARS
    name: str = "cot"

    def answer(self, table: Table, question: str) -> Answer:
        try:
            reply = cut_reply(self.generate(cot_prompt(table, question, self.exemplars)))
        except Exception as e:
            return Answer(answer="", program="", ok=False, error=_failed(e), reasoner=self.name)
        found = cot_answer(reply)
        return Answer(answer=found, program=reply, ok=bool(found), reasoner=self.name,
                      error=None if found else f"the reply states no answer (no 'The answer is'): {reply[:200]!r}")


def check_limits(time_limit_s: float, memory_mb: int) -> None:
    """The sandbox limits a PoT reasoner is given: a positive time, and memory the interpreter can run in."""
    if not time_limit_s > 0 or memory_mb < 32:
        raise ValueError(f"program-of-thought limits: --pot-time-limit must be > 0 s and --pot-memory-mb at least 32 "
                         f"(got {time_limit_s} s, {memory_mb} MB)")


def run_pot(program: str, time_limit_s: float, memory_mb: int) -> tuple[str, str | None]:
    """(answer, error) of a program-of-thought program run in the sandbox."""
    try:
        answer = answer_text(run_program(program, time_limit_s=time_limit_s, memory_mb=memory_mb))
    except (SandboxError, ValueError) as e:
        return "", str(e)
    return answer, None if answer else "`ans` is empty"


@dataclass
class PoTReasoner:
    """Few-shot program-of-thought (DePlot with Codex): the LM writes Python that sets `ans` from the table; the
    program runs in `vlmtune.chart.sandbox` (no imports, no files, time and memory limits)."""

    generate: Callable[[str], str]
    exemplars: tuple[Exemplar, ...] = POT_EXEMPLARS
    time_limit_s: float = TIME_LIMIT_S
    memory_mb: int = MEMORY_LIMIT_MB
    name: str = "pot"

    def __post_init__(self) -> None:
        check_limits(self.time_limit_s, self.memory_mb)

    def answer(self, table: Table, question: str) -> Answer:
        try:
            program = program_of(self.generate(pot_prompt(table, question, self.exemplars)))
        except Exception as e:
            return Answer(answer="", program="", ok=False, error=_failed(e), reasoner=self.name)
        found, error = run_pot(program, self.time_limit_s, self.memory_mb)
        return Answer(answer=found, program=program, ok=error is None, error=error, reasoner=self.name)


PROMPTS: dict[str, Callable[[Table, str], str]] = {"zero_shot": llm_prompt, "cot": cot_prompt, "pot": pot_prompt}
"""The prompt styles self-consistency can sample from."""


@dataclass
class SelfConsistencyReasoner:
    """Self-consistency (Wang et al. 2023; DePlot's best setup pools FlanPaLM's CoT and Codex's PoT samples): `k`
    replies sampled at `temperature` for each prompt style in `prompts`, each read into an answer (a PoT program is
    run), and the answer most of them give wins. Answers are compared after `normalise_answer` ("46", "46.0" and
    "46%" are one vote); samples without an answer do not vote; a tie goes to the answer sampled first (as DePlot's
    `_majority`, a Counter's order). `sample(prompt, n, temperature) -> n replies`."""

    sample: Callable[[str, int, float], list[str]]
    k: int = SC_K
    temperature: float = SC_TEMPERATURE
    prompts: tuple[str, ...] = ("cot", "pot")
    time_limit_s: float = TIME_LIMIT_S
    memory_mb: int = MEMORY_LIMIT_MB
    name: str = "sc"

    def __post_init__(self) -> None:
        unknown = [p for p in self.prompts if p not in PROMPTS]
        if unknown or not self.prompts:
            raise ValueError(f"self-consistency prompts {unknown or '()'}: choose from {', '.join(PROMPTS)}")
        check_limits(self.time_limit_s, self.memory_mb)
        if self.k < 1 or self.temperature <= 0:
            raise ValueError(f"self-consistency needs k >= 1 and a temperature > 0 (got k={self.k}, "
                             f"temperature={self.temperature})")

    def _read(self, style: str, reply: str) -> dict:
        if style == "pot":
            program = program_of(reply)
            found, error = run_pot(program, self.time_limit_s, self.memory_mb)
            return {"prompt": style, "reply": program, "answer": found, "error": error}
        reply = cut_reply(reply) if style == "cot" else reply
        found = cot_answer(reply) if style == "cot" else _first_answer(reply)
        return {"prompt": style, "reply": reply, "answer": found, "error": None if found else "no answer"}

    def answer(self, table: Table, question: str) -> Answer:
        samples: list[dict] = []
        for style in self.prompts:
            try:
                replies = self.sample(PROMPTS[style](table, question), self.k, self.temperature)
            except Exception as e:
                samples += [{"prompt": style, "reply": "", "answer": "", "error": _failed(e)}] * self.k
                continue
            samples += [self._read(style, r) for r in replies]
        answer, votes = majority([s["answer"] for s in samples])
        program = ", ".join(f"{a or '(no answer)'} x{n}" for a, n in votes.items())
        if not answer:
            return Answer(answer="", program=program, ok=False, reasoner=self.name, samples=samples,
                          error=f"none of the {len(samples)} samples gave an answer")
        return Answer(answer=answer, program=program, reasoner=self.name, samples=samples)


def majority(answers: list[str]) -> tuple[str, dict[str, int]]:
    """(the winning answer, votes per normalised answer, most first): the first-sampled answer whose normalised form
    most samples share; empty answers do not vote ("" when none answered)."""
    votes: Counter[str] = Counter()
    first: dict[str, str] = {}
    for a in answers:
        key = normalise_answer(a) if a else ""
        if key:
            votes[key] += 1
            first.setdefault(key, clean_answer(a))
    if not votes:
        return "", {"": len(answers)}
    ranked = dict(votes.most_common())
    if len(answers) > sum(ranked.values()):
        ranked[""] = len(answers) - sum(ranked.values())
    return first[next(iter(ranked))], {first.get(k, ""): n for k, n in ranked.items()}


@dataclass
class Fallback:
    """`first`, and `then` when `first` gives no answer; the Answer names both ("cot->program") and why."""

    first: Reasoner
    then: Reasoner

    @property
    def name(self) -> str:
        return self.first.name

    def answer(self, table: Table, question: str) -> Answer:
        got = self.first.answer(table, question)
        if got.ok:
            return got
        other = self.then.answer(table, question)
        return Answer(answer=other.answer, program=other.program, ok=other.ok, samples=got.samples,
                      error=f"{got.error}; answered by {other.reasoner}" + (f" ({other.error})" if other.error else ""),
                      reasoner=f"{got.reasoner}->{other.reasoner}")


SETUPS = ("program", "zero_shot", "cot", "pot", "sc")
"""The reasoning setups `vlmtune chart ask|eval --reasoner` offer: the rule-based program (no LM), and DePlot's four
with an LM over the table: zero-shot, few-shot chain-of-thought, program-of-thought, self-consistency."""


def build_reasoner(setup: str, lm: TextLM | None = None, *, max_new_tokens: int | None = None, k: int = SC_K,
                   temperature: float = SC_TEMPERATURE, sc_prompts: tuple[str, ...] = ("cot", "pot"),
                   time_limit_s: float = TIME_LIMIT_S, memory_mb: int = MEMORY_LIMIT_MB,
                   fallback: bool = False) -> Reasoner:
    """The reasoner of one setup over `lm` (`max_new_tokens`: reply tokens, default `MAX_NEW_TOKENS` of the style);
    `fallback`: the program answers where the LM gives no answer."""
    if setup not in SETUPS:
        raise ValueError(f"unknown reasoning setup {setup!r}: choose from {', '.join(SETUPS)}")
    if setup == "program":
        return ProgramReasoner()
    if lm is None:
        raise ValueError(f"the {setup} setup needs a language model (--llm DIR: a causal LM or a vlmtune model "
                         "directory)")

    def tokens(style: str) -> int:  # an unknown style is refused by SelfConsistencyReasoner below
        return max_new_tokens or MAX_NEW_TOKENS.get(style, max(MAX_NEW_TOKENS.values()))

    reasoner: Reasoner
    if setup == "zero_shot":  # an instruction, not a document to continue: the chat template where there is one
        reasoner = ZeroShotReasoner(generator(lm, tokens("zero_shot"), chat=True))  # no stop: a reply may open with
        # a newline, and its first non-empty line is the answer
    elif setup == "cot":
        reasoner = CoTReasoner(generator(lm, tokens("cot"), STOP))
    elif setup == "pot":
        reasoner = PoTReasoner(generator(lm, tokens("pot"), STOP), time_limit_s=time_limit_s, memory_mb=memory_mb)
    else:
        longest = max(tokens(style) for style in sc_prompts) if sc_prompts else 0
        reasoner = SelfConsistencyReasoner(sampler(lm, longest, STOP), k=k, temperature=temperature,
                                           prompts=tuple(sc_prompts), time_limit_s=time_limit_s, memory_mb=memory_mb)
    return Fallback(reasoner, ProgramReasoner()) if fallback else reasoner
