"""Benchmark: what to train on when a question has ten human answers (`data.answer_targets`), on stand-in VizWiz.

    .venv/bin/python bench/vizwiz_targets.py                      # 3 targets x 2 seeds, 300 steps; a markdown table
    .venv/bin/python bench/vizwiz_targets.py --seeds 0 --steps 100 --n 1000

The data is `vlmtune data standin vizwiz` (drawn figures, VizWiz's JSON: 6-10 of the ten annotators give the true
garment or colour, the others a neighbouring value or "unanswerable"; one photo in six blurred and dark, answered
"unanswerable" by 7-10), imported with `vlmtune data import vizwiz`. Each variant trains the built-in model from
scratch with the job's recipe (configs/builtin/vizwiz_vqa.yaml: batch 32, lr 1e-3, cosine) in a fresh `vlmtune
train` process, for each seed, and is scored at the end on the val split with the official VQA accuracy:

    single     the most common answer (the importer's target, as before this option existed)
    sampled    one answer per draw, with probability agreement / 10
    weighted   every distinct answer, loss weighted by agreement / 10 (more rows per step: slower)

Reported per variant: val VQA accuracy (per seed and mean), exact match, the accuracy on answerable ("other")
questions, and the training time of the run (seconds, end-of-run evaluation included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("single", "sampled", "weighted")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--n", type=int, default=3000, help="stand-in questions (80%% train, 20%% val)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--out", default=None, help="work directory (default: a temporary one); finished runs in it are "
                                                "reused")
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="vizwiz-targets-"))
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    vlmtune = str(Path(sys.executable).with_name("vlmtune"))
    data = out / f"data-n{a.n}"
    if not (data / "manifest.jsonl").is_file():
        raw = out / f"raw-n{a.n}"
        if not raw.is_dir():
            subprocess.run([vlmtune, "data", "standin", "vizwiz", "--out", str(raw), "--n", str(a.n)], env=env,
                           check=True, stdout=subprocess.DEVNULL)
        subprocess.run([vlmtune, "data", "import", "vizwiz", str(raw), "--out", str(data)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    recipe = yaml.safe_load((REPO / "configs/builtin/vizwiz_vqa.yaml").read_text())
    results: dict[str, list[dict]] = {v: [] for v in a.variants}
    for seed in a.seeds:
        for variant in a.variants:
            name = f"{variant}-seed{seed}-steps{a.steps}"
            cfg = json.loads(json.dumps(recipe))
            cfg.update(name=name, out_dir=str(out / "runs"))
            cfg["data"].update(path=str(data), answer_targets=variant)
            cfg["train"].update(seed=seed, max_steps=a.steps, warmup_steps=max(1, a.steps // 8), eval_every=a.steps,
                                save_every=a.steps, progress=False, trackers=[])
            path = out / f"{name}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            done = out / f"{name}.json"
            if not done.is_file():
                print(f"$ vlmtune train --config {path}", file=sys.stderr, flush=True)
                tic = time.perf_counter()
                run = subprocess.run([vlmtune, "train", "--config", str(path)], env=env, capture_output=True,
                                     text=True)
                if run.returncode != 0:
                    sys.exit(run.stderr[-3000:])
                final = json.loads(run.stdout.strip().splitlines()[-1])
                done.write_text(json.dumps({**final, "seconds": time.perf_counter() - tic}))
            r = json.loads(done.read_text())
            results[variant].append({"vqa": r["vqa_accuracy"], "exact": r["exact_match"], "seconds": r["seconds"],
                                     "other": r["by_answer_type"]["other"]["vqa_accuracy"]})
            print(f"  {variant}, seed {seed}: {results[variant][-1]}", file=sys.stderr, flush=True)
    print(f"stand-in VizWiz n={a.n} (val {round(a.n * 0.2)}), built-in model from scratch, {a.steps} steps x 32, "
          f"seeds {a.seeds}")
    print("| answer_targets | val VQA accuracy (per seed) | mean | exact match (mean) | answerable VQA acc. (mean) | "
          "s per run |")
    print("|---|---|---:|---:|---:|---:|")
    for variant, rs in results.items():
        print(f"| {variant} | " + " / ".join(f"{r['vqa']:.4f}" for r in rs)
              + f" | {statistics.mean(r['vqa'] for r in rs):.4f} | {statistics.mean(r['exact'] for r in rs):.4f} | "
              + f"{statistics.mean(r['other'] for r in rs):.4f} | "
              + f"{statistics.median(r['seconds'] for r in rs):.0f} |")


if __name__ == "__main__":
    main()
