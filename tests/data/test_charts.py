"""The charts world: deterministic, prefix-stable, and every table is what the chart draws (read back from the
matplotlib artists of the same figure, whose pixels are the sample's image)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from vlmtune.data.chart_table import Table
from vlmtune.data.charts import DEPLOT_PROMPT, QUESTION_TYPES, ChartSpec, charts, draw, random_spec, render, to_image
from vlmtune.data.sample import Sample
from vlmtune.data.synthetic import WORLDS

SIZE = 96


@pytest.fixture(scope="module")
def items():
    return list(charts(16, seed=3, size=SIZE, caption_fraction=0.2))


def test_same_seed_same_samples_and_pixels_and_prefix_stable(items):
    again = list(charts(6, seed=3, size=SIZE, caption_fraction=0.2))
    assert [s for s, _ in again] == [s for s, _ in items[:6]]
    assert [im.tobytes() for _, im in again] == [im.tobytes() for _, im in items[:6]]
    other = [im.tobytes() for _, im in charts(6, seed=4, size=SIZE)]
    assert all(a != b for a, b in zip(other, (im.tobytes() for _, im in items), strict=False))


def test_registered_world_and_valid_samples(items):
    assert WORLDS["charts"] is charts and [s.id for s, _ in WORLDS["charts"](2, seed=3, size=SIZE)] == [
        s.id for s, _ in items[:2]]
    for i, (s, img) in enumerate(items):
        assert s.id == f"charts-3-{i:06d}" and s.images == [f"images/{s.id}.png"] and s.source == "charts"
        assert Sample.from_json(json.loads(json.dumps(s.to_json()))) == s
        assert img.mode == "RGB" and img.size == (SIZE, SIZE)
        m = s.meta
        assert m["chart_type"] in ("bar", "line", "pie") and m["question_type"] in (*QUESTION_TYPES, "caption")
        assert Table.from_text(m["table"]) == ChartSpec.from_json(m["chart"]).table()
        if m["question_type"] == "chart_to_table":
            assert s.task == "chart_to_table" and s.question == DEPLOT_PROMPT and s.target == m["table"]
        elif m["question_type"] == "caption":
            assert s.task == "caption" and s.references == [s.target]
        else:
            assert s.task == "chartqa" and s.answers == [s.target]
    assert {s.task for s, _ in items} == {"chartqa", "caption"}


def test_questions_select_the_kinds():
    samples = [s for s, _ in charts(12, seed=0, size=64, questions=["chart_to_table", "count"])]
    assert {s.meta["question_type"] for s in samples} == {"chart_to_table", "count"}
    for s in samples:
        if s.meta["question_type"] == "chart_to_table":
            assert s.task == "chart_to_table" and s.question == DEPLOT_PROMPT and s.target == s.meta["table"]
            assert s.answers is None and s.meta["answer_type"] == "table"
        else:
            assert s.task == "chartqa" and s.answers == [str(len(Table.from_text(s.meta["table"]).rows))]
    with pytest.raises(ValueError, match=r"unknown question type\(s\) \['colour'\]"):
        next(iter(charts(1, questions=["colour"])))


def _texts(artists) -> list[str]:
    return [t.get_text() for t in artists]


@pytest.mark.parametrize("seed", range(12))
def test_the_table_is_what_is_drawn(seed):
    spec = random_spec(random.Random(seed))
    fig = render(spec, SIZE)
    table = spec.table()
    assert fig.texts[0].get_text() == table.title  # the suptitle
    ax = fig.axes[0]
    if spec.kind == "pie":
        wedges = ax.patches
        angles = [(w.theta2 - w.theta1) % 360 for w in wedges]
        assert np.allclose(angles, [float(v) * 3.6 for v in table.column("Share")])  # values are percentages
        texts = _texts(ax.texts)  # each slice's label and value (matplotlib < 3.11 interleaves them, later groups)
        assert [t for t in texts if t in table.labels] == table.labels
        assert [t for t in texts if t not in table.labels] == [row[1] for row in table.rows]
    else:
        assert _texts(ax.get_xticklabels()) == table.labels and ax.get_xlabel() == table.header[0]
        for j, series in enumerate(table.series):
            if spec.kind == "bar":
                bars = ax.containers[j]
                assert [b.get_height() for b in bars] == table.column(series)
            else:
                assert list(ax.lines[j].get_ydata()) == table.column(series)
        drawn_labels = sorted(_texts(ax.texts))  # value labels on the bars / points
        assert drawn_labels == sorted(cell for row in table.rows for cell in row[1:])
        if len(table.series) > 1:
            assert _texts(fig.legends[0].get_texts()) == table.series
        else:
            assert not fig.legends and ax.get_ylabel() == table.series[0]
    assert to_image(fig).tobytes() == draw(spec, SIZE).tobytes()  # these artists are the pixels the sample has


def test_sample_images_are_drawings_of_their_meta_chart(items):
    for s, img in items[:6]:
        assert draw(ChartSpec.from_json(s.meta["chart"]), SIZE).tobytes() == img.tobytes()


def test_values_are_distinct_integers_and_pie_shares_sum_to_100():
    r = random.Random(0)
    for _ in range(200):
        spec = random_spec(r)
        for j in range(len(spec.series)):
            col = spec.column(j)
            assert len(set(col)) == len(col) and all(isinstance(v, int) for v in col)
        if spec.kind == "pie":
            assert sum(spec.column(0)) == 100
