"""Tests of DePlot's RMS precision / recall / F1 and ChartQA's RNSS (hand-computed values)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vlmtune.eval.metrics.table import (
    table_baseline,
    table_format,
    table_metrics,
    table_metrics_corpus,
    to_deplot_text,
)

# The three tables of google-research deplot/metrics_test.py.
TARGET = "title | my table\nyear | argentina | brazil\n1999 | 200 | 158\n"
TRANSPOSED_TARGET = "title | my table\ncountry | 1999\nargentina | 200\nbrazil | 158\n"
PREDICTION = "title | my table\nyear | argentina | brazil\n1999 | 202 | 0\n"

SIMPLE = "year | a | b\n2010 | 1 | 2\n2011 | 3 | 4"
SIMPLE_TRANSPOSED = "year | 2010 | 2011\na | 1 | 3\nb | 2 | 4"


def _rms(prediction: str, target: str) -> tuple[float, float, float]:
    m = table_metrics(prediction, target)
    return m["rms_precision"], m["rms_recall"], m["rms_f1"]


# ---------------------------------------------------------------- the official test's numbers


def test_official_deplot_example():
    # Datapoints: title (1), "1999 argentina" 200 vs 202 (1 - 0.01 = 0.99), "1999 brazil" 158 vs 0 (error 1 -> 0).
    m = table_metrics(PREDICTION, TARGET)
    assert m["rms_precision"] == m["rms_recall"] == m["rms_f1"] == 1.99 / 3
    # RNSS: numbers 1999, 200, 158 vs 1999, 202, 0 -> distances 0, 0.01, 1 over 3 numbers.
    assert m["rnss"] == pytest.approx(1 - 1.01 / 3)


def test_official_deplot_example_transposed_target():
    assert table_metrics(PREDICTION, TRANSPOSED_TARGET) == pytest.approx(table_metrics(PREDICTION, TARGET))


def test_official_numbers_match_examples():
    # deplot metrics_test: _table_numbers_match(target, prediction).
    assert table_metrics("0.5 | foo | 0.6", "0.5 | foo | 0.6")["rnss"] == 1.0
    # 1 - relative_distance(0.4, 0.5) / 2 = 1 - 0.25 / 2; the extra 0.6 costs nothing.
    assert table_metrics("0.5 | foo | 0.6", "baz | foo | 0.4")["rnss"] == 0.875


# ---------------------------------------------------------------- identical / empty / transposed


@pytest.mark.parametrize("table", [TARGET, SIMPLE, "TITLE | Sales <0x0A> Year | Sales <0x0A> 2019 | 12.5"])
def test_identical_table_scores_one(table):
    assert table_metrics(table, table) == {"rms_precision": 1.0, "rms_recall": 1.0, "rms_f1": 1.0, "rnss": 1.0}


def test_empty_prediction():
    # Official: an empty prediction gives precision 1, recall 0, F1 0; no numbers -> RNSS 0.
    assert table_metrics("", SIMPLE) == {"rms_precision": 1.0, "rms_recall": 0.0, "rms_f1": 0.0, "rnss": 0.0}
    assert table_metrics("  \n ", SIMPLE)["rms_f1"] == 0.0


def test_empty_target_and_both_empty():
    assert table_metrics(SIMPLE, "") == {"rms_precision": 0.0, "rms_recall": 1.0, "rms_f1": 0.0, "rnss": 0.0}
    assert table_metrics("", "") == {"rms_precision": 1.0, "rms_recall": 1.0, "rms_f1": 1.0, "rnss": 1.0}


def test_transposed_prediction_is_handled():
    m = table_metrics(SIMPLE_TRANSPOSED, SIMPLE)
    assert (m["rms_precision"], m["rms_recall"], m["rms_f1"]) == (1.0, 1.0, 1.0)
    assert m["rnss"] == 1.0  # RNSS ignores layout altogether


def test_transposed_prediction_with_a_title():
    prediction = "TITLE | My Table\n" + SIMPLE_TRANSPOSED
    target = "title | my table\n" + SIMPLE
    assert _rms(prediction, target) == (1.0, 1.0, 1.0)


# ---------------------------------------------------------------- hand-computed partial scores


def test_missing_row_and_small_error():
    # Target datapoints "a v"=100, "b v"=200, "c v"=300; prediction "a v"=105, "b v"=200.
    # Matched: a (1 - 0.05 = 0.95) and b (1) -> score 1.95; P = 1.95/2, R = 1.95/3.
    # The transposed prediction has keys "v a", "v b" (NL 2/3 >= 0.5 -> 0), so it scores 0 and loses.
    m = table_metrics("x | v\na | 105\nb | 200", "x | v\na | 100\nb | 200\nc | 300")
    assert m["rms_precision"] == pytest.approx(0.975)
    assert m["rms_recall"] == pytest.approx(0.65)
    assert m["rms_f1"] == pytest.approx(2 * 0.975 * 0.65 / (0.975 + 0.65))  # 0.78
    # RNSS: 100<->105 (0.05), 200<->200 (0); 300 unmatched and free; divided by max(3, 2) = 3.
    assert m["rnss"] == pytest.approx(1 - 0.05 / 3)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("109", 0.91), ("91", 0.91), ("110", 0.0), ("90", 0.0), ("100", 1.0), ("1e2", 1.0)],
)
def test_number_theta_is_strict(value, expected):
    # Relative error below theta = 0.1 keeps 1 - error; 0.1 and more -> 0 (and a zero total -> (0, 0, 0)).
    assert _rms(f"x | v\na | {value}", "x | v\na | 100") == pytest.approx((expected, expected, expected))


def test_percent_values_in_rms():
    # RMS reads "50%" as 0.5 (like relaxed accuracy) ...
    assert _rms("x | v\na | 0.5", "x | v\na | 50%") == (1.0, 1.0, 1.0)
    # ... while RNSS only takes what float() accepts: no numbers in the target -> 0.
    assert table_metrics("x | v\na | 0.5", "x | v\na | 50%")["rnss"] == 0.0
    assert table_metrics("x | v\na | 50%", "x | v\na | 50%")["rnss"] == 1.0  # no numbers on either side


def test_key_similarity_is_normalised_levenshtein():
    # "apple v" vs "appel v": 2 edits over 7 characters -> 5/7; value equal.
    assert _rms("x | v\nappel | 100", "x | v\napple | 100") == pytest.approx((5 / 7, 5 / 7, 5 / 7))
    # "abcd v" vs "wxyz v": NL 4/6 >= 0.5 -> key similarity 0 -> (0, 0, 0).
    assert _rms("x | v\nwxyz | 100", "x | v\nabcd | 100") == (0.0, 0.0, 0.0)


def test_text_values_use_anls():
    # "red" vs "rod": 1 edit over 3 -> 2/3; "red" vs "blue": NL 3/4 -> 0.
    assert _rms("x | v\na | rod", "x | v\na | red") == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert _rms("x | v\na | blue", "x | v\na | red") == (0.0, 0.0, 0.0)


def test_lower_cased_before_comparison():
    assert _rms("TITLE | SALES\nYEAR | A\n2010 | RED", "title | sales\nyear | a\n2010 | red") == (1.0, 1.0, 1.0)
    assert _rms("Ünïcode | Wert\nZeile | Bär", "ünïcode | wert\nzeile | bär") == (1.0, 1.0, 1.0)


def test_duplicate_keys_keep_the_last_value():
    # Two rows "a": the dict of datapoints keeps only "a v" = 2, as the official code does.
    assert _rms("x | v\na | 2", "x | v\na | 1\na | 2") == (1.0, 1.0, 1.0)


def test_ragged_rows_are_truncated():
    # The extra cell "9" has no header: dropped by zip.
    assert _rms("x | v\na | 1 | 9", "x | v\na | 1") == (1.0, 1.0, 1.0)


# ---------------------------------------------------------------- RNSS quirks


def test_rnss_zero_target_quirk():
    # Official _get_relative_distance: zero target and zero prediction -> distance 1 (sic).
    # Numbers [0, 5] vs [0, 5]: every assignment costs 1 -> 1 - 1/2.
    m = table_metrics("x | v\na | 0\nb | 5", "x | v\na | 0\nb | 5")
    assert m["rnss"] == 0.5
    assert m["rms_f1"] == 1.0  # RMS compares a zero target as a string
    # A zero target with a non-zero prediction costs 0.
    assert table_metrics("x | v\na | 3", "x | v\na | 0")["rnss"] == 1.0


def test_rnss_unmatched_numbers_are_free():
    assert table_metrics("a | 1", "a | 1 | 2 | 3")["rnss"] == 1.0
    assert table_metrics("a | 1 | 2 | 3", "a | 1")["rnss"] == 1.0


def test_rnss_counts_header_numbers_and_clips_distance():
    # Headers 2010 / 2011 are numbers too (distance 0); target 1 vs prediction 3 -> error 2 clipped to 1;
    # no other assignment is cheaper (1 vs 2 also costs 1). 1 - 1/4.
    m = table_metrics("year | 2010 | 2011\nv | 3 | 2", "year | 2010 | 2011\nv | 1 | 2")
    assert m["rnss"] == pytest.approx(1 - 1 / 4)


# ---------------------------------------------------------------- formats


def test_deplot_row_separator():
    assert to_deplot_text("a | b <0x0A> c | 1") == "a | b\nc | 1"
    assert to_deplot_text("a | b<0x0A>c | 1") == "a | b\nc | 1"
    assert table_metrics("year | a | b <0x0A> 2010 | 1 | 2 <0x0A> 2011 | 3 | 4", SIMPLE)["rms_f1"] == 1.0


def test_csv_conversion_adds_the_official_empty_title():
    assert to_deplot_text("Year,Sales\n2010,5\n") == "title |\nYear | Sales\n2010 | 5"
    assert to_deplot_text('Country,"Share, %"\n"Korea, South",12\n', "csv") == (
        "title |\nCountry | Share, %\nKorea, South | 12"
    )
    assert to_deplot_text("   ") == "" and to_deplot_text("", "csv") == ""


def test_csv_tables():
    csv_table = "Year,Sales\n2010,5\n2011,7\n"
    # a CSV prediction counts as CSV only when said so (model output is DePlot text: see the input tests below)
    assert table_metrics(csv_table, csv_table, prediction_format="csv") == {
        "rms_precision": 1.0, "rms_recall": 1.0, "rms_f1": 1.0, "rnss": 1.0}
    # Same data as DePlot text without a title: the CSV side has 3 datapoints (title "", 2 values), the
    # prediction 2 -> P = 2/2, R = 2/3, F1 = 0.8.
    m = table_metrics("Year | Sales <0x0A> 2010 | 5 <0x0A> 2011 | 7", csv_table)
    assert (m["rms_precision"], m["rms_recall"]) == (1.0, pytest.approx(2 / 3))
    assert m["rms_f1"] == pytest.approx(0.8)
    assert m["rnss"] == 1.0
    # With a TITLE line the empty titles match.
    assert _rms("TITLE | <0x0A> Year | Sales <0x0A> 2010 | 5 <0x0A> 2011 | 7", csv_table) == (1.0, 1.0, 1.0)


def test_explicit_formats():
    # "a,b" read as DePlot text is one cell; read as CSV it is two.
    assert to_deplot_text("a,b\nc,1", "deplot") == "a,b\nc,1"
    assert to_deplot_text("a,b\nc,1", "csv") == "title |\na | b\nc | 1"
    with pytest.raises(ValueError):
        to_deplot_text("a | b", "markdown")


# ---------------------------------------------------------------- input handling, as the official code reads it
# Expected values follow google-research deplot: a prediction goes through the --jsonl text path (_parse_table on
# the text), a ChartQA target file through evaluate_chart_to_table.py _to_markdown (csv + an empty "title |" line).
# Each was also checked against a transcription of the official functions run outside the repository.

CSV_TARGET = "Year,Sales\n2019,12\n2020,15\n"  # -> "title |", "2019 sales" = 12, "2020 sales" = 15
DEPLOT_TARGET = "TITLE | Sales by year <0x0A> Year | Sales <0x0A> 2019 | 12 <0x0A> 2020 | 15"
NOTHING = {"rms_precision": 1.0, "rms_recall": 0.0, "rms_f1": 0.0, "rnss": 0.0}  # official: no datapoints


@pytest.mark.parametrize("target", [CSV_TARGET, DEPLOT_TARGET])
@pytest.mark.parametrize("prediction", ["The chart shows sales rising.", "sales sales sales", "Year,Sales"])
def test_a_non_table_prediction_scores_zero(prediction, target):
    # One line without " | ": a header cell and no rows -> no datapoints -> (1, 0, 0); no float -> RNSS 0.
    # (Read as a CSV file it gained an empty "title |" that matched the CSV target's: F1 2/(3+1) = 0.5.)
    assert table_metrics(prediction, target) == NOTHING


def test_a_comma_list_is_not_a_table():
    # "2019, 12, 2020, 15" is one cell and no float; read as CSV it scored F1 0.5 and RNSS 1.
    assert table_metrics("2019, 12, 2020, 15", CSV_TARGET) == NOTHING


@pytest.mark.parametrize("target", [CSV_TARGET, DEPLOT_TARGET])
@pytest.mark.parametrize("prediction", ["Year\n2019\n2020", "Year <0x0A> 2019 <0x0A> 2020"])
def test_a_one_column_table_has_no_datapoints(prediction, target):
    # Datapoints need a column after the row labels, transposed or not -> (1, 0, 0). RNSS counts the numbers:
    # 2019 and 2020 match exactly and the target's unmatched 12 and 15 cost nothing -> 1.
    assert table_metrics(prediction, target) == {**NOTHING, "rnss": 1.0}


def test_a_csv_shaped_prediction_is_text():
    # The target's own CSV text as model output: every line is one cell -> no datapoints, no numbers.
    assert table_metrics(CSV_TARGET, CSV_TARGET) == NOTHING
    assert table_metrics(CSV_TARGET, CSV_TARGET, prediction_format="csv")["rms_f1"] == 1.0  # when told


def test_empty_titles():
    # DePlot's checkpoints write "TITLE | " for an untitled chart: it matches the CSV file's empty title.
    assert _rms("TITLE | <0x0A> Year | Sales <0x0A> 2019 | 12 <0x0A> 2020 | 15", CSV_TARGET) == (1.0, 1.0, 1.0)
    # The empty title alone is one datapoint of the target's three: P 1, R 1/3, F1 0.5 (official too).
    assert table_metrics("TITLE |", CSV_TARGET) == {"rms_precision": 1.0, "rms_recall": pytest.approx(1 / 3),
                                                    "rms_f1": pytest.approx(0.5), "rnss": 0.0}
    # Against a titled target the empty title scores 0 (ANLS of "" and "sales by year"): 2 of 3 datapoints.
    assert _rms("TITLE | <0x0A> Year | Sales <0x0A> 2019 | 12 <0x0A> 2020 | 15", DEPLOT_TARGET) == pytest.approx(
        (2 / 3, 2 / 3, 2 / 3))


def test_pipe_inside_csv_cells():
    # A "|" in some cells of a CSV file leaves it CSV. _to_markdown joins cells with " | ", so a cell's own " | "
    # splits it when parsed ("Democrats | Republicans" is two header cells), exactly as in the official numbers.
    header_pipe = "Year,Democrats | Republicans\n2019,12\n2020,15\n"
    prediction = "TITLE | <0x0A> Year | Democrats | Republicans <0x0A> 2019 | 12 <0x0A> 2020 | 15"
    assert table_metrics(prediction, header_pipe) == {
        "rms_precision": 1.0, "rms_recall": 1.0, "rms_f1": 1.0, "rnss": 1.0}
    # "A|B" (no spaces) stays one cell; a quoted label with " | " in one row splits that row only.
    assert _rms("TITLE | <0x0A> Year | A|B <0x0A> 2019 | 12", "Year,A|B\n2019,12\n") == (1.0, 1.0, 1.0)
    label_pipe = 'Party,Votes\n"Dem | Rep",12\nOther,3\n'  # -> "dem votes" = "rep", "other votes" = "3"
    assert _rms("TITLE | <0x0A> Party | Votes <0x0A> Dem | Rep | 12 <0x0A> Other | 3", label_pipe) == (1.0, 1.0, 1.0)
    # "dem/rep votes" vs "dem votes": key 1 - 4/13 but value "12" vs "rep" scores 0; title and "other" -> 2 of 3.
    assert _rms("TITLE | <0x0A> Party | Votes <0x0A> Dem/Rep | 12 <0x0A> Other | 3", label_pipe) == pytest.approx(
        (2 / 3, 2 / 3, 2 / 3))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('Party,Votes\n"Dem | Rep",12\nOther,3\n', "csv"),
        ("Year,Democrats | Republicans\n2019,12\n", "csv"),
        ("Year,Sales\n2019,12\n", "csv"),
        ("Year\n2019", "csv"),  # no separator at all: a (one-column) CSV file
        ("TITLE | Sales, 2019 <0x0A> Country | Sales <0x0A> Chile | 1,234", "deplot"),
        ("title | sales\nyear,x | a\n2019,1 | 2", "deplot"),
        ("year | a | b\n2010 | 1 | 2\n\n2011 | 3 | 4\n", "deplot"),  # titleless, " | " on every line
        ("Year | Sales<0x0A>2019", "deplot"),
    ],
)
def test_target_format_detection(text, expected):
    assert table_format(text) == expected


# ---------------------------------------------------------------- chance level


def test_baseline_scores_each_table_against_another():
    # Two tables: each is the other's prediction. "a v" matches (1); "b v" 50 vs 200 and 200 vs 50 err >= 0.1 (0).
    # -> P = R = F1 = 1/2 both ways. RNSS: target [100, 200] vs [100, 50]: best assignment 0 + 0.75 -> 0.625;
    # target [100, 50] vs [100, 200]: 0 + 1 -> 0.5.
    one, two = "x | v\na | 100\nb | 200", "x | v\na | 100\nb | 50"
    got = table_baseline([one, two])
    assert got == {"rms_precision": 0.5, "rms_recall": 0.5, "rms_f1": 0.5, "rnss": pytest.approx(0.5625)}


@pytest.mark.parametrize("seed", range(5))
def test_baseline_never_scores_a_table_against_itself(seed):
    # Same key in every table, values at least 2x apart: any other table scores 0, the table itself 1.
    tables = [f"x | v\na | {10 * 2 ** i}" for i in range(6)]
    assert table_baseline(tables, seed=seed)["rms_f1"] == 0.0


def test_baseline_of_csv_targets_and_alternatives():
    # A CSV target becomes a DePlot prediction with the empty title of _to_markdown (not unreadable CSV text):
    # title 1 + "2019 sales" 50 vs 12 (0) -> 1 of 2 datapoints each way.
    assert table_baseline(["Year,Sales\n2019,12\n", "Year,Sales\n2019,50\n"])["rms_f1"] == 0.5
    # With alternatives the best one counts as the target (the first row's "a = 2" matches the second row's table:
    # 1) and the first one is the prediction (the second row gets "a = 1" for its "a = 2": 0) -> 0.5.
    assert table_baseline([["x | v\na | 1", "x | v\na | 2"], ["x | v\na | 2"]])["rms_f1"] == 0.5
    assert table_baseline(["x | v\na | 1"]) is None


# ---------------------------------------------------------------- corpus


def test_corpus_is_a_macro_average():
    predictions = [PREDICTION, SIMPLE, ""]
    targets = [TARGET, SIMPLE, SIMPLE]
    got = table_metrics_corpus(predictions, targets)
    per_table = [table_metrics(p, t) for p, t in zip(predictions, targets, strict=True)]
    for name in ("rms_precision", "rms_recall", "rms_f1", "rnss"):
        assert got[name] == pytest.approx(sum(m[name] for m in per_table) / 3)
    assert got["rms_f1"] == pytest.approx((1.99 / 3 + 1 + 0) / 3)
    assert got["rms_precision"] == pytest.approx((1.99 / 3 + 1 + 1) / 3)  # the empty prediction has precision 1


def test_corpus_takes_the_best_of_several_targets():
    got = table_metrics_corpus([SIMPLE], [["x | v\nq | 9", SIMPLE]])
    assert got == {"rms_precision": 1.0, "rms_recall": 1.0, "rms_f1": 1.0, "rnss": 1.0}


def test_corpus_rejects_bad_input():
    with pytest.raises(ValueError):
        table_metrics_corpus([], [])
    with pytest.raises(ValueError):
        table_metrics_corpus([SIMPLE], [SIMPLE, SIMPLE])
    with pytest.raises(ValueError):
        table_metrics_corpus([SIMPLE], [[]])


def test_module_does_not_import_torch():
    code = "import sys, vlmtune.eval.metrics.table; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
