"""The "charts" synthetic world: bar, line and pie charts drawn with matplotlib, with their TRUE data tables.

Each sample is one new chart image and either a chart-to-table request (DePlot's prompt, answered by the chart's
table in DePlot's linearised text, task "chart_to_table") or a ChartQA-style question answered from the data
(task "chartqa"), or, with probability `caption_fraction`, a caption request (task "caption"). Question kinds:

    chart_to_table  "Generate underlying data table of the figure below:" -> "TITLE | Sales by country <0x0A> ..."
    value           "What is the value for Chile?" / "What is the value of Women in 2019?"          -> "42"
    max_label       "Which country has the highest value?"                                          -> "Chile"
    min_label       "Which fruit has the lowest Online value?"                                      -> "Kiwi"
    difference      "What is the difference between Chile and Peru?"                                -> "17"
    sum             "What is the total of all values?"                                              -> "131"
    average         "What is the average of Men?"                                                   -> "43.67"
    compare         "Is Chile greater than Peru?"                                                   -> "Yes"
    count           "How many countries are shown?"                                                 -> "4"
    ratio           "What is the ratio of Chile to Peru?"                                           -> "1.5"

The charts are kept learnable by a tiny model trained from scratch at modest sizes: 3-4 categories with short
labels from small pools, integer values printed on the bars / points / wedges, at most two series (grouped bars or
two lines, with a legend), a title built from a metric and the category kind ("Sales by country"), axis labels, one
font (DejaVu Sans, shipped with matplotlib) scaled with the image size. Values within a series are distinct, so
every highest/lowest question has one answer. Drawing is deterministic given the seed (`random.Random(seed)` for
every choice; the Agg backend renders the same pixels for the same figure) and prefix-stable: the first k samples do
not depend on `n`.

`meta` holds `table` (the DePlot text), `chart_type`, `question_type`, `answer_type`, `n_series` and `chart` (the
`ChartSpec` as JSON, which `render` draws again: tests read the bar heights and labels back from its artists).

    vlmtune data synth charts --out data/charts --n 3000 --size 160 --questions chart_to_table
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from PIL import Image

from vlmtune.data.chart_table import Table, format_number
from vlmtune.data.sample import Sample, assistant, user

DEPLOT_PROMPT = "Generate underlying data table of the figure below:"
"""The prompt google/deplot was trained with (its model card)."""

ChartKind = Literal["bar", "line", "pie"]
CHART_KINDS: tuple[ChartKind, ...] = ("bar", "line", "pie")

CATEGORIES: dict[str, tuple[str, ...]] = {
    "Country": ("Chile", "Peru", "Italy", "Spain", "Japan", "Kenya", "Egypt", "India", "Cuba", "Oman"),
    "Fruit": ("Apple", "Pear", "Plum", "Kiwi", "Lime", "Fig", "Mango", "Lemon"),
}
YEARS = tuple(str(y) for y in range(2014, 2024))
METRICS = ("Sales", "Profit", "Visitors", "Exports", "Votes", "Users")
SERIES_PAIRS = (("Men", "Women"), ("Online", "Store"), ("North", "South"), ("Urban", "Rural"))
COLOURS = ("#1f77b4", "#ff7f0e")
"""Series colours (matplotlib's first two default colours), the same for every chart."""
PIE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
PLURALS = {"Country": "countries", "Fruit": "fruits", "Year": "years"}

QUESTION_TYPES = ("chart_to_table", "value", "max_label", "min_label", "difference", "sum", "average", "compare",
                  "count", "ratio")
ANSWER_TYPES = {"chart_to_table": "table", "value": "number", "max_label": "other", "min_label": "other",
                "difference": "number", "sum": "number", "average": "number", "compare": "yes/no", "count": "number",
                "ratio": "number", "caption": "other"}
CAPTION_PROMPTS = ("Describe the chart.", "Write a caption for the chart.")


@dataclass(frozen=True)
class ChartSpec:
    """Everything a chart shows: `values[i][j]` is row (label) i of series j."""

    kind: ChartKind
    title: str
    x_label: str
    series: tuple[str, ...]
    labels: tuple[str, ...]
    values: tuple[tuple[int, ...], ...]

    def table(self) -> Table:
        rows = tuple((label, *(str(v) for v in row)) for label, row in zip(self.labels, self.values, strict=True))
        return Table(header=(self.x_label, *self.series), rows=rows, title=self.title)

    def column(self, j: int) -> list[int]:
        return [row[j] for row in self.values]

    def to_json(self) -> dict:
        """Plain JSON (lists, not tuples), so a manifest round trip gives the same meta."""
        d = asdict(self)
        return {**d, "series": list(self.series), "labels": list(self.labels),
                "values": [list(row) for row in self.values]}

    @classmethod
    def from_json(cls, d: dict) -> ChartSpec:
        return cls(kind=d["kind"], title=d["title"], x_label=d["x_label"], series=tuple(d["series"]),
                   labels=tuple(d["labels"]), values=tuple(tuple(row) for row in d["values"]))


# ---------------------------------------------------------------------------------------------------- drawing


def render(spec: ChartSpec, size: int):
    """The chart as a matplotlib Figure (Agg canvas, `size` x `size` pixels at 100 dpi), not yet rasterised."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # its own Agg canvas: no pyplot, no global backend
    from matplotlib.figure import Figure

    font = size / 16.0  # points: 12 px text at 192 px
    with matplotlib.rc_context({"font.family": "DejaVu Sans", "font.size": font, "axes.titlesize": font * 1.1,
                                "axes.labelsize": font, "xtick.labelsize": font * 0.9, "legend.fontsize": font * 0.9,
                                "axes.spines.top": False, "axes.spines.right": False}):
        fig = Figure(figsize=(size / 100, size / 100), dpi=100, facecolor="white")
        FigureCanvasAgg(fig)
        if spec.kind == "pie":
            ax = fig.add_axes((0.0, 0.0, 1.0, 0.86))
            _draw_pie(ax, spec, font)
        else:
            ax = fig.add_axes((0.14, 0.2, 0.82, 0.58 if len(spec.series) > 1 else 0.64))
            (_draw_bars if spec.kind == "bar" else _draw_lines)(ax, spec, font)
            ax.set_xlabel(spec.x_label, labelpad=1)
            ax.set_ylabel(spec.series[0] if len(spec.series) == 1 else "Value", labelpad=1)
            ax.set_yticks([])
            top = max(max(row) for row in spec.values)
            ax.set_ylim(-0.2 * top if spec.kind == "line" else 0, top * 1.3)  # room for the labels below points
            ax.tick_params(axis="x", length=0, pad=1)
            if len(spec.series) > 1:
                fig.legend(loc="upper center", bbox_to_anchor=(0.5, 0.9), ncols=len(spec.series), frameon=False,
                           handlelength=1.0, columnspacing=1.0, borderaxespad=0.0, handletextpad=0.3)
        fig.suptitle(spec.title, y=0.985, fontsize=font * 1.05, va="top")
    return fig


def _draw_bars(ax, spec: ChartSpec, font: float) -> None:
    k, n = len(spec.series), len(spec.labels)
    width = 0.8 / k
    for j, name in enumerate(spec.series):
        xs = [i + (j - (k - 1) / 2) * width for i in range(n)]
        bars = ax.bar(xs, spec.column(j), width=width * 0.95, color=COLOURS[j], label=name)
        ax.bar_label(bars, labels=[str(v) for v in spec.column(j)], padding=1, fontsize=font * 0.85)
    ax.set_xticks(range(n), spec.labels, fontsize=font * 0.8)
    ax.set_xlim(-0.6, n - 0.4)


def _draw_lines(ax, spec: ChartSpec, font: float) -> None:
    n = len(spec.labels)
    for j, name in enumerate(spec.series):
        ys = spec.column(j)
        ax.plot(range(n), ys, color=COLOURS[j], marker="o", markersize=font * 0.4, linewidth=font * 0.15, label=name)
        for i, y in enumerate(ys):
            # the higher of two points is labelled above it, the lower below (random_spec keeps them apart)
            below = any(row[k] > y for k, row in ((k, spec.values[i]) for k in range(len(spec.series))))
            ax.annotate(str(y), (i, y), textcoords="offset points", xytext=(0, -font * 0.5 if below else font * 0.4),
                        ha="center", va="top" if below else "bottom", fontsize=font * 0.85, color=COLOURS[j])
    ax.set_xticks(range(n), spec.labels, fontsize=font * 0.8)
    ax.set_xlim(-0.5, n - 0.5)


def _draw_pie(ax, spec: ChartSpec, font: float) -> None:
    ax.pie(spec.column(0), labels=spec.labels, colors=PIE_COLOURS[: len(spec.labels)], startangle=90, radius=0.62,
           counterclock=False, autopct=lambda pct: f"{round(pct)}", pctdistance=0.62, labeldistance=1.08,
           textprops={"fontsize": font * 0.9}, wedgeprops={"linewidth": 0.8, "edgecolor": "white"})
    ax.set_aspect("equal")
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.0, 1.0)


def to_image(fig) -> Image.Image:
    """Rasterise a Figure made by `render` into an RGB image."""
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy(), "RGB")


def draw(spec: ChartSpec, size: int) -> Image.Image:
    return to_image(render(spec, size))


# --------------------------------------------------------------------------------------------------- the data


def random_spec(r: random.Random) -> ChartSpec:
    """A chart: its kind, title, labels, series and integer values (distinct within a series)."""
    kind: ChartKind = r.choice(CHART_KINDS)
    metric = r.choice(METRICS)
    if kind == "line":
        x_label, n = "Year", r.randint(3, 4)
        start = r.randrange(len(YEARS) - n + 1)
        labels = YEARS[start : start + n]
    else:
        x_label = r.choice(tuple(CATEGORIES))
        n = r.randint(3, 4)
        labels = tuple(r.sample(CATEGORIES[x_label], n))
    if kind == "pie":
        series = ("Share",)
        values = _shares(r, n)
        title = f"{metric} share"
    else:
        series = r.choice(SERIES_PAIRS) if r.random() < 0.4 else (metric,)
        columns = [r.sample(range(5, 96), n) for _ in series]
        while kind == "line" and len(series) > 1 and any(abs(a - b) < 15 for a, b in zip(*columns, strict=True)):
            columns[1] = r.sample(range(5, 96), n)  # two lines' labels need room: points at least 15 apart
        values = tuple(tuple(col[i] for col in columns) for i in range(n))
        title = f"{metric} by {x_label.lower()}"
    if kind == "pie":
        values = tuple((v,) for v in values)
    return ChartSpec(kind=kind, title=title, x_label=x_label, series=tuple(series), labels=tuple(labels),
                     values=tuple(values))


def _shares(r: random.Random, n: int) -> tuple[int, ...]:
    """n distinct integer percentages, each >= 8, summing to 100."""
    while True:
        cuts = sorted(r.sample(range(8, 93), n - 1))
        parts = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
        if min(parts) >= 8 and len(set(parts)) == n:
            return tuple(parts)


def make_question(r: random.Random, spec: ChartSpec, qtype: str) -> tuple[str, str]:
    """(question, answer) of one kind, computed from the spec's values (not from the table text)."""
    multi = len(spec.series) > 1
    j = r.randrange(len(spec.series))
    s = spec.series[j]
    col = spec.column(j)
    noun = spec.x_label.lower()
    in_series = f" {s}" if multi else ""
    a, b = r.sample(range(len(spec.labels)), 2)
    la, lb = spec.labels[a], spec.labels[b]
    of = f" in {s}" if multi else ""
    if qtype == "chart_to_table":
        return DEPLOT_PROMPT, spec.table().to_text()
    if qtype == "value":
        if multi:
            q = r.choice(("What is the value of {s} in {l}?", "What is the {s} value for {l}?"))
        else:
            q = r.choice(("What is the value for {l}?", "What value does {l} have?"))
        return q.format(s=s, l=la), str(col[a])
    if qtype in ("max_label", "min_label"):
        word = "highest" if qtype == "max_label" else "lowest"
        q = r.choice(("Which {n} has the {w}{s} value?", "Which {n} has the {w}{s} value in the chart?"))
        pick = max if qtype == "max_label" else min
        return q.format(n=noun, w=word, s=in_series), spec.labels[col.index(pick(col))]
    if qtype == "difference":
        q = r.choice(("What is the difference between {a} and {b}{of}?", "How much higher is {a} than {b}{of}?"))
        if q.startswith("How much") and col[a] < col[b]:
            a, b, la, lb = b, a, lb, la
        return q.format(a=la, b=lb, of=of), str(abs(col[a] - col[b]))
    if qtype == "sum":
        q = "What is the sum of {s} values?" if multi else r.choice(("What is the total of all values?",
                                                                     "What is the sum of all values?"))
        return q.format(s=s), str(sum(col))
    if qtype == "average":
        q = "What is the average of {s}?" if multi else r.choice(("What is the average value?",
                                                                  "What is the mean of all values?"))
        return q.format(s=s), format_number(round(sum(col) / len(col), 2))
    if qtype == "compare":
        word = r.choice(("greater", "less"))
        q = r.choice(("Is {a} {w} than {b}{of}?", "Is the value of {a} {w} than {b}{of}?"))
        yes = col[a] > col[b] if word == "greater" else col[a] < col[b]
        return q.format(a=la, b=lb, w=word, of=of), "Yes" if yes else "No"
    if qtype == "count":
        plural = PLURALS[spec.x_label]
        return r.choice((f"How many {plural} are shown?", f"How many {plural} are in the chart?")), str(len(col))
    if qtype == "ratio":
        return f"What is the ratio of {la} to {lb}{of}?", format_number(round(col[a] / col[b], 2))
    raise ValueError(f"charts: unknown question type {qtype!r}")


def charts(
    n: int, seed: int = 0, size: int = 192, caption_fraction: float = 0.0, questions: Sequence[str] | None = None
) -> Iterator[tuple[Sample, Image.Image]]:
    """`n` (Sample, chart image) pairs; `questions` picks the kinds (default: every kind in QUESTION_TYPES, drawn
    uniformly), e.g. ["chart_to_table"] for DePlot-style training data."""
    if questions:
        unknown = [q for q in questions if q not in QUESTION_TYPES]
        if unknown:
            raise ValueError(f"charts: unknown question type(s) {unknown}; known: {list(QUESTION_TYPES)}")
    kinds = tuple(questions) if questions else QUESTION_TYPES
    r = random.Random(seed)
    for i in range(n):
        spec = random_spec(r)
        table_text = spec.table().to_text()
        caption = f"a {spec.kind} chart of {spec.title.lower()}"
        if r.random() < caption_fraction:
            qtype, question, answer = "caption", r.choice(CAPTION_PROMPTS), caption
        else:
            qtype = r.choice(kinds)
            question, answer = make_question(r, spec, qtype)
        sid = f"charts-{seed}-{i:06d}"
        task = {"chart_to_table": "chart_to_table", "caption": "caption"}.get(qtype, "chartqa")
        sample = Sample(
            id=sid,
            messages=[user(question), assistant(answer)],
            images=[f"images/{sid}.png"],
            task=task,
            answers=[answer] if task == "chartqa" else None,
            references=[answer] if task == "caption" else None,
            source="charts",
            meta={"question_type": qtype, "answer_type": ANSWER_TYPES[qtype], "chart_type": spec.kind,
                  "n_series": len(spec.series), "table": table_text, "chart": spec.to_json(), "caption": caption},
        )
        yield sample, draw(spec, size)
