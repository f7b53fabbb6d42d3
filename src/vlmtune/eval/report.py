"""report.html: one self-contained page per run (or per comparison of runs), images and plots inline.

    write_run_report("runs/tiny_fashion_vqa")                  # -> runs/tiny_fashion_vqa/report.html
    write_comparison_report({"naive": run_a, "replay": run_b}, "runs/demo/report.html", title="...")

A run's page shows: loss curves (total and per data source), the validation metric and every probe per eval step;
the probe table (score and delta from the base model per checkpoint, the forgetting gate's verdict, the chosen
best); per-question-type accuracy of the base model and the best checkpoint; a gallery of held-out samples with
image, question, reference, base answer and tuned answer side by side. Everything is read back from the run
directory (metrics.jsonl, predictions/step-N/, run_config.yaml), so a report can be rebuilt at any time.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from PIL import Image

from vlmtune.config import RunCfg
from vlmtune.data.images import resolve_inside
from vlmtune.io import atomic_write_text

GALLERY = 12


# ----------------------------------------------------------------------------------------- reading a run


class RunView:
    """What a report needs from a run directory."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.cfg = RunCfg.from_file(self.dir / "run_config.yaml")
        self.rows = [json.loads(line) for line in (self.dir / "metrics.jsonl").read_text().splitlines() if line]
        d = self.cfg.data
        self.data_root = Path(d.path or d.synth.default_path())
        self.probe_roots = {p.name: Path(p.path or p.synth.default_path()) for p in self.cfg.probes}
        self.probe_metric = {p.name: p.metric for p in self.cfg.probes}
        self.metric = self.cfg.eval.metric
        self.rejected = {r["step"]: r["reason"] for r in self.rows if r.get("gate") == "rejected"}

    def eval_steps(self) -> list[int]:
        return sorted({r["step"] for r in self.rows if any(k.startswith(("val/", "probe/")) for k in r)})

    def at(self, step: int) -> dict:
        out: dict = {}
        for r in self.rows:
            if r["step"] == step:
                out.update(r)
        return out

    def series(self, key: str) -> tuple[list[int], list[float]]:
        pts = [(r["step"], r[key]) for r in self.rows if isinstance(r.get(key), (int, float))]
        return [s for s, _ in pts], [v for _, v in pts]

    def best_step(self) -> int | None:
        meta = self.dir / "best" / "vlmtune.json"
        return json.loads(meta.read_text()).get("step") if meta.is_file() else None

    def final_step(self) -> int | None:
        steps = self.eval_steps()
        return steps[-1] if steps else None

    def predictions(self, step: int, probe: str | None = None) -> list[dict]:
        sub = f"probe-{probe}/" if probe else ""
        path = self.dir / "predictions" / f"step-{step}" / f"{sub}predictions.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines() if x] if path.is_file() else []

    def eval_metrics(self, step: int) -> dict:
        path = self.dir / "predictions" / f"step-{step}" / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}


# ----------------------------------------------------------------------------------------- pieces of HTML


def _e(x) -> str:
    return html.escape(str(x))


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else _e(v)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plot(title: str, ylabel: str, lines: list[tuple[str, list[int], list[float]]], hline: float | None = None):
    """A small line plot as a data: URI, or None when there is nothing to draw."""
    lines = [ln for ln in lines if ln[1]]
    if not lines:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.0))
    for label, xs, ys in lines:
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def _image_uri(root: Path, rel: str, size: int = 128) -> str | None:
    """An image of the dataset, resized for the page, as a data: URI (None if it cannot be read)."""
    try:
        with Image.open(resolve_inside(root, rel)) as im:
            im = im.convert("RGB")
            im = im.resize((size, round(size * im.height / im.width)), Image.NEAREST)
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except (OSError, ValueError):
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _mark(pred: str, gold: list[str]) -> str:
    ok = pred.strip().lower() in {g.strip().lower() for g in gold}
    return f'<span class="{"ok" if ok else "bad"}">{_e(pred) or "&empty;"}</span>'


