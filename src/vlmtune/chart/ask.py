"""The DePlot pipeline: a chart-to-table model (through `Predictor`, the one generation path) writes the chart's
table, a `Reasoner` answers the question from it; and its evaluation on a chart-QA dataset.

    vlmtune chart ask chart.png "Which country has the highest value?" --model runs/tiny_chart_to_table
    vlmtune chart eval --model runs/tiny_chart_to_table --data data/charts-qa --split test
    vlmtune chart eval --oracle --data data/charts-qa --split test      # the reasoner on the TRUE tables (ceiling)
    vlmtune chart tables data/chartqa --out data/chartqa-tables          # ChartQA -> chart-to-table training data

`evaluate_charts` writes the table of each image once (many questions share a chart in ChartQA), cached in
OUT/tables.jsonl so an interrupted run resumes; answers every question with each reasoning setup in turn (the rule
program, or DePlot's LM setups: `--reasoner all` compares them on the same tables); and scores the answers with
ChartQA's relaxed accuracy (the `chartqa` task, pix2struct's official metric) and the tables against the samples'
true tables (`meta["table"]`: the charts world's DePlot text or ChartQA's CSV) with RMS-F1 / RNSS, each
beside its chance level (`table.random_baseline`: every chart scored against another chart's true table, see
`vlmtune.eval.metrics.table.table_baseline`).
OUT/predictions.jsonl has one row per question and setup (answer, program or reply, self-consistency's samples, the
table used), OUT/metrics.json the scores ("setups": one entry per setup; `setups_table` prints them). The LM's
answers are not cached: an interrupted run answers again (only the tables are reused).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from vlmtune.chart.reason import Answer, ProgramReasoner, Reasoner
from vlmtune.data.chart_table import Table
from vlmtune.data.charts import DEPLOT_PROMPT
from vlmtune.data.dataset import load_split
from vlmtune.data.images import load_image, load_images, resolve_inside
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.store import read_samples, write_dataset
from vlmtune.eval.metrics.table import table_baseline, table_metrics_corpus
from vlmtune.eval.runner import row_of
from vlmtune.eval.tasks import get_task
from vlmtune.io import atomic_write_text

TABLES = "tables.jsonl"


def generate_tables(predictor, images: list) -> list[str]:
    """DePlot's chart-to-table step for each PIL image: the model's table text (rows joined by `<0x0A>`)."""
    samples = [Sample(id=f"chart-{i}", messages=[user(DEPLOT_PROMPT)], images=["chart"]) for i in range(len(images))]
    return predictor.generate(samples, [[image] for image in images])


def ask(predictor, image, question: str, reasoner: Reasoner | None = None) -> dict:
    """One chart and one question -> {"table", "answer", "program", "ok", "error", "reasoner"}."""
    table_text = generate_tables(predictor, [image])[0]
    answer = (reasoner or ProgramReasoner()).answer(Table.from_text(table_text), question)
    return {"table": table_text, **_answer_fields(answer)}


def _answer_fields(a: Answer) -> dict:
    fields = {"answer": a.answer, "program": a.program, "ok": a.ok, "error": a.error, "reasoner": a.reasoner}
    return fields if a.samples is None else {**fields, "samples": a.samples}


def _question_samples(root: Path, split: str | None, limit: int | None) -> list[Sample]:
    samples = [s for s in load_split(root, split, skip_bad=False) if s.task == "chartqa"]
    if not samples:
        raise ValueError(f"{root}: no chartqa questions in split {split!r} (task 'chartqa': made by "
                         "`vlmtune data synth charts` or `vlmtune data import chartqa`)")
    for s in samples:
        if len(s.images) != 1:
            raise ValueError(f"{root}: sample {s.id!r} has {len(s.images)} images; a chart question has one")
    return samples[:limit] if limit else samples


def _true_tables(samples: list[Sample]) -> dict[str, str]:
    """image path -> the true table text of that chart (the first sample's meta["table"])."""
    out: dict[str, str] = {}
    for s in samples:
        if s.meta.get("table") and s.images[0] not in out:
            out[s.images[0]] = s.meta["table"]
    return out


def _cached_tables(path: Path) -> dict[str, str]:
    tables: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                tables[row["image"]] = row["table"]
            except (json.JSONDecodeError, KeyError):
                continue  # a torn last line of an interrupted run
    return tables


def _model_tables(predictor, root: Path, images: list[str], cache: Path, progress: bool) -> dict[str, str]:
    """The model's table for every image, generated once (batched) and appended to `cache` as it goes."""
    tables = _cached_tables(cache)
    todo = [im for im in images if im not in tables]
    bar = None
    if progress and todo:
        bar = tqdm(total=len(images), initial=len(images) - len(todo), desc="chart->table", file=sys.stderr)
    with open(cache, "a", encoding="utf-8") as fh:
        for i in range(0, len(todo), predictor.batch_size):
            chunk = todo[i : i + predictor.batch_size]
            pictures = [load_image(resolve_inside(root, im)) for im in chunk]
            for im, text in zip(chunk, generate_tables(predictor, pictures), strict=True):
                tables[im] = text
                fh.write(json.dumps({"image": im, "table": text}, ensure_ascii=False) + "\n")
            fh.flush()
            if bar:
                bar.update(len(chunk))
    if bar:
        bar.close()
    return tables


def _answer_rows(samples: list[Sample], tables: dict[str, str], reasoner: Reasoner,
                 progress: str | None = None) -> list[dict]:
    """One row per question: the reasoner's answer (as "prediction"), program, ok/error, the table it read."""
    bar = None
    if progress:
        bar = tqdm(total=len(samples), desc=progress, file=sys.stderr)
    rows = []
    for s in samples:
        a = reasoner.answer(Table.from_text(tables[s.images[0]]), s.question)
        row = row_of(s, a.answer)
        row.pop("meta", None)
        meta = {k: s.meta[k] for k in ("question_type", "answer_type", "chart_type", "subset") if k in s.meta}
        rows.append({**row, "setup": reasoner.name, **_answer_fields(a), "table": tables[s.images[0]],
                     "meta": {**meta, "source": s.source}})
        rows[-1].pop("answer")  # the answer is the row's "prediction"
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return rows


def _mean_by(rows: list[dict], key: str, metric: str) -> dict:
    groups: dict[str, list[float]] = {}
    for r in rows:
        value = r["meta"].get(key)
        if value is not None:
            groups.setdefault(str(value), []).append(r["scores"][metric])
    return {k: {"n": len(v), metric: sum(v) / len(v)} for k, v in sorted(groups.items())}


def _setup_scores(rows: list[dict]) -> dict:
    """ChartQA's relaxed accuracy (pix2struct's, through the chartqa task), exact match, the share of questions
    answered, and the breakdowns, of one setup's rows."""
    qa = get_task("chartqa").score_rows(rows)
    scores = {"relaxed_accuracy": qa["relaxed_accuracy"], "exact_match": qa["exact_match"],
              "answered": sum(r["ok"] for r in rows) / len(rows),
              "by_question_type": _mean_by(rows, "question_type", "relaxed_accuracy")}
    return {**scores, **{k: v for k, v in qa.items() if k.startswith("by_")}}


def setups_table(metrics: dict) -> str:
    """The setups of a `chart eval` as a Markdown table (relaxed accuracy, exact match, answered, and the relaxed
    accuracy on the true tables when it was measured)."""
    setups = metrics["setups"]
    ceiling = any("ceiling_relaxed_accuracy" in s for s in setups.values())
    head = ["setup", "relaxed accuracy", "exact match", "answered"] + (["relaxed accuracy, true tables"] if ceiling
                                                                       else [])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, s in setups.items():
        cells = [name] + [f"{s[k]:.3f}" for k in ("relaxed_accuracy", "exact_match", "answered")]
        if ceiling:
            cells.append(f"{s['ceiling_relaxed_accuracy']:.3f}" if "ceiling_relaxed_accuracy" in s else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def evaluate_charts(predictor, root: str | Path, split: str | None, out_dir: str | Path,
                    reasoner: Reasoner | list[Reasoner] | None = None, limit: int | None = None, ceiling: bool = True,
                    progress: bool = False) -> dict:
    """Chart QA through tables, answered by each reasoner (setup) in turn from the same tables. `predictor=None`
    answers from the TRUE tables (`meta["table"]`): the reasoners' ceiling. `ceiling`: also answer from the true
    tables when the model wrote them (a second pass of every setup). Returns the metrics (also written to
    OUT/metrics.json): "setups" has each setup's scores; the top-level scores are the first setup's."""
    root, out_dir = Path(root), Path(out_dir)
    reasoners = [ProgramReasoner()] if reasoner is None else (
        list(reasoner) if isinstance(reasoner, list | tuple) else [reasoner])
    names = [r.name for r in reasoners]
    if not reasoners or len(set(names)) != len(names):
        raise ValueError(f"chart eval: give each reasoning setup once (got {names})")
    samples = _question_samples(root, split, limit)
    truth = _true_tables(samples)
    images = list(dict.fromkeys(s.images[0] for s in samples))
    out_dir.mkdir(parents=True, exist_ok=True)
    if predictor is None:
        missing = [s.id for s in samples if s.images[0] not in truth]
        if missing:
            raise ValueError(f"{root}: --oracle needs meta['table'] on every question; missing on {missing[:5]}")
        tables = truth
    else:
        tables = _model_tables(predictor, root, images, out_dir / TABLES, progress)

    all_rows: list[dict] = []
    setups: dict[str, dict] = {}
    for r in reasoners:
        rows = _answer_rows(samples, tables, r, progress=r.name if progress and r.name != "program" else None)
        setups[r.name] = _setup_scores(rows)
        if predictor is not None and ceiling and len(truth) == len(images):
            ceiling_rows = _answer_rows(samples, truth, r, progress=f"{r.name} (true tables)"
                                        if progress and r.name != "program" else None)
            setups[r.name]["ceiling_relaxed_accuracy"] = _setup_scores(ceiling_rows)["relaxed_accuracy"]
        all_rows += rows
    metrics: dict = {"task": "chart_qa_via_tables", "reasoner": names[0],
                     "tables": "true (oracle)" if predictor is None else "model", "n_questions": len(samples),
                     "n_charts": len(images), **setups[names[0]], "setups": setups}
    scored = [im for im in images if im in truth]
    if predictor is not None and scored:
        true_tables = [truth[im] for im in scored]
        # beside every RMS-F1 its chance level: each chart scored against another chart's true table
        metrics["table"] = {"n": len(scored), **table_metrics_corpus([tables[im] for im in scored], true_tables),
                            "random_baseline": table_baseline(true_tables)}
    atomic_write_text(out_dir / "predictions.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in all_rows))
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return metrics


def tables_dataset(src: str | Path, out: str | Path) -> dict:
    """A chart-to-table training set from a chart-QA dataset: one sample per chart (DePlot's prompt -> the chart's
    true table as DePlot text, from `meta["table"]`), in the split of the chart's first question."""
    src, out = Path(src), Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new directory")
    samples, _ = read_samples(src, None)
    seen: set[str] = set()
    chosen: list[tuple[Sample, str]] = []
    for s in samples:
        if len(s.images) != 1 or s.images[0] in seen or not s.meta.get("table"):
            continue
        seen.add(s.images[0])
        table = Table.from_text(s.meta["table"])
        if table.title is None:  # DePlot always writes a title line; ChartQA's CSV tables have none
            table = Table(header=table.header, rows=table.rows, title="")
        chosen.append((s, table.to_text()))
    if not chosen:
        raise ValueError(f"{src}: no sample has a meta['table'] (import ChartQA with its tables/ folder)")

    def items():
        for s, text in chosen:
            sample = Sample(id=f"table-{s.id}", messages=[user(DEPLOT_PROMPT), assistant(text)], images=s.images,
                            task="chart_to_table", source=s.source, split=s.split,
                            meta={"table": text, **{k: s.meta[k] for k in ("chart_type", "subset") if k in s.meta}})
            yield sample, load_images(src, s)  # its one image

    n = write_dataset(out, items())
    counts: dict[str, int] = {}
    for s, _ in chosen:
        counts[s.split or "none"] = counts.get(s.split or "none", 0) + 1
    return {"out": str(out), "samples": n, "splits": counts}


__all__ = ["ask", "evaluate_charts", "generate_tables", "setups_table", "tables_dataset"]
