"""Table -> answer: every program kind on golden examples (answers computed by hand), clear failures, the ceiling
on true tables, and the zero-shot LM reasoner's interface (prompt, parsing, fallback) with a fake (the other LM
setups and a real LM: test_chart_llm_setups.py)."""

from __future__ import annotations

import random

import pytest

from vlmtune.chart.reason import Answer, Fallback, ProgramReasoner, ZeroShotReasoner, llm_prompt, parse_question
from vlmtune.data.chart_table import Table
from vlmtune.data.charts import QUESTION_TYPES, make_question, random_spec
from vlmtune.eval.metrics.chartqa import relaxed_accuracy

SALES = Table.from_text("TITLE | Sales by country <0x0A> Country | Sales <0x0A> Chile | 42 <0x0A> Peru | 17 "
                        "<0x0A> Italy | 30")
GENDER = Table.from_text("Year | Men | Women <0x0A> 2019 | 12 | 30 <0x0A> 2020 | 15 | 28 <0x0A> 2021 | 20 | 10")

GOLDEN = [  # (table, question, answer, program)
    (SALES, "What is the value for Chile?", "42", "value('Chile', 'Sales')"),
    (SALES, "Which country has the highest value?", "Chile", "argmax(column('Sales'))"),
    (SALES, "which country has the LOWEST value", "Peru", "argmin(column('Sales'))"),
    (SALES, "What is the highest value?", "42", "max(column('Sales'))"),
    (SALES, "What is the lowest value in the chart?", "17", "min(column('Sales'))"),
    (SALES, "What is the difference between Peru and Chile?", "25",
     "abs(value('Peru', 'Sales') - value('Chile', 'Sales'))"),
    (SALES, "How much higher is Chile than Italy?", "12", "value('Chile', 'Sales') - value('Italy', 'Sales')"),
    (SALES, "How much lower is Peru than Italy?", "13", "value('Italy', 'Sales') - value('Peru', 'Sales')"),
    (SALES, "What is the total of all values?", "89", "sum(column('Sales'))"),
    (SALES, "What is the sum of Chile and Peru?", "59", "sum([value('Chile', 'Sales'), value('Peru', 'Sales')])"),
    (SALES, "What is the average value?", "29.67", "mean(column('Sales'))"),
    (SALES, "What is the mean of Peru and Italy?", "23.5", "mean([value('Peru', 'Sales'), value('Italy', 'Sales')])"),
    (SALES, "Is Chile greater than Peru?", "Yes", "value('Chile', 'Sales') > value('Peru', 'Sales')"),
    (SALES, "Is the value of Chile less than Peru?", "No", "value('Chile', 'Sales') < value('Peru', 'Sales')"),
    (SALES, "How many countries are shown?", "3", "len(rows)"),
    (SALES, "What is the ratio of Chile to Peru?", "2.47", "value('Chile', 'Sales') / value('Peru', 'Sales')"),
    (GENDER, "What is the value of Women in 2020?", "28", "value('2020', 'Women')"),
    (GENDER, "Which year has the highest Women value?", "2019", "argmax(column('Women'))"),
    (GENDER, "What is the average of Men?", "15.67", "mean(column('Men'))"),
    (GENDER, "What is the sum of Men values?", "47", "sum(column('Men'))"),
    (GENDER, "What is the difference between 2019 and 2021 in Women?", "20",
     "abs(value('2019', 'Women') - value('2021', 'Women'))"),
    (GENDER, "Is Men greater than Women in 2021?", "Yes", "value('2021', 'Men') > value('2021', 'Women')"),
]


@pytest.mark.parametrize("table,question,answer,program", GOLDEN, ids=[g[1] for g in GOLDEN])
def test_golden_programs(table, question, answer, program):
    got = ProgramReasoner().answer(table, question)
    assert got == Answer(answer=answer, program=program, ok=True, error=None, reasoner="program")


def test_every_program_kind_is_covered_by_the_golden_examples():
    ops = {parse_question(t, q).op for t, q, _, _ in GOLDEN}
    assert ops == {"value", "argmax", "argmin", "max", "min", "difference", "signed_difference", "sum", "average",
                   "compare", "count", "ratio"}


def test_a_longer_label_is_not_mistaken_for_the_shorter_one_inside_it():
    t = Table.from_text("Country | Value <0x0A> Guinea | 5 <0x0A> Papua New Guinea | 9")
    assert ProgramReasoner().answer(t, "What is the value for Papua New Guinea?").answer == "9"
    assert ProgramReasoner().answer(t, "What is the value for Guinea?").answer == "5"


@pytest.mark.parametrize("table,question,error", [
    (SALES, "What colour is the sky?", "no program fits"),
    (SALES, "What is the value for Brazil?", "no program fits"),
    (SALES, "Is Chile greater than Brazil?", "names 1 of the table's labels"),
    (Table(header=(), rows=()), "What is the value for Chile?", "no data rows"),
    (Table.from_text("Country | Sales <0x0A> Chile | n/a"), "What is the value for Chile?", "holds no number"),
    (SALES.__class__(header=("Country", "Sales"), rows=(("Chile", "0"), ("Peru", "3"))),
     "What is the ratio of Peru to Chile?", "zero denominator"),
])
def test_failures_say_why_and_never_guess(table, question, error):
    got = ProgramReasoner().answer(table, question)
    assert not got.ok and got.answer == "" and error in got.error


def test_ceiling_on_true_tables_is_perfect():
    """Every question kind the charts world asks, on its true table: the program's answer is relaxed-correct."""
    r = random.Random(1)
    reasoner = ProgramReasoner()
    for _ in range(400):
        spec = random_spec(r)
        qtype = r.choice(QUESTION_TYPES[1:])
        question, answer = make_question(r, spec, qtype)
        got = reasoner.answer(Table.from_text(spec.table().to_text()), question)
        assert got.ok and relaxed_accuracy(got.answer, answer) == 1.0, (qtype, question, answer, got)


# ------------------------------------------------------------------------------------------------- zero-shot


def test_zero_shot_prompts_with_the_table_and_parses_the_reply():
    seen = []

    def fake(prompt: str) -> str:
        seen.append(prompt)
        return "Answer: 42.\nBecause Chile is the tallest bar."

    got = ZeroShotReasoner(fake).answer(SALES, "What is the value for Chile?")
    assert got == Answer(answer="42", program="Answer: 42.\nBecause Chile is the tallest bar.", reasoner="zero_shot")
    (prompt,) = seen
    assert prompt == llm_prompt(SALES, "What is the value for Chile?")
    assert "Chile | 42\nPeru | 17\nItaly | 30" in prompt and "TITLE | Sales by country" in prompt
    assert prompt.endswith("Question: What is the value for Chile?\nAnswer:")


def test_lm_failures_say_why_and_fall_back_only_when_asked():
    silent = Fallback(ZeroShotReasoner(lambda p: "  \n"), ProgramReasoner())
    empty = silent.answer(SALES, "What is the value for Chile?")
    assert empty.answer == "42" and empty.ok and empty.reasoner == "zero_shot->program"
    assert "no answer" in empty.error and "answered by program" in empty.error

    def boom(prompt: str) -> str:
        raise RuntimeError("out of memory")

    crashed = Fallback(ZeroShotReasoner(boom), ProgramReasoner()).answer(SALES, "Which country has the highest value?")
    assert crashed.answer == "Chile" and "the model failed: RuntimeError: out of memory" in crashed.error
    alone = ZeroShotReasoner(boom).answer(SALES, "What is the value for Chile?")
    assert not alone.ok and alone.answer == "" and alone.reasoner == "zero_shot" and "out of memory" in alone.error