def _gallery(root: Path, columns: dict[str, list[dict]], n: int = GALLERY) -> str:
    """Samples side by side: image, question, reference, then one answer column per model (e.g. base, tuned)."""
    first = next(iter(columns.values()), [])
    by_id = {label: {r["id"]: r for r in rows} for label, rows in columns.items()}
    rows = []
    for r in first[:n]:
        uri = _image_uri(root, r["images"][0]) if r.get("images") else None
        img = f'<img class="sample" src="{uri}" alt="{_e(r["id"])}">' if uri else "(no image)"
        gold = r.get("answers") or []
        answers = [_mark(by_id[label].get(r["id"], {}).get("prediction", ""), gold) for label in columns]
        rows.append([img, _e(r["question"]), _e(" | ".join(gold[:3])), *answers])
    return _table(["image", "question", "reference", *[_e(c) for c in columns]], rows, "gallery")


def _by_type(columns: dict[str, dict]) -> str:
    """Per-question-type accuracy of several evaluations (e.g. base vs best)."""
    types: list[str] = []
    for m in columns.values():
        for t in m.get("by_question_type", {}):
            if t not in types:
                types.append(t)
    if not types:
        return "<p>(no question types in this data)</p>"
    rows = []
    for t in types:
        cells = []
        for m in columns.values():
            g = m.get("by_question_type", {}).get(t)
            cells.append(_fmt(g.get("vqa_accuracy", g.get("exact_match"))) if g else "")
        n = next((m["by_question_type"][t]["n"] for m in columns.values() if t in m.get("by_question_type", {})), "")
        rows.append([_e(t), _e(n), *cells])
    return _table(["question type", "n", *[_e(c) for c in columns]], rows)


