"""The error-analysis page: one self-contained HTML file per evaluation, or per comparison of prediction files.

    vlmtune eval --model runs/x --data data/d --split test            # writes .../analysis.html beside metrics.json
    vlmtune eval compare base/predictions.jsonl tuned/predictions.jsonl --data data/d --out compare.html

It shows the metrics of each file (overall and per answer type / question type / source), a confusion matrix of
gold vs predicted answers for closed-vocabulary question types (colours, yes/no, counts: at most 25 distinct gold
answers), and a gallery of every sample (image, question, references, each file's prediction and score) that sorts
by any score or by the change between the first two files, and filters by answer type, question type and source.
Images are embedded as data: URIs; the page needs no server and no network.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from pathlib import Path

from PIL import Image

from vlmtune.data.images import ImageError, load_image, resolve_inside
from vlmtune.eval.score import read_rows, recorded_task
from vlmtune.eval.tasks import get_task
from vlmtune.eval.tasks.base import Row, gold, unlabelled

MAX_GALLERY = 3000
"""Samples shown in the gallery (the metrics and confusion matrices use all)."""
MAX_VOCAB = 25
FILTER_KEYS = ("answer_type", "question_type", "source")


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def load_scored(path: str | Path, task: str | None) -> tuple[list[Row], dict]:
    """Rows of a predictions file with per-sample scores (scored with `task` when they have none) and metrics.
    `task` None: the task the rows record, else the one in metrics.json beside the file, else vqa."""
    path = Path(path)
    metrics_file = path.parent / "metrics.json"
    saved = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    task = task or recorded_task(path) or saved.get("task") or "vqa"
    rows = read_rows(path, task, unlabelled=True)  # a hidden-label split's predictions are shown, unscored
    if all("scores" in r for r in rows if not unlabelled(r)) and saved.get("task") == task:
        return rows, saved
    return rows, {"task": task, **get_task(task).score_rows(rows)}


def _thumb(root: Path | None, rel: str, size: int = 112) -> str:
    if root is None:
        return ""

    try:
        img = load_image(resolve_inside(root, rel))
    except (ImageError, OSError):
        return f'<div class="missing">{_e(rel)}</div>'
    img.thumbnail((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return f'<img alt="{_e(rel)}" src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _primary(task: str, rows: list[Row]) -> str:
    t = get_task(task)
    for m in (t.primary, *t.metrics):
        if rows and all(m in r.get("scores", {}) for r in rows):
            return m
    return next(iter(rows[0].get("scores", {})), t.primary) if rows else t.primary


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else _e(v)


def _metrics_table(names: list[str], metrics: list[dict], task: str) -> str:
    keys = [m for m in get_task(task).metrics if any(m in x for x in metrics)]
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    body = "".join(f"<tr><td>{_e(k)}</td>" + "".join(f"<td>{_fmt(x.get(k, ''))}</td>" for x in metrics) + "</tr>"
                   for k in ["n", *keys])
    parts = [f"<table class='metrics'><tr><th>metric</th>{head}</tr>{body}</table>"]
    for key in ("by_answer_type", "by_question_type", "by_source", "by_subset", "by_lang"):
        groups = sorted({g for x in metrics for g in x.get(key, {})})
        if not groups:
            continue
        primary = get_task(task).primary
        rows = "".join(f"<tr><td>{_e(g)}</td><td>{metrics[0].get(key, {}).get(g, {}).get('n', '')}</td>"
                       + "".join(f"<td>{_fmt(x.get(key, {}).get(g, {}).get(primary, ''))}</td>" for x in metrics)
                       + "</tr>" for g in groups)
        parts.append(f"<h3>{_e(primary)} {_e(key.replace('_', ' '))}</h3><table class='metrics'><tr><th>"
                     f"{_e(key[3:])}</th><th>n</th>{head}</tr>{rows}</table>")
    return "\n".join(parts)


def confusion(rows: list[Row]) -> dict[str, dict]:
    """Per question type (or "all"), gold answer (the first/majority one) x prediction counts, for question types
    with at most MAX_VOCAB distinct gold answers; predictions outside that vocabulary count as "(other)"."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        if r.get("prediction") is None or unlabelled(r):
            continue
        groups.setdefault(str((r.get("meta") or {}).get("question_type", "all")), []).append(r)
    out = {}
    for qtype, group in sorted(groups.items()):
        golds = [_majority(gold(r)) for r in group]
        vocab = sorted(set(golds))
        if not 2 <= len(vocab) <= MAX_VOCAB or len(group) < 2 * len(vocab):
            continue
        cells = Counter()
        for r, g in zip(group, golds, strict=True):
            p = r["prediction"].strip().lower()
            cells[(g, next((v for v in vocab if v.lower() == p), "(other)"))] += 1
        out[qtype] = {"labels": vocab, "cells": {f"{g}\t{p}": n for (g, p), n in cells.items()}, "n": len(group)}
    return out


def _majority(answers: list[str]) -> str:
    counts = Counter(answers)
    return max(answers, key=lambda a: (counts[a], -answers.index(a)))


