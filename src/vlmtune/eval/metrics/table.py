"""Chart-to-table metrics: DePlot's RMS precision / recall / F1 and ChartQA's RNSS.

Reference: google-research/google-research ``deplot/metrics.py`` (commit 4c42994, 2025) and
``deplot/evaluate_chart_to_table.py``; paper: Liu et al. 2023, "DePlot: One-shot visual language
reasoning by plot-to-table translation", §3 (RMS) and Masry et al. 2022, "ChartQA" (RNSS).

RMS, Relative Mapping Similarity (DePlot §3): a table becomes a set of datapoints
``(row header, column header, value)``; keys ``"<row header> <column header>"`` are compared with
``NL_tau`` (normalised Levenshtein distance, similarity 0 at or past ``tau``) and values with
``D_theta(p, t) = min(1, |p - t| / |t|)`` (distance 1 at or past ``theta``), ``tau = 0.5``,
``theta = 0.1``. Prediction and target datapoints are matched one-to-one by a linear assignment
on the key distances (``scipy.optimize.linear_sum_assignment``) and

    RMS_precision = sum_matched (1 - NL_tau(keys)) * (1 - D_theta(values)) / N_prediction
    RMS_recall    = the same sum / N_target,       RMS_F1 = harmonic mean of the two.

RNSS, Relative Number Set Similarity (ChartQA §5): only the numbers of the two tables count,

    RNSS = 1 - sum_matched min(1, |p - t| / |t|) / max(N_target, N_prediction),

with the matching again a linear assignment on those distances.

Behaviour of the official code reproduced on purpose:

* Parsing (``_parse_table``): the whole text is lower-cased and split into lines; a first line
  starting with ``"title |"`` is the title (itself a datapoint with key ``"title"``); cells are
  split on ``" | "`` (with the spaces) and stripped; the first remaining row is the header row.
  Rows are not padded: ``zip`` drops cells past the shorter of header and row; blank lines are
  rows. Datapoints live in a dict, so a repeated ``"<row> <column>"`` key keeps the last value.
* Transposition: the prediction is parsed both as is and transposed (missing cells become
  ``""``), and the (precision, recall, F1) with the higher F1 wins, the transposed one on ties.
  The target is never transposed.
* Value similarity: if both values parse as floats (trailing ``%`` -> /100, as in ChartQA's relaxed
  accuracy) and the target's is non-zero, ``1 - D_theta``; else 1 if the strings are equal; else
  their ANLS similarity (``1 - NL`` if ``NL < tau`` else 0). A datapoint scores key similarity times
  value similarity; the assignment itself looks only at the keys.
* The ANLS boundary is strict (``NL == 0.5`` scores 0), as in pix2struct's ``anls_metric`` since
  commit 67e9f30 (earlier pix2struct versions used ``<=``).
* Empty tables: both empty -> (1, 1, 1); empty target -> (0, 1, 0); empty prediction -> (1, 0, 0),
  i.e. precision 1 and F1 0. A total score of exactly 0 gives (0, 0, 0).
* RNSS numbers are the cells that Python ``float()`` accepts, split the same way (not lower-cased;
  a ``"46%"`` cell is NOT a number here, unlike in RMS; header cells such as years DO count).
  Unmatched numbers cost nothing: the assignment matches min(N_t, N_p) pairs and only their
  distances are summed, so one exactly right number among ten targets still gives 1 - 0/10 = 1.
  Both tables without numbers -> 1; only one without -> 0.
* RNSS zero-target quirk: ``_get_relative_distance`` returns ``int(not prediction)`` for a zero
  target, i.e. distance 1 when the prediction is ALSO zero and 0 otherwise. So an identical table
  containing a 0 does not reach RNSS 1 (e.g. numbers [0, 5] vs [0, 5] give 0.5).
* Corpus scores (:func:`table_metrics_corpus`) are macro averages: per-table precision, recall,
  F1 and RNSS averaged over tables, as ``table_datapoints_precision_recall`` and
  ``table_number_accuracy`` do (the official code reports them x100; here they stay in [0, 1]).
  Note: before commit 4c42994 the per-table "F1" list was filled with the recall (a bug).
* With several targets per prediction, RMS takes the (P, R, F1) triple of the best F1 over
  targets and transpositions, and RNSS the best RNSS, independently.

Input formats. DePlot's model writes rows separated by ``<0x0A>`` (the newline byte token):
``"TITLE | t <0x0A> col1 | col2 <0x0A> row1 | 1"``; both ``" <0x0A> "`` and ``"<0x0A>"`` become
newlines before parsing (the official functions receive newline-separated text).

* Predictions are model output, i.e. text: they are always read as DePlot text, as the official
  text path (``evaluate_chart_to_table.py --jsonl``) reads them. So garbage, a comma list or a
  one-column table has no datapoints and scores (1, 0, 0), F1 0 (read as a CSV file, it would
  gain a free, empty ``title |`` datapoint that matches a CSV target's: F1 2/(N+1)).
* Targets may be ChartQA's ``tables/*.csv`` files. Those are read with :mod:`csv` and written as
  DePlot text the way ``evaluate_chart_to_table.py`` ``_to_markdown`` does it (its ``--path``
  route), INCLUDING the empty ``"title |"`` line it prepends (so two CSV tables share one free,
  matching ``title`` datapoint, as in DePlot's numbers) and with a cell's own ``" | "`` splitting
  it into two cells when parsed, exactly as there. ``"auto"`` (the targets' default, see
  :func:`table_format`) reads a target as DePlot text when it contains ``<0x0A>``, starts with a
  ``title |`` line, or has ``" | "`` on every line, and as CSV otherwise, so a ``|`` inside some
  CSV cells does not turn a CSV file into DePlot text. ``"auto"`` gets two cases wrong: a CSV
  file with ``" | "`` on every line (header included), and DePlot text of one column without a
  title line (read as CSV, it gains an empty title); pass ``target_format`` for those.
* Blank text is an empty table in either format (not ``"title |"``).

Chance level: :func:`table_baseline` scores every table against ANOTHER table of the same set
(see there); ``vlmtune chart eval`` reports it beside RMS-F1 and RNSS.

Uses numpy and scipy (a core dependency); no torch import.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import random
from collections.abc import Sequence
from typing import Literal

import numpy as np

from vlmtune.eval.metrics.anls import levenshtein

__all__ = [
    "TableFormat", "table_baseline", "table_format", "table_metrics", "table_metrics_corpus", "to_deplot_text",
]

TableFormat = Literal["auto", "deplot", "csv"]

TEXT_THETA = 0.5
"""tau: keys and text values at a normalised Levenshtein distance >= tau get similarity 0."""
NUMBER_THETA = 0.1
"""theta: numeric values at a relative error >= theta get similarity 0."""


@dataclasses.dataclass(frozen=True)
class _Table:
    title: str | None = None
    headers: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()


def table_format(text: str) -> Literal["deplot", "csv"]:
    """What ``"auto"`` reads a TARGET table as: DePlot text when it has ``<0x0A>``, a first line ``title | ...`` or
    ``" | "`` on every non-blank line; CSV otherwise (a ``|`` inside some CSV cells leaves it CSV)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if "<0x0A>" in text or (lines and lines[0].lstrip().lower().startswith("title |")):
        return "deplot"
    return "deplot" if lines and all(" | " in line for line in lines) else "csv"


