"""The prompts of DePlot's reasoning stage (Liu et al. 2023, §4; google-research `deplot/llm_prompts.py`) and how
an answer is read out of each reply.

DePlot prompts an LLM with the chart's table in a marked-up form (a title line, "Header: ...", "Row 1: ...") after
a few solved examples on ONE other table, in two styles:

* chain-of-thought (Wei et al. 2022): each example answer reasons in words ("Let's find the row of May...") and
  ends with "The answer is X."; the answer is what follows the last "answer is".
* program-of-thought (Chen et al. 2022): each example answer is Python that puts the answer in `ans`; the program
  is run (`vlmtune.chart.sandbox`) and `ans` is the answer.

The exemplars below are vlmtune's own (a rainfall table, not DePlot's approval-rate one), written in DePlot's style
and covering the question kinds of ChartQA and the charts world: argmin, sum of named cells, difference, a yes/no
comparison, second highest, ratio, count (CoT); average, arg-of-largest-gap, a filter, a relative change, a yes/no
comparison (PoT). tests/chart/test_chart_llm_setups.py checks that every CoT exemplar's answer is read back by
`cot_answer` and every PoT exemplar runs in the sandbox to its stated answer. Pass other exemplars to
`cot_prompt` / `pot_prompt` (or the reasoners) for another domain.

Replies are cut at the first blank line or "Q:" (DePlot's stop sequences), as a completion API would stop them.
The zero-shot prompt (`llm_prompt`: the table and the question, no examples) is here too.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

from vlmtune.data.chart_table import Table, format_number, parse_number

INSTRUCTION = "Read the table below to answer the following questions."
POT_INSTRUCTION = "Read the table below to write code to answer the following questions using the variable ans."
STOP = ("\n\n", "\nQ:")
"""Where a reply ends (DePlot stops its completions at a blank line or the next "Q:")."""


@dataclass(frozen=True)
class Exemplar:
    question: str
    reply: str
    """CoT: the reasoning ending "The answer is X."; PoT: the program (without the "#Python" line)."""
    answer: str
    """What the reply yields (checked by the tests)."""


EXEMPLAR_TABLE = Table(
    title="Average monthly rainfall in three cities (mm)",
    header=("Month", "Lisbon", "Oslo", "Lima"),
    rows=(("Jan", "99.9", "49.0", "1.2"), ("Feb", "85.2", "36.1", "2.4"), ("Mar", "57.4", "47.3", "1.9"),
          ("Apr", "63.0", "41.2", "0.8"), ("May", "48.7", "53.5", "0.6"), ("Jun", "13.9", "65.0", "1.5")),
)

COT_EXEMPLARS = (
    Exemplar("In which month does Lisbon get the least rain?",
             "Let's find the column of Lisbon. Its numbers are [99.9, 85.2, 57.4, 63.0, 48.7, 13.9]. The smallest is "
             "13.9, on Row 6. Row 6 is Jun. The answer is Jun.", "Jun"),
    Exemplar("What is the total rainfall of Oslo in Jan, Feb and Mar?",
             "Let's find the rows of Jan, Feb and Mar: Row 1, 2 and 3. Oslo's numbers on them are 49.0, 36.1 and "
             "47.3. 49.0+36.1+47.3=132.4. The answer is 132.4.", "132.4"),
    Exemplar("How much more rain does Oslo get than Lisbon in May?",
             "Let's find the row of May, that's Row 5. Oslo has 53.5 and Lisbon has 48.7. 53.5-48.7=4.8. The answer "
             "is 4.8.", "4.8"),
    Exemplar("Is the rainfall of Lima in Feb greater than in Mar?",
             "Let's find the rows of Feb and Mar: Row 2 and Row 3. Lima has 2.4 in Feb and 1.9 in Mar. 2.4>1.9, so "
             "it is greater. The answer is Yes.", "Yes"),
    Exemplar("Which city has the second highest rainfall in Apr?",
             "Let's find the row of Apr, that's Row 4. Its numbers are [63.0, 41.2, 0.8]. From highest to lowest: "
             "63.0, 41.2, 0.8. The second is 41.2, the number of Oslo. The answer is Oslo.", "Oslo"),
    Exemplar("What is the ratio of Lisbon's rainfall in Jan to its rainfall in Mar?",
             "Jan is Row 1 and Mar is Row 3. Lisbon has 99.9 and 57.4. 99.9/57.4=1.74. The answer is 1.74.", "1.74"),
    Exemplar("How many months are shown?",
             "The table has Row 1 to Row 6, one month each. The answer is 6.", "6"),
)

POT_EXEMPLARS = (
    Exemplar("What is the average rainfall of Lima over the six months?",
             "lima = [1.2, 2.4, 1.9, 0.8, 0.6, 1.5]\nans = sum(lima) / len(lima)", "1.4"),
    Exemplar("In which month is the gap between Lisbon and Oslo the largest?",
             'months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun"]\n'
             "lisbon = [99.9, 85.2, 57.4, 63.0, 48.7, 13.9]\n"
             "oslo = [49.0, 36.1, 47.3, 41.2, 53.5, 65.0]\n"
             "gaps = [abs(a - b) for a, b in zip(lisbon, oslo)]\n"
             "ans = months[gaps.index(max(gaps))]", "Jun"),
    Exemplar("Which city has less than 2 mm of rain in Mar?",
             "# Mar is Row 3. Its numbers are [57.4, 47.3, 1.9]; only Lima has less than 2.\nans = \"Lima\"", "Lima"),
    Exemplar("By what percentage does Oslo's rainfall grow from Apr to Jun?",
             "# Apr is Row 4 and Jun is Row 6.\noslo_apr = 41.2\noslo_jun = 65.0\n"
             "ans = 100 * (oslo_jun - oslo_apr) / oslo_apr", "57.77"),
    Exemplar("Is Lisbon's rainfall in Feb more than twice Oslo's in Feb?",
             "lisbon_feb = 85.2\noslo_feb = 36.1\nans = lisbon_feb > 2 * oslo_feb", "Yes"),
)


def markup(table: Table) -> str:
    """DePlot's table markup for the LLM: "Title: t", "Header: a | b", "Row 1: x | 1", ... one per line."""
    lines = [] if table.title is None else [f"Title: {table.title}"]
    lines.append("Header: " + " | ".join(table.header))
    lines += [f"Row {i}: " + " | ".join(row) for i, row in enumerate(table.rows, start=1)]
    return "\n".join(lines)


