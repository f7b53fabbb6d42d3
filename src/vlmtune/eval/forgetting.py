"""The forgetting guard: probe sets scored for the base model and every checkpoint; deltas; the gate.

    probes = load_probes(cfg.probes, skip_bad=False)
    base = score(predictor, probes, run_dir / "predictions" / "step-0")    # {"general": 0.874}
    ...
    now = score(predictor, probes, run_dir / "predictions" / f"step-{step}")
    verdict = gate(base, now, max_drop=5.0)        # Verdict(deltas={"general": -12.3}, violations=[...])

A probe is any dataset with a task and a metric (general VQA, captions, whatever the model could do before). Deltas
are in points, 100 x the metric (VQA accuracy 0.874 is 87.4 points), the unit papers report. The gate passes a
checkpoint when no probe fell more than `max_drop` points below the base model; gains never fail it.

`probe_table(run_dir)` reads a run back as the table `vlmtune train` prints at its end: per eval step, the val metric,
each probe's score and delta from the base, the gate's verdict and the checkpoint copied to best/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlmtune.data.dataset import load_split, prepare_dataset
from vlmtune.data.sample import Sample
from vlmtune.eval.report import RunView
from vlmtune.eval.runner import evaluate
from vlmtune.eval.tasks import get_task


@dataclass
class Probe:
    name: str
    root: Path
    samples: list[Sample]
    task: str
    metric: str


def load_probes(cfgs, skip_bad: bool = False, rejected_path: Path | None = None) -> list[Probe]:
    """ProbeCfgs -> Probes (synthetic probe sets are generated on first use)."""
    probes = []
    for c in cfgs:
        task = get_task(c.task)
        if c.metric not in task.metrics:
            raise ValueError(f"probes[{c.name}]: metric {c.metric!r} is not computed by task {c.task!r} "
                             f"(it computes {list(task.metrics)})")
        root = prepare_dataset(c.path, c.synth)
        samples = load_split(root, c.split, skip_bad, rejected_path, source=f"probe {c.name}")
        if c.max_samples:
            samples = samples[: c.max_samples]
        probes.append(Probe(c.name, root, samples, c.task, c.metric))
    return probes


def score(predictor, probes: list[Probe], out_dir: Path | None = None) -> dict[str, dict]:
    """Evaluate every probe; returns {probe name: its metrics dict} (predictions under out_dir/probe-NAME)."""
    return {
        p.name: evaluate(predictor, p.root, p.samples, get_task(p.task),
                         Path(out_dir) / f"probe-{p.name}" if out_dir else None)
        for p in probes
    }


def points(value: float) -> float:
    return round(100.0 * value, 4)


@dataclass
class Verdict:
    deltas: dict[str, float]
    """Probe -> change from the base model, in points (negative: forgotten)."""
    violations: list[str] = field(default_factory=list)
    """One readable line per probe that fell more than max_drop points."""

    @property
    def passed(self) -> bool:
        return not self.violations

    def reason(self) -> str:
        return "; ".join(self.violations)


def gate(base: dict[str, float], now: dict[str, float], max_drop: float | None) -> Verdict:
    """Deltas of each probe from the base (points) and the probes whose drop exceeds `max_drop` points."""
    missing = set(base) ^ set(now)
    if missing:
        raise ValueError(f"probe scores do not cover the same probes: {sorted(missing)}")
    deltas = {name: round(points(now[name]) - points(base[name]), 4) for name in base}
    violations = []
    if max_drop is not None:
        for name, d in deltas.items():
            if -d > max_drop + 1e-9:
                violations.append(f"probe {name!r} fell {-d:.1f} points ({points(base[name]):.1f} -> "
                                  f"{points(now[name]):.1f}), more than forgetting.max_drop={max_drop:g}")
    return Verdict(deltas, violations)


def probe_table(run_dir: str | Path) -> str:
    """The forgetting guard of a run as a plain-text table (from metrics.jsonl, run_config.yaml and best/):

        step  val vqa_accuracy  general vqa_accuracy  general delta  gate (max drop 5 pts)
           0  0.052             0.800                 +0.0           base model
         200  0.611             0.500                 -30.0          rejected
         400  0.654             0.780                 -2.0           passed, best
    """
    v = RunView(run_dir)
    best, max_drop = v.best_step(), v.cfg.forgetting.max_drop
    header = ["step", f"val {v.metric}", *(f"{n} {h}" for n, m in v.probe_metric.items() for h in (m, "delta")),
              f"gate (max drop {max_drop:g} pts)" if max_drop is not None else "gate (off)"]
    rows = []
    for step in v.eval_steps():
        r = v.at(step)
        val = r.get(f"val/{v.metric}")
        cells = [str(step), f"{val:.3f}" if isinstance(val, float | int) else "-"]
        for n, m in v.probe_metric.items():
            score, delta = r.get(f"probe/{n}/{m}"), r.get(f"probe/{n}/delta")
            cells += [f"{score:.3f}" if score is not None else "-", f"{delta:+.1f}" if delta is not None else "-"]
        verdict = "base model" if step == 0 else "rejected" if step in v.rejected else \
            "passed" if max_drop is not None else "-"
        cells.append(verdict + (", best" if step == best else ""))
        rows.append(cells)
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(c.rjust(w) if i == 0 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                              strict=True))).rstrip()
             for cells in (header, *rows)]
    return "\n".join(lines)