CSS = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
h1{font-size:22px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:13px} td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f4f4f4} .ok{color:#17692b;font-weight:600} .bad{color:#b3261e;font-weight:600}
img.plot{margin:4px;border:1px solid #eee} img.sample{image-rendering:pixelated;width:96px}
.rejected{background:#fdecea} .best{background:#e8f5e9} .note{color:#555;font-size:13px}
"""


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{CSS}</style>"
            f"</head><body><h1>{_e(title)}</h1>{body}</body></html>")


def _imgs(uris: list[str | None]) -> str:
    return "".join(f'<img class="plot" src="{u}">' for u in uris if u)


# ----------------------------------------------------------------------------------------- one run


def _probe_table(v: RunView) -> str:
    if not v.probe_metric:
        return "<p>(no probes configured)</p>"
    best = v.best_step()
    max_drop = v.cfg.forgetting.max_drop
    rows = []
    for step in v.eval_steps():
        r = v.at(step)
        cells = [f"{_fmt(r.get(f'probe/{n}/{m}'))} ({r.get(f'probe/{n}/delta', 0):+.1f})"
                 for n, m in v.probe_metric.items()]
        status = "base" if step == 0 else ("rejected: " + _e(v.rejected[step])) if step in v.rejected else "passed"
        if step == best:
            status += " &mdash; <b>best</b>"
        cls = "rejected" if step in v.rejected else "best" if step == best else ""
        rows.append((cls, [_e(step), _fmt(r.get(f"val/{v.metric}", "")), *cells, status]))
    header = ["step", _e(f"val {v.metric}"), *[_e(f"{n} ({m}, delta pts)") for n, m in v.probe_metric.items()],
              "gate" + (f" (max drop {max_drop:g} pts)" if max_drop is not None else " (off)")]
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(f'<tr class="{c}">' + "".join(f"<td>{x}</td>" for x in cells) + "</tr>" for c, cells in rows)
    return f'<table class="probes"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def run_curves(v: RunView, label: str = "") -> list[str | None]:
    losses = [(f"{label}loss", *v.series("loss"))]
    for key in sorted({k for r in v.rows for k in r if k.startswith("loss/")}):
        losses.append((f"{label}{key}", *v.series(key)))
    out = [_plot("training loss (answer tokens)", "loss", losses),
           _plot(f"validation {v.metric}", v.metric, [(f"{label}val", *v.series(f"val/{v.metric}"))])]
    for n, m in v.probe_metric.items():
        xs, ys = v.series(f"probe/{n}/{m}")
        out.append(_plot(f"probe {n}: {m}", m, [(f"{label}{n}", xs, ys)], hline=ys[0] if ys else None))
    return out


def write_run_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    v = RunView(run_dir)
    out = Path(out) if out else v.dir / "report.html"
    best = v.best_step() or v.final_step()
    body = [f"<p class='note'>run <code>{_e(v.dir)}</code>: {_e(v.cfg.model.family)} from "
            f"<code>{_e(v.cfg.model.path)}</code>, data <code>{_e(v.data_root)}</code>, "
            f"{v.cfg.train.max_steps} steps; best checkpoint: step {_e(best)}</p>"]
    body.append("<h2>Curves</h2>" + _imgs(run_curves(v)))
    body.append("<h2>Probes (forgetting)</h2>" + _probe_table(v))
    if v.rejected:
        body.append("<p class='note'>Rejected by the forgetting gate: " +
                    "; ".join(f"step {s}: {_e(r)}" for s, r in sorted(v.rejected.items())) + "</p>")
    if best is not None and v.eval_steps():
        body.append("<h2>Per question type</h2>" + _by_type({"base (step 0)": v.eval_metrics(0),
                                                             f"tuned (step {best})": v.eval_metrics(best)}))
        body.append("<h2>Held-out samples</h2>" + _gallery(
            v.data_root, {"base answer": v.predictions(0), "tuned answer": v.predictions(best)}))
        for name, root in v.probe_roots.items():
            body.append(f"<h2>Probe {_e(name)}: samples</h2>" + _gallery(
                root, {"base answer": v.predictions(0, name), "tuned answer": v.predictions(best, name)}, n=6))
    atomic_write_text(out, _page(f"vlmtune report: {v.cfg.name}", "".join(body)))
    return out


# ----------------------------------------------------------------------------------------- several runs


def write_comparison_report(runs: dict[str, str | Path], out: str | Path, title: str = "vlmtune comparison",
                            summary: list[dict] | None = None, intro: str = "") -> Path:
    """Runs fine-tuned from the same base, side by side: a summary table, overlaid curves, and galleries whose
    answer columns are the base model and each run's best checkpoint."""
    views = {label: RunView(d) for label, d in runs.items()}
    body = [f"<p class='note'>{intro}</p>" if intro else ""]
    if summary:
        keys = list(summary[0])
        body.append("<h2>Summary</h2>" + _table([_e(k) for k in keys], [[_fmt(r[k]) for k in keys] for r in summary],
                                                 "summary"))
    first = next(iter(views.values()))
    metric = first.metric
    plots = [_plot("training loss", "loss", [(f"{lb}", *v.series("loss")) for lb, v in views.items()]),
             _plot(f"domain: validation {metric}", metric,
                   [(lb, *v.series(f"val/{metric}")) for lb, v in views.items()])]
    for n, m in first.probe_metric.items():
        base = first.series(f"probe/{n}/{m}")[1]
        plots.append(_plot(f"probe {n}: {m} (dashed: base model)", m,
                           [(lb, *v.series(f"probe/{n}/{m}")) for lb, v in views.items()],
                           hline=base[0] if base else None))
    body.append("<h2>Curves</h2>" + _imgs(plots))
    for lb, v in views.items():
        body.append(f"<h2>Probes: {_e(lb)}</h2>" + _probe_table(v))
    best = {lb: v.best_step() or v.final_step() for lb, v in views.items()}
    body.append("<h2>Domain, per question type</h2>" + _by_type(
        {"base": first.eval_metrics(0), **{lb: v.eval_metrics(best[lb]) for lb, v in views.items()}}))
    body.append("<h2>Domain: held-out samples</h2>" + _gallery(
        first.data_root, {"base": first.predictions(0), **{lb: v.predictions(best[lb]) for lb, v in views.items()}}))
    for n, root in first.probe_roots.items():
        body.append(f"<h2>General probe {_e(n)}: per question type</h2>" + _by_type(
            {"base": _probe_metrics(first, 0, n),
             **{lb: _probe_metrics(v, best[lb], n) for lb, v in views.items()}}))
        body.append(f"<h2>General probe {_e(n)}: samples</h2>" + _gallery(
            root, {"base": first.predictions(0, n), **{lb: v.predictions(best[lb], n) for lb, v in views.items()}}))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, _page(title, "".join(body)))
    return out


def _probe_metrics(v: RunView, step: int, probe: str) -> dict:
    path = v.dir / "predictions" / f"step-{step}" / f"probe-{probe}" / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}