def cot_prompt(table: Table, question: str, exemplars: tuple[Exemplar, ...] = COT_EXEMPLARS,
               exemplar_table: Table = EXEMPLAR_TABLE) -> str:
    """Few-shot chain-of-thought: the solved examples, then the table and the question, ending at "A:"."""
    shots = "\n\n".join(f"Q: {e.question}\nA: {e.reply}" for e in exemplars)
    return (f"{INSTRUCTION}\n\n{markup(exemplar_table)}\n\n{shots}\n\n\n"
            f"{INSTRUCTION}\n\n{markup(table)}\n\nQ: {question.strip()}\nA:")


def pot_prompt(table: Table, question: str, exemplars: tuple[Exemplar, ...] = POT_EXEMPLARS,
               exemplar_table: Table = EXEMPLAR_TABLE) -> str:
    """Few-shot program-of-thought: the solved examples as "#Python" programs, then the table and the question,
    ending at "#Python" so the reply is the program."""
    shots = "\n\n".join(f"Q: {e.question}\n#Python\n{e.reply}" for e in exemplars)
    return (f"{POT_INSTRUCTION}\n\n{markup(exemplar_table)}\n\n{shots}\n\n\n"
            f"{POT_INSTRUCTION}\n\n{markup(table)}\n\nQ: {question.strip()}\n#Python\n")


def cut_reply(reply: str) -> str:
    """The reply up to the first stop sequence (a blank line or the next "Q:")."""
    for stop in STOP:
        reply = reply.split(stop, 1)[0]
    return reply


def cot_answer(reply: str) -> str:
    """The answer of a chain-of-thought reply: what follows its last "answer is" on that line, without a final period
    or quotes ("" when the reply states no answer; DePlot's code would take the whole reply as the answer)."""
    found = re.findall(r"(?i)answer is\s*:?\s*([^\n]*)", cut_reply(reply))
    return clean_answer(found[-1]) if found else ""


def clean_answer(text: str) -> str:
    return text.strip().strip("\"'`*").strip().rstrip(".").strip()


def program_of(reply: str) -> str:
    """The program in a program-of-thought reply: up to the first blank line, without a leading "#Python" line or a
    Markdown code fence, and without the indentation a model may put before it (GPT-2-style tokenizers often start
    a continuation with a space, which Python reads as an unexpected indent)."""
    text = cut_reply(reply.lstrip("\n"))
    text = re.sub(r"(?i)^\s*#\s*python[^\n]*\n", "", text)
    text = re.sub(r"^```(?:python)?\n|\n?```\s*$", "", text).strip("\n")
    return textwrap.dedent(text).lstrip(" \t")


def answer_text(value) -> str:
    """`ans` as an answer (as DePlot's `_exec` does): a bool is "Yes"/"No", a list its items joined by ", ", a number
    rounded to 2 decimals (4 significant digits under 1), a string itself; None is ""."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if isinstance(value, int | float):
        return format_number(value) if abs(value) >= 1 or value == 0 else f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(answer_text(v) for v in value)
    if isinstance(value, dict):
        raise ValueError("`ans` is a dict, not an answer")
    return clean_answer(str(value))


def normalise_answer(text: str) -> str:
    """The form answers are compared in for a majority vote: numbers read as numbers and rounded to 2 decimals ("46",
    "46.0", "46%" and "$46" agree), yes/true and no/false agree, case, spaces and a final period ignored."""
    text = clean_answer(text)
    number = parse_number(text)
    if number is not None and re.fullmatch(r"[-+−(]?[$€£¥₹]?[\d.,\s]+%?\)?", text):
        return format_number(round(number, 2))
    low = " ".join(text.lower().split())
    return {"true": "yes", "false": "no"}.get(low, low)


LLM_PROMPT = (
    "Read the table below and answer the question with a single word or number.\n\n"
    "{table}\n\nQuestion: {question}\nAnswer:"
)


def llm_prompt(table: Table, question: str) -> str:
    """The zero-shot prompt: the table (one row per line, cells joined by " | ") and the question."""
    return LLM_PROMPT.format(table=table.to_text("\n"), question=question.strip())


__all__ = ["COT_EXEMPLARS", "EXEMPLAR_TABLE", "INSTRUCTION", "LLM_PROMPT", "POT_EXEMPLARS", "POT_INSTRUCTION", "STOP",
           "Exemplar", "answer_text", "clean_answer", "cot_answer", "cot_prompt", "cut_reply", "llm_prompt", "markup",
           "normalise_answer", "pot_prompt", "program_of"]
