"""Benchmark: the spread of `vlmtune demo` over training seeds (and CPU kernel paths), not one lucky run.

    .venv/bin/python bench/demo_spread.py --seeds 0 1 2          # ~8 minutes a seed on 2 CPU cores; a markdown table

Each seed is a whole `vlmtune demo --seed S` (pretraining, the naive and the replay fine-tune, the evaluations) in
runs/demo-seed-S. The drawn worlds and held-out sets are the same for every seed; the seed changes the initial
weights and the sample order. `--env KEY=VALUE` runs the demos with that environment, e.g. the AVX2 kernels of a
CPU without AVX-512 (`--env ATEN_CPU_CAPABILITY=avx2 --env ONEDNN_MAX_CPU_ISA=AVX2 --env MKL_ENABLE_INSTRUCTIONS=AVX2`),
to see how much a result moves with the machine's float rounding.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

COLUMNS = [("domain (base)", lambda r: r["domain_test"]["base"]),
           ("domain (naive)", lambda r: r["domain_test"]["naive"]),
           ("domain (replay)", lambda r: r["domain_test"]["replay"]),
           ("probe (base)", lambda r: r["summary"][0]["general probe (base)"]),
           ("probe delta naive", lambda r: r["summary"][0]["probe delta (points)"]),
           ("probe delta replay", lambda r: r["summary"][1]["probe delta (points)"]),
           ("seconds", lambda r: r["seconds"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the demo processes")
    ap.add_argument("--out", default="runs")
    a = ap.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", **dict(kv.split("=", 1) for kv in a.env))
    vlmtune = str(Path(sys.executable).with_name("vlmtune"))
    rows = []
    for seed in a.seeds:
        cmd = [vlmtune, "demo", "--seed", str(seed), "--out", f"{a.out}/demo-seed-{seed}"]
        print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True)
        rows.append((seed, json.loads(done.stdout.strip().splitlines()[-1])))
        print(f"seed {seed}: " + ", ".join(f"{n} {f(rows[-1][1]):.3f}" for n, f in COLUMNS), file=sys.stderr,
              flush=True)
    print(f"environment: {' '.join(a.env) or '(default)'}")
    print("| seed | " + " | ".join(n for n, _ in COLUMNS) + " |")
    print("| --- " * (len(COLUMNS) + 1) + "|")
    for seed, r in rows:
        print(f"| {seed} | " + " | ".join(f"{f(r):.3f}" if "delta" not in n else f"{f(r):+.1f}" for n, f in COLUMNS)
              + " |")
    for label, agg in (("mean", statistics.fmean), ("min", min), ("max", max)):
        print(f"| {label} | " + " | ".join(f"{agg([f(r) for _, r in rows]):.3f}" if "delta" not in n else
                                          f"{agg([f(r) for _, r in rows]):+.1f}" for n, f in COLUMNS) + " |")


if __name__ == "__main__":
    main()