def to_deplot_text(text: str, fmt: TableFormat = "auto") -> str:
    """Normalise a table to DePlot's newline-separated ``"a | b"`` text (see the module docstring)."""
    if not text.strip():
        return ""
    if fmt == "auto":
        fmt = table_format(text)
    if fmt == "deplot":
        return text.replace(" <0x0A> ", "\n").replace("<0x0A>", "\n")
    if fmt == "csv":
        # evaluate_chart_to_table.py _to_markdown: csv over splitlines, plus an empty title line.
        rows = csv.reader(text.splitlines(), delimiter=",")
        return "\n".join(["title |"] + [" | ".join(row) for row in rows])
    raise ValueError(f"unknown table format {fmt!r}; expected 'auto', 'deplot' or 'csv'")


def _to_float(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def _relative_distance(target: float, prediction: float, theta: float = 1.0) -> float:
    """``deplot/metrics.py`` ``_get_relative_distance``: min(1, |t - p| / |t|), 1 from ``theta`` on."""
    if not target:
        return float(not prediction)  # official: 1 if BOTH are zero, 0 otherwise (sic)
    distance = min(abs((target - prediction) / target), 1)
    return distance if distance < theta else 1.0


def _anls_similarity(target: str, prediction: str, theta: float) -> float:
    """pix2struct ``anls_metric`` (strict boundary): 1 - NL if NL < theta else 0."""
    length = max(len(target), len(prediction))
    if length == 0:
        return 1.0  # unreachable from the metrics below (keys are never empty); pix2struct would divide by 0
    nl = levenshtein(target, prediction) / length
    return 1.0 - nl if nl < theta else 0.0


# ---------------------------------------------------------------- RNSS


def _table_numbers(text: str) -> list[float]:
    numbers = []
    for line in text.splitlines():
        for part in line.split(" | "):
            if part.strip():
                try:
                    numbers.append(float(part))
                except ValueError:
                    pass
    return numbers


def _rnss(target: str, prediction: str) -> float:
    target_numbers = _table_numbers(target)
    prediction_numbers = _table_numbers(prediction)
    if not target_numbers and not prediction_numbers:
        return 1.0
    if not target_numbers or not prediction_numbers:
        return 0.0
    from scipy.optimize import linear_sum_assignment

    cost = np.array([[_relative_distance(t, p) for p in prediction_numbers] for t in target_numbers])
    rows, cols = linear_sum_assignment(cost)
    return float(1 - cost[rows, cols].sum() / max(len(target_numbers), len(prediction_numbers)))


# ---------------------------------------------------------------- RMS


def _parse_table(text: str, transposed: bool = False) -> _Table:
    lines = text.lower().splitlines()
    if not lines:
        return _Table()
    if lines[0].startswith("title |"):
        title, offset = lines[0][len("title |") :].strip(), 1
    else:
        title, offset = None, 0
    if len(lines) < offset + 1:
        return _Table(title=title)
    rows = [tuple(cell.strip() for cell in line.split(" | ")) for line in lines[offset:]]
    if transposed:
        rows = [tuple(column) for column in itertools.zip_longest(*rows, fillvalue="")]
    return _Table(title=title, headers=rows[0], rows=tuple(rows[1:]))


def _datapoints(table: _Table) -> list[tuple[str, str]]:
    points: dict[str, str] = {}
    if table.title is not None:
        points["title"] = table.title
    if not table.rows or len(table.headers) <= 1:
        return list(points.items())
    for row in table.rows:
        for header, cell in zip(table.headers[1:], row[1:], strict=False):
            points[f"{row[0]} {header}"] = cell
    return list(points.items())


def _datapoint_similarity(
    target: tuple[str, str], prediction: tuple[str, str], text_theta: float, number_theta: float
) -> float:
    key_similarity = _anls_similarity(target[0], prediction[0], text_theta)
    prediction_float, target_float = _to_float(prediction[1]), _to_float(target[1])
    if prediction_float is not None and target_float:
        return key_similarity * (1 - _relative_distance(target_float, prediction_float, number_theta))
    if target[1] == prediction[1]:
        return key_similarity
    return key_similarity * _anls_similarity(target[1], prediction[1], text_theta)


def _rms(target: _Table, prediction: _Table, text_theta: float, number_theta: float) -> tuple[float, float, float]:
    target_points, prediction_points = _datapoints(target), _datapoints(prediction)
    if not target_points and not prediction_points:
        return 1.0, 1.0, 1.0
    if not target_points:
        return 0.0, 1.0, 0.0
    if not prediction_points:
        return 1.0, 0.0, 0.0
    from scipy.optimize import linear_sum_assignment

    # Rows: target datapoints, columns: prediction datapoints; the assignment sees only the keys.
    cost = np.array([[1 - _anls_similarity(t, p, text_theta) for p, _ in prediction_points] for t, _ in target_points])
    score = 0.0
    for r, c in zip(*linear_sum_assignment(cost), strict=True):
        score += _datapoint_similarity(target_points[r], prediction_points[c], text_theta, number_theta)
    if score == 0:
        return 0.0, 0.0, 0.0
    precision, recall = score / len(prediction_points), score / len(target_points)
    return precision, recall, 2 * precision * recall / (precision + recall)


def _best_rms(
    targets: Sequence[str], prediction: str, text_theta: float, number_theta: float
) -> tuple[float, float, float]:
    candidates = []
    for transposed in (True, False):  # official order: transposed first, so it wins ties
        prediction_table = _parse_table(prediction, transposed=transposed)
        candidates.extend(_rms(_parse_table(t), prediction_table, text_theta, number_theta) for t in targets)
    return max(candidates, key=lambda prf: prf[-1])


# ---------------------------------------------------------------- public API


def _metrics(
    prediction: str,
    targets: Sequence[str],
    text_theta: float,
    number_theta: float,
    prediction_format: TableFormat,
    target_format: TableFormat,
) -> dict[str, float]:
    if not targets:
        raise ValueError("table metrics need at least one target table")
    pred = to_deplot_text(prediction, prediction_format)
    refs = [to_deplot_text(t, target_format) for t in targets]
    precision, recall, f1 = _best_rms(refs, pred, text_theta, number_theta)
    rnss = max(_rnss(t, pred) for t in refs)
    return {"rms_precision": float(precision), "rms_recall": float(recall), "rms_f1": float(f1), "rnss": rnss}


def table_metrics(
    prediction: str,
    target: str,
    *,
    text_theta: float = TEXT_THETA,
    number_theta: float = NUMBER_THETA,
    prediction_format: TableFormat = "deplot",
    target_format: TableFormat = "auto",
) -> dict[str, float]:
    """DePlot RMS and ChartQA RNSS of one predicted table against one target table.

    Returns ``{"rms_precision", "rms_recall", "rms_f1", "rnss"}``, each in [0, 1]. Tables are
    DePlot text (``<0x0A>`` or newline row separators, ``" | "`` cells, optional ``TITLE |`` line)
    or CSV; ``*_format`` says which. The prediction is model output and is read as DePlot text
    unless told otherwise; the target's ``"auto"`` tells a ChartQA CSV file from DePlot text
    (:func:`table_format`).
    """
    return _metrics(prediction, [target], text_theta, number_theta, prediction_format, target_format)


def table_metrics_corpus(
    predictions: Sequence[str],
    targets: Sequence[str | Sequence[str]],
    *,
    text_theta: float = TEXT_THETA,
    number_theta: float = NUMBER_THETA,
    prediction_format: TableFormat = "deplot",
    target_format: TableFormat = "auto",
) -> dict[str, float]:
    """Macro averages over tables of :func:`table_metrics`, as DePlot reports them (but in [0, 1]).

    ``targets[i]`` is one target table or a list of alternatives (the best one counts, as in the
    official code). Raises ``ValueError`` on an empty corpus or mismatched lengths.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    if len(predictions) == 0:
        raise ValueError("table_metrics_corpus needs at least one table")
    totals = {"rms_precision": 0.0, "rms_recall": 0.0, "rms_f1": 0.0, "rnss": 0.0}
    for prediction, target in zip(predictions, targets, strict=True):
        refs = [target] if isinstance(target, str) else list(target)
        scores = _metrics(prediction, refs, text_theta, number_theta, prediction_format, target_format)
        for name, value in scores.items():
            totals[name] += value
    return {name: total / len(predictions) for name, total in totals.items()}


def table_baseline(
    targets: Sequence[str | Sequence[str]],
    *,
    seed: int = 0,
    text_theta: float = TEXT_THETA,
    number_theta: float = NUMBER_THETA,
    target_format: TableFormat = "auto",
) -> dict[str, float] | None:
    """Chance level of a set of tables: each table scored against ANOTHER table of the same set.

    The "prediction" for table ``i`` is the true table (its first alternative, as DePlot text) of the table that
    follows ``i`` in a seeded random cycle through the set, so no table is scored against itself. That is what a
    model scores that writes well-formed, plausible tables of this data set (its titles, headers, labels and value
    range) without reading the chart: a chart-to-table model at or under it has learned nothing from the images.
    It is a stronger bar than a random model's output, which after this module's text handling scores RMS-F1 0.
    Macro averages as :func:`table_metrics_corpus`; None for fewer than two tables (nothing to swap).
    """
    if len(targets) < 2:
        return None
    refs = [[t] if isinstance(t, str) else list(t) for t in targets]
    if not all(refs):
        raise ValueError("table metrics need at least one target table")
    order = list(range(len(refs)))
    random.Random(seed).shuffle(order)
    swapped = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}
    predictions = [to_deplot_text(refs[swapped[i]][0], target_format) for i in range(len(refs))]
    return table_metrics_corpus(predictions, refs, text_theta=text_theta, number_theta=number_theta,
                                prediction_format="deplot", target_format=target_format)
