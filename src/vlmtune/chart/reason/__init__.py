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

The package: `base.py` (Answer, the Reasoner protocol), `program.py` (the rule-based ProgramReasoner), `llm.py`
(DePlot's setups over a text model: zero-shot, CoT, PoT, self-consistency, Fallback); `build_reasoner` here.
"""

from __future__ import annotations

from vlmtune.chart.lm import TextLM, generator, sampler
from vlmtune.chart.prompts import LLM_PROMPT, STOP, llm_prompt
from vlmtune.chart.reason.base import Answer, ProgramError, Reasoner
from vlmtune.chart.reason.llm import (
    MAX_NEW_TOKENS,
    SC_K,
    SC_TEMPERATURE,
    CoTReasoner,
    Fallback,
    PoTReasoner,
    SelfConsistencyReasoner,
    ZeroShotReasoner,
    check_limits,
    majority,
    run_pot,
)
from vlmtune.chart.reason.program import Program, ProgramReasoner, parse_question
from vlmtune.chart.sandbox import MEMORY_LIMIT_MB, TIME_LIMIT_S

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


__all__ = ["LLM_PROMPT", "MAX_NEW_TOKENS", "SC_K", "SC_TEMPERATURE", "SETUPS", "Answer", "CoTReasoner", "Fallback",
           "PoTReasoner", "Program", "ProgramError", "ProgramReasoner", "Reasoner", "SelfConsistencyReasoner",
           "ZeroShotReasoner", "build_reasoner", "check_limits", "llm_prompt", "majority", "parse_question", "run_pot"]
