"""The forgetting guard: probe sets scored for the base model and every checkpoint; deltas; the gate.

    probes = load_probes(cfg.probes, skip_bad=False)
    base = score(predictor, probes, run_dir / "predictions" / "step-0")    # {"general": 0.874}
    ...
    now = score(predictor, probes, run_dir / "predictions" / f"step-{step}")
    verdict = gate(base, now, max_drop=5.0)        # Verdict(deltas={"general": -12.3}, violations=[...])

A probe is any dataset with a task and a metric (general VQA, captions, whatever the model could do before). Deltas
are in points, 100 x the metric (VQA accuracy 0.874 is 87.4 points), the unit papers report. The gate passes a
checkpoint when no probe fell more than `max_drop` points below the base model; gains never fail it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlmtune.data.sample import Sample


@dataclass
class Probe:
    name: str
    root: Path
    samples: list[Sample]
    task: str
    metric: str


def load_probes(cfgs, skip_bad: bool = False, rejected_path: Path | None = None) -> list[Probe]:
    """ProbeCfgs -> Probes (synthetic probe sets are generated on first use)."""
    from vlmtune.data.dataset import load_split, prepare_dataset
    from vlmtune.eval.tasks import get_task

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
    from vlmtune.eval.runner import evaluate
    from vlmtune.eval.tasks import get_task

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