def _confusion_html(name: str, matrices: dict[str, dict]) -> str:
    parts = []
    for qtype, m in matrices.items():
        labels = m["labels"]
        cols = [*labels, "(other)"]
        head = "".join(f"<th class='rot'><div>{_e(c)}</div></th>" for c in cols)
        body = []
        for g in labels:
            total = sum(m["cells"].get(f"{g}\t{c}", 0) for c in cols) or 1
            tds = []
            for c in cols:
                n = m["cells"].get(f"{g}\t{c}", 0)
                alpha = n / total
                color = "40,140,60" if c == g else "200,50,40"
                tds.append(f"<td style='background:rgba({color},{alpha:.2f})' title='gold {_e(g)}, predicted {_e(c)}:"
                           f" {n}'>{n or ''}</td>")
            body.append(f"<tr><th>{_e(g)}</th>{''.join(tds)}</tr>")
        parts.append(f"<div class='cm'><h4>{_e(name)}: {_e(qtype)} (n={m['n']}; rows gold, columns predicted)</h4>"
                     f"<table><tr><th></th>{head}</tr>{''.join(body)}</table></div>")
    return "\n".join(parts)


def _gallery(names: list[str], tables: list[dict[str, Row]], ids: list[str], primary: str, root: Path | None) -> str:
    options = {k: sorted({str((tables[0][i].get("meta") or {}).get(k)) for i in ids
                          if (tables[0][i].get("meta") or {}).get(k) is not None}) for k in FILTER_KEYS}
    selects = "".join(
        f"<label>{_e(k.replace('_', ' '))} <select data-filter='{k}'><option value=''>all</option>"
        + "".join(f"<option>{_e(v)}</option>" for v in vals) + "</select></label> "
        for k, vals in options.items() if len(vals) > 1)
    sorts = "".join(f"<button data-sort='s{j}' data-dir='1'>{_e(n)} score &uarr;</button>"
                    f"<button data-sort='s{j}' data-dir='-1'>{_e(n)} score &darr;</button>"
                    for j, n in enumerate(names))
    if len(names) > 1:
        sorts += ("<button data-sort='delta' data-dir='1'>biggest drop first</button>"
                  "<button data-sort='delta' data-dir='-1'>biggest gain first</button>")
    head = "".join(f"<th>{_e(n)}</th>" for n in names) + ("<th>change</th>" if len(names) > 1 else "")
    trs = []
    for i in ids[:MAX_GALLERY]:
        base = tables[0][i]
        meta = base.get("meta") or {}
        scores = [t[i].get("scores", {}).get(primary) for t in tables]
        attrs = " ".join(f"data-{k.replace('_', '-')}='{_e(meta[k])}'" for k in FILTER_KEYS if k in meta)
        attrs += "".join(f" data-s{j}='{s if s is not None else ''}'" for j, s in enumerate(scores))
        delta = (scores[1] - scores[0]) if len(scores) > 1 and None not in scores[:2] else None
        if delta is not None:
            attrs += f" data-delta='{delta}'"
        refs = gold(base) if any(k in base for k in ("answers", "references", "target")) else []
        shown = ", ".join(_e(r) for r in refs[:5]) + (f" (+{len(refs) - 5})" if len(refs) > 5 else "")
        cells = "".join(f"<td class='pred'>{_e(t[i].get('prediction', ''))}<div class='score'>{_fmt(s)}</div></td>"
                        for t, s in zip(tables, scores, strict=True))
        if len(names) > 1:
            cells += f"<td class='delta'>{'' if delta is None else f'{delta:+.3f}'}</td>"
        image = "".join(_thumb(root, rel) for rel in (base.get("images") or [])[:2])
        tags = " ".join(f"<span class='tag'>{_e(meta[k])}</span>" for k in FILTER_KEYS if k in meta)
        trs.append(f"<tr class='sample' {attrs}><td>{image}</td><td><div class='id'>{_e(i)}</div>"
                   f"{_e(base.get('question', ''))}<div>{tags}</div></td><td class='refs'>{shown}</td>{cells}</tr>")
    note = f"<p>showing the first {MAX_GALLERY} of {len(ids)} samples</p>" if len(ids) > MAX_GALLERY else ""
    return (f"<div class='controls'>{selects}{sorts}<span id='shown'></span></div>{note}"
            f"<table id='gallery'><thead><tr><th>image</th><th>question</th><th>references</th>{head}</tr></thead>"
            f"<tbody>{''.join(trs)}</tbody></table>")


