"""DePlot's linearised table: exact round trip, tolerant parsing of what models emit, numbers read like a reader."""

from __future__ import annotations

import pytest

from vlmtune.data.chart_table import Table, format_number, parse_number
from vlmtune.eval.metrics.table import table_metrics
from vlmtune.eval.tasks import get_task

TABLE = Table(header=("Year", "Men", "Women"), rows=(("2019", "12", "30"), ("2020", "15", "28")), title="Sales by year")
TEXT = "TITLE | Sales by year <0x0A> Year | Men | Women <0x0A> 2019 | 12 | 30 <0x0A> 2020 | 15 | 28"


def test_to_text_is_deplots_linearisation_and_round_trips():
    assert TABLE.to_text() == TEXT
    assert Table.from_text(TEXT) == TABLE
    assert TABLE.to_text("\n").splitlines()[1] == "Year | Men | Women"
    untitled = Table(header=("a", "b"), rows=(("x", "1"),))
    assert untitled.to_text() == "a | b <0x0A> x | 1" and Table.from_text(untitled.to_text()) == untitled


@pytest.mark.parametrize("text", [
    # no spaces around <0x0A> (what our tokenizer decodes to)
    "TITLE | Sales by year<0x0A>Year | Men | Women<0x0A>2019 | 12 | 30<0x0A>2020 | 15 | 28",
    " title |Sales by year  <0x0A>  Year|Men |  Women <0x0A> 2019 |12| 30 <0x0A>2020 | 15 | 28 ",
    "TITLE | Sales by year\nYear | Men | Women\n\n2019 | 12 | 30\r\n2020 | 15 | 28\n",  # real newlines, a blank line
    "TITLE | Sales by year <0x0A> | Year | Men | Women | <0x0A> | 2019 | 12 | 30 | <0x0A> 2020 | 15 | 28",  # outer bars
])
def test_tolerant_parsing_reads_the_same_table(text):
    assert Table.from_text(text) == TABLE


def test_ragged_rows_are_padded_or_cut_to_the_header():
    t = Table.from_text("Year | Sales <0x0A> 2019 <0x0A> 2020 | 5 | 99")
    assert t.rows == (("2019", ""), ("2020", "5")) and t.title is None
    assert t.column("Sales") == [None, 5.0]


@pytest.mark.parametrize(("text", "header", "rows"), [
    ('Party,Votes\n"Dem | Rep",12\nOther,3\n', ("Party", "Votes"), (("Dem | Rep", "12"), ("Other", "3"))),
    ("Year,Democrats | Republicans\n2019,12\n", ("Year", "Democrats | Republicans"), (("2019", "12"),)),
    ("Year,A|B\n2019,1|2\n2020,3\n", ("Year", "A|B"), (("2019", "1|2"), ("2020", "3"))),
])
def test_a_pipe_inside_csv_cells_leaves_it_csv(text, header, rows):
    # ChartQA's CSV with a "|" in some cells (the oracle, the ceiling and `chart tables` read meta.table this way)
    assert Table.from_text(text) == Table(header=header, rows=rows)


def test_csv_tables_as_chartqa_ships_them():
    t = Table.from_text("Entity,Value\nGhana,48\n\"Côte d'Ivoire, Rep.\",1\n")
    assert t.header == ("Entity", "Value") and t.labels == ["Ghana", "Côte d'Ivoire, Rep."]
    assert t.value("Ghana", "Value") == 48


def test_empty_text_is_an_empty_table_and_bad_rows_are_refused():
    assert Table.from_text("") == Table(header=(), rows=())
    assert Table.from_text("TITLE | only a title") == Table(header=(), rows=(), title="only a title")
    with pytest.raises(ValueError, match="row 0 has 1 cells, the header 2"):
        Table(header=("a", "b"), rows=(("x",),))


@pytest.mark.parametrize("cell,value", [
    ("12", 12.0), (" 12 ", 12.0), ("1,234", 1234.0), ("1 234 567", 1234567.0), ("46%", 46.0), ("$12.5", 12.5),
    ("€ 3", 3.0), ("12 kg", 12.0), ("3.5M", 3.5), ("(3)", -3.0), ("-5", -5.0), ("−4", -4.0), (".5", 0.5),
    ("2019 Q1", 2019.0), ("1e3", 1000.0),
    ("Q1 2019", None), ("N/A", None), ("", None), ("1.2.3", None), ("12,5,6", None), ("abc", None),
])
def test_parse_number(cell, value):
    assert parse_number(cell) == value


def test_format_number():
    assert [format_number(x) for x in (12.0, 2.5, 1 / 3, -4.0, 0.0, 2.499)] == ["12", "2.5", "0.33", "-4", "0", "2.5"]


def test_our_text_is_what_the_official_metrics_read():
    """RMS-F1 / RNSS (the existing metrics module, matching deplot/metrics.py) read our text, with or without the
    spaces around <0x0A>, as the same table."""
    squeezed = TEXT.replace(" <0x0A> ", "<0x0A>")
    assert table_metrics(squeezed, TEXT) == {"rms_precision": 1.0, "rms_recall": 1.0, "rms_f1": 1.0, "rnss": 1.0}
    one_wrong = TEXT.replace("| 28", "| 99")
    assert table_metrics(one_wrong, TEXT)["rms_f1"] < 1.0


def test_chart_to_table_task_scores_rows():
    task = get_task("chart_to_table")
    squeezed = TEXT.replace(" <0x0A> ", "<0x0A>")
    rows = [{"id": "a", "prediction": squeezed, "target": TEXT, "meta": {"chart_type": "bar"}},
            {"id": "b", "prediction": "", "target": TEXT, "meta": {"chart_type": "pie"}},
            {"id": "c", "prediction": "Year | Men | Women <0x0A> 2019 | 12 | 30", "answers": ["x | y", TEXT]}]
    metrics = task.score_rows(rows)
    assert task.primary == "rms_f1" and set(task.metrics) == {"rms_f1", "rms_precision", "rms_recall", "rnss"}
    assert rows[0]["scores"]["rms_f1"] == 1.0 and rows[1]["scores"]["rms_f1"] == 0.0
    assert rows[2]["scores"] == table_metrics(rows[2]["prediction"], TEXT)  # the better of the two targets
    assert metrics["rms_f1"] == pytest.approx((1.0 + 0.0 + rows[2]["scores"]["rms_f1"]) / 3)
    assert metrics["by_chart_type"]["bar"]["rms_f1"] == 1.0


def test_csv_form_is_chartqa_tables_and_reads_back_without_the_title():
    from vlmtune.data.chart_table import Table

    t = Table(header=("Country", "Sales, 2020"), rows=(("Chile", "42"), ("Peru", "1,234")), title="Sales")
    assert t.to_csv() == 'Country,"Sales, 2020"\nChile,42\nPeru,"1,234"\n'
    back = Table.from_text(t.to_csv())
    assert back == Table(header=t.header, rows=t.rows, title=None)
