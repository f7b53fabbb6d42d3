"""DePlot's reasoning setups with a text model over the table: zero-shot, few-shot chain-of-thought (CoT),
program-of-thought (PoT, run in the sandbox), self-consistency over sampled CoT and PoT replies, and `Fallback`.
Each takes plain `prompt -> reply` callables (chart/lm.py makes them from a model); this module imports
neither (chart/lm.py imports its `llm_prompt` to train a tokenizer on the prompts).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from vlmtune.chart.prompts import (
    COT_EXEMPLARS,
    POT_EXEMPLARS,
    Exemplar,
    answer_text,
    clean_answer,
    cot_answer,
    cot_prompt,
    cut_reply,
    llm_prompt,
    normalise_answer,
    pot_prompt,
    program_of,
)
from vlmtune.chart.reason.base import Answer, Reasoner
from vlmtune.chart.sandbox import MEMORY_LIMIT_MB, TIME_LIMIT_S, SandboxError, run_program
from vlmtune.data.chart_table import Table

SC_K = 5
"""Self-consistency: samples per prompt style (with the default styles cot and pot, 10 samples a question)."""
SC_TEMPERATURE = 0.7
"""Self-consistency's sampling temperature (Wang et al. 2023 sampled GPT-3 and PaLM at 0.7)."""
MAX_NEW_TOKENS = {"zero_shot": 32, "cot": 160, "pot": 200}
"""Reply tokens per prompt style: ~2x the longest exemplar reply (CoT 72 tokens, a PoT program 135, in the GPT-2
vocabulary of ai-forever/rugpt3small_based_on_gpt2)."""


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