SCRIPT = """
const body = document.querySelector('#gallery tbody');
function apply() {
  const filters = [...document.querySelectorAll('select[data-filter]')].filter(s => s.value);
  let n = 0;
  for (const tr of body.rows) {
    const ok = filters.every(s => tr.dataset[s.dataset.filter.replace(/_(.)/g, (_, c) => c.toUpperCase())] === s.value);
    tr.style.display = ok ? '' : 'none';
    n += ok;
  }
  document.getElementById('shown').textContent = n + ' shown';
}
document.querySelectorAll('select[data-filter]').forEach(s => s.addEventListener('change', apply));
document.querySelectorAll('button[data-sort]').forEach(b => b.addEventListener('click', () => {
  const key = b.dataset.sort, dir = Number(b.dataset.dir);
  const val = tr => tr.dataset[key] === undefined || tr.dataset[key] === '' ? NaN : Number(tr.dataset[key]);
  const rows = [...body.rows].sort((a, c) => {
    const x = val(a), y = val(c);
    if (isNaN(x)) return 1; if (isNaN(y)) return -1;
    return dir * (x - y);
  });
  rows.forEach(tr => body.appendChild(tr));
}));
apply();
"""

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222} table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:4px 6px;vertical-align:top;font-size:13px} .metrics td{text-align:right}
#gallery img{max-width:112px;display:block} .score{color:#666;font-size:11px} .tag{background:#eef;padding:0 4px;
margin-right:3px;font-size:11px;border-radius:3px} .id{color:#999;font-size:11px} .controls{position:sticky;top:0;
background:#fff;padding:6px 0;border-bottom:1px solid #ccc} button{margin:2px} .cm{display:inline-block;
margin-right:2em;vertical-align:top} .cm td{text-align:center;min-width:1.8em} th.rot div{writing-mode:vertical-rl}
.delta{font-weight:bold} .missing{color:#a00;font-size:11px}
"""


def write_analysis(files: dict[str, str | Path], out: str | Path, data: str | Path | None = None,
                   task: str | None = None, title: str | None = None) -> tuple[Path, dict[str, dict]]:
    """The error-analysis page of one or more prediction files (name -> predictions.jsonl); the first is the
    baseline of the "change" column. Samples are matched by id; only ids present in every file are shown.
    Returns the page's path and each file's metrics."""
    names = list(files)
    loaded = [load_scored(files[n], task) for n in names]
    tasks = {n: m["task"] for n, (_, m) in zip(names, loaded, strict=True)}
    if len(set(tasks.values())) > 1:
        raise ValueError("the files are of different tasks (" + ", ".join(f"{n}: {t}" for n, t in tasks.items())
                         + "); compare files of one task, or pass --task")
    task = tasks[names[0]]
    tables = [{r["id"]: r for r in rows} for rows, _ in loaded]
    ids = [i for i in tables[0] if all(i in t for t in tables[1:])]
    if not ids:
        raise ValueError(f"no sample id is in every file ({', '.join(str(f) for f in files.values())})")
    primary = _primary(task, [tables[0][i] for i in ids])
    root = Path(data) if data else None
    summary = ""
    if len(names) > 1:
        deltas = [tables[1][i].get("scores", {}).get(primary, 0) - tables[0][i].get("scores", {}).get(primary, 0)
                  for i in ids]
        summary = (f"<p>{_e(names[1])} vs {_e(names[0])} on {len(ids)} common samples ({_e(primary)}): "
                   f"<b>{sum(d > 0 for d in deltas)}</b> better, <b>{sum(d < 0 for d in deltas)}</b> worse, "
                   f"{sum(d == 0 for d in deltas)} unchanged.</p>")
    matrices = "".join(_confusion_html(n, confusion([t[i] for i in ids])) for n, t in zip(names, tables, strict=True))
    body = (f"<h1>{_e(title or 'vlmtune error analysis')}</h1><p>task <b>{_e(task)}</b>; files: "
            + ", ".join(f"{_e(n)} = <code>{_e(files[n])}</code>" for n in names) + f"</p>{summary}"
            + "<h2>Metrics</h2>" + _metrics_table(names, [m for _, m in loaded], task)
            + ("<h2>Confusion matrices</h2>" + matrices if matrices else "")
            + f"<h2>Samples ({_e(primary)} per sample)</h2>" + _gallery(names, tables, ids, primary, root))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title or 'vlmtune analysis')}"
                   f"</title><style>{STYLE}</style></head><body>{body}<script>{SCRIPT}</script></body></html>",
                   encoding="utf-8")
    return out, {n: m for n, (_, m) in zip(names, loaded, strict=True)}


def compare_files(predictions: list[str], out: str | Path, data: str | Path | None = None, task: str | None = None,
                  names: str | None = None) -> dict:
    """`vlmtune eval compare A B [C...]`: the analysis page of several prediction files side by side."""
    if len(predictions) < 2:
        raise ValueError("eval compare needs at least two prediction files (the first is the baseline)")
    labels = names.split(",") if names else (["base", "tuned"] if len(predictions) == 2 else
                                             [Path(p).parent.name or Path(p).stem for p in predictions])
    if len(labels) != len(predictions) or len(set(labels)) != len(labels):
        raise ValueError(f"--names: {len(predictions)} distinct names needed, got {labels}")
    path, metrics = write_analysis(dict(zip(labels, predictions, strict=True)), out, data, task)
    primary = get_task(next(iter(metrics.values()))["task"]).primary
    return {"out": str(path), "metrics": {n: {k: v for k, v in m.items() if k in ("n", primary)}
                                          for n, m in metrics.items()}}
