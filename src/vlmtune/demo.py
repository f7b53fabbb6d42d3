"""`vlmtune demo`: the whole loop offline on CPU, and the forgetting it prevents, in a few minutes.

    vlmtune demo                 # runs/demo/: general/, naive/, replay/, report.html (make demo runs this)
    vlmtune demo --quick         # a smaller version (used by the tests)

1. draws a *general* world (scenes of coloured shapes: colour, count, position questions) and a *domain* world
   (fashion figures: questions on the colours of the garments); every training question is followed by a caption
   turn (`synth.caption_turn`), which is what lets the from-scratch model learn both worlds in minutes;
2. pretrains the built-in model from scratch on the general world: this is "the base model";
3. fine-tunes the base on the domain twice: (a) domain data only, (b) domain plus replay of general data
   (`data.sources`), both with the general world's held-out VQA as a probe and the forgetting gate on;
4. evaluates both on the domain's test split and on the general probe, prints a table and writes one comparison
   report (runs/demo/report.html).

The two worlds share an answer vocabulary (colours), as real domains share words with what the model knew: fine-tuned
on fashion alone, the model starts to answer "how many shapes" with a colour.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vlmtune.config import RunCfg
from vlmtune.data.dataset import load_split, prepare_dataset
from vlmtune.eval.report import write_comparison_report
from vlmtune.eval.runner import evaluate
from vlmtune.eval.tasks import get_task
from vlmtune.infer import Predictor
from vlmtune.runs import checkpoints
from vlmtune.train.loop import train

DOMAIN_QUESTIONS = ["top_colour", "bottom_colour"]


@dataclass(frozen=True)
class Scale:
    general_n: int
    domain_n: int
    probe_n: int
    pretrain_steps: int
    finetune_steps: int
    batch: int
    eval_every: int
    builtin: dict


FULL = Scale(general_n=4000, domain_n=2000, probe_n=300, pretrain_steps=800, finetune_steps=800, batch=32,
             eval_every=100, builtin={"image_size": 48, "patch_size": 16})
QUICK = Scale(general_n=160, domain_n=120, probe_n=24, pretrain_steps=12, finetune_steps=6, batch=8,
              eval_every=3, builtin={"image_size": 32, "patch_size": 8, "vision_dim": 32, "vision_layers": 2,
                                     "text_dim": 32, "text_layers": 2})


def _common(s: Scale, out: Path, data: Path, seed: int) -> dict:
    size = s.builtin["image_size"]
    return {
        "out_dir": str(out),
        "model": {"family": "llava"},
        "train": {"seed": seed, "micro_batch_size": s.batch, "global_batch_size": s.batch, "lr": 1e-3,
                  "warmup_steps": max(1, s.finetune_steps // 10), "weight_decay": 0.1, "min_lr_ratio": 0.05,
                  "log_every": max(1, s.eval_every // 2), "eval_every": s.eval_every, "save_every": s.eval_every,
                  "trackers": []},
        "eval": {"task": "vqa", "metric": "vqa_accuracy", "batch_size": 100, "max_new_tokens": 8},
        "probes": [{"name": "general", "path": str(data / "general-probe"), "synth": _probe_synth(s, size),
                    "split": None, "task": "vqa", "metric": "vqa_accuracy"}],
    }


def _probe_synth(s: Scale, size: int) -> dict:
    return {"world": "shapes", "n": s.probe_n, "seed": 1, "size": size, "val": 0.0, "test": 0.0}


def configs(s: Scale, out: Path, seed: int = 0) -> dict[str, dict]:
    """The three run configs of the demo (plain dicts, as a user would write them in YAML). `seed` is the training
    seed (initial weights, sample order, dropout); the drawn data and the held-out sets are the same for every seed."""
    size = s.builtin["image_size"]
    data = out / "data"
    general = {"path": str(data / "general"), "synth": {"world": "shapes", "n": s.general_n, "seed": 0, "size": size,
                                                        "caption_turn": True}}
    domain = {"path": str(data / "fashion"), "synth": {"world": "fashion", "n": s.domain_n, "seed": 0, "size": size,
                                                       "questions": DOMAIN_QUESTIONS, "caption_turn": True}}
    base = out / "general" / "best"
    pre = _common(s, out, data, seed)
    pre.update(name="general", data={**general, "max_length": 128}, probes=[], model={
        "family": "llava", "path": "builtin", "builtin": s.builtin})
    pre["train"] = {**pre["train"], "max_steps": s.pretrain_steps, "warmup_steps": max(1, s.pretrain_steps // 10)}
    naive = _common(s, out, data, seed)
    naive.update(name="naive", data={**domain, "max_length": 128}, model={"family": "llava", "path": str(base)},
                 forgetting={"max_drop": 5.0})
    naive["train"] = {**naive["train"], "max_steps": s.finetune_steps}
    replay = _common(s, out, data, seed)
    replay.update(name="replay", model={"family": "llava", "path": str(base)}, forgetting={"max_drop": 5.0}, data={
        **domain, "max_length": 128,
        "sources": [{"name": "fashion", **domain, "split": "train", "weight": 1.0},
                    {"name": "general-replay", **general, "split": "train", "weight": 1.0}]})
    replay["train"] = {**replay["train"], "max_steps": s.finetune_steps}
    return {"general": pre, "naive": naive, "replay": replay}


def _final_probe(run_dir: Path) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    evals = [r for r in rows if "probe/general/vqa_accuracy" in r]
    return {"base": evals[0]["probe/general/vqa_accuracy"], "final": evals[-1]["probe/general/vqa_accuracy"],
            "delta": evals[-1]["probe/general/delta"]}


def run(out: str | Path = "runs/demo", quick: bool = False, seed: int = 0) -> dict:
    s = QUICK if quick else FULL
    out = Path(out)
    cfgs = configs(s, out, seed)
    tic = time.perf_counter()
    timings = {}
    results = {}
    for name in ("general", "naive", "replay"):
        print(f"\n== demo: {name} ==", file=sys.stderr)
        t0 = time.perf_counter()
        results[name] = train(RunCfg.from_dict(cfgs[name]))
        timings[name] = round(time.perf_counter() - t0, 1)

    # the domain test split, scored for the base model and for each fine-tune's final model
    d = cfgs["naive"]["data"]
    root = prepare_dataset(d["path"], None)
    test = load_split(root, "test", False)
    task = get_task("vqa")
    models = {"base": out / "general" / "best", "naive": checkpoints(out / "naive")[-1],
              "replay": checkpoints(out / "replay")[-1]}
    domain = {}
    for label, path in models.items():
        p = Predictor.from_path(path, batch_size=100, max_new_tokens=8, max_length=128)
        domain[label] = evaluate(p, root, test, task, out / "eval" / label)["vqa_accuracy"]

    summary = []
    for label in ("naive", "replay"):
        probe = _final_probe(out / label)
        final_step = cfgs[label]["train"]["max_steps"]
        gate = "REJECTED" if str(final_step) in results[label].get("rejected", {}) else "passed"
        summary.append({"fine-tune": label, "domain test VQA acc (base)": domain["base"],
                        "domain test VQA acc (tuned)": domain[label], "general probe (base)": probe["base"],
                        "general probe (tuned)": probe["final"], "probe delta (points)": probe["delta"],
                        "gate (max drop 5 pts)": gate})
    report = write_comparison_report(
        {"(a) naive: domain only": out / "naive", "(b) domain + general replay": out / "replay"},
        out / "report.html", title="vlmtune demo: domain gain and forgetting",
        summary=summary,
        intro=("The built-in model was pretrained on a general world (shapes: colours, counts, positions, captions), "
               "then fine-tuned on a fashion domain (garment colours) (a) on domain data only and (b) with general "
               "data replayed 1:1. The general world's held-out VQA set is the forgetting probe; the gate rejects "
               "checkpoints that drop more than 5 points below the base model."))
    total = round(time.perf_counter() - tic, 1)
    _print_table(summary, total)
    return {"report": str(report), "seed": seed, "seconds": total, "seconds_per_run": timings, "domain_test": domain,
            "summary": summary}


def _print_table(summary: list[dict], seconds: float) -> None:
    cols = ["fine-tune", "domain test VQA acc (tuned)", "general probe (base)", "general probe (tuned)",
            "probe delta (points)", "gate (max drop 5 pts)"]
    widths = [max(len(c), 8) for c in cols]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    print("\n" + line, file=sys.stderr)
    for r in summary:
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) and "delta" not in c else
                 f"{r[c]:+.1f}" if "delta" in c else str(r[c]) for c in cols]
        print("  ".join(x.ljust(w) for x, w in zip(cells, widths, strict=True)), file=sys.stderr)
    print(f"domain test accuracy of the base model: {summary[0]['domain test VQA acc (base)']:.3f}; "
          f"total {seconds:.0f} s", file=sys.stderr)
