"""Benchmark: padded fraction of the positions per epoch, without and with length grouping, and with packing.

    .venv/bin/python bench/padding.py            # ~4 minutes on 2 CPU cores; prints a markdown table
    .venv/bin/python bench/padding.py --family qwen2_vl   # the same with the tiny Qwen2-VL (packing by M-RoPE rows)

Data: 384 training samples of the synthetic shapes world at 64x64, half of them a short question with a one-word
answer and half a long caption (`caption_fraction: 0.5`): the length mix that makes padding expensive. Model: the
built-in LLaVA-architecture model (64 image tokens per sample), or with `--family` that family's tiny random model
(`ModelFamily.tiny`, saved first; Qwen2-VL's: 16 image tokens per 64x64 image), LoRA r=8 (dropout 0). Global
batch 32 in 8 micro-batches of 4 (gradient accumulation 8), 36 steps = 3 epochs, seed 0. `padding` is read from the
run's metrics.jsonl, logged once per epoch (12 steps): padded positions / all positions of that epoch's micro-batches.

Modes, each a fresh `vlmtune train` process, `--repeats` times interleaved (samples/s: the median run):
* `group_by_length: false`: micro-batches in sampling order;
* `group_by_length: true` (the default): each step's 32 samples sorted by estimated length before they are cut into
  micro-batches (the step's samples, and so the loss, are unchanged);
* `packing: true`: each micro-batch's samples back to back in one row (no padding at all).
The per-step losses of the three modes must agree (asserted).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

N, GLOBAL, MICRO, EPOCHS = 384, 32, 4, 3
STEPS_PER_EPOCH = N // GLOBAL

BASE = {
    "model": {"family": "llava", "path": "builtin"},
    "lora": {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.0},
    "data": {"val_split": None, "max_length": 256},
    "train": {"seed": 0, "max_steps": EPOCHS * STEPS_PER_EPOCH, "micro_batch_size": MICRO, "global_batch_size": GLOBAL,
              "lr": 2e-3, "log_every": STEPS_PER_EPOCH, "eval_every": 0, "save_every": 0, "progress": False,
              "trackers": []},
    "report": False,
}
MODES = {"group_by_length: false": {"group_by_length": False},
         "group_by_length: true": {"group_by_length": True},
         "packing: true": {"packing": True}}


def main() -> None:
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    from vlmtune.data.dataset import synthesize

    work = Path(tempfile.mkdtemp(prefix="vlmtune-padding-bench-"))
    synthesize(work / "data", "shapes", N, seed=0, size=64, caption_fraction=0.5, val=0.0, test=0.0)
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--family", default=None, help="a family's tiny model instead of the built-in one")
    a = ap.parse_args()
    model = BASE["model"]
    if a.family:
        from vlmtune.models import get_family

        tiny = get_family(a.family).tiny()
        tiny.model.save_pretrained(work / "base")
        tiny.processor.save_pretrained(work / "base")
        model = {"family": a.family, "path": str(work / "base")}
    results: dict[str, list] = {}
    speed: dict[str, list[float]] = {mode: [] for mode in MODES}
    for rep in range(a.repeats):
        for k, (mode, train) in enumerate(MODES.items()):
            cfg = json.loads(json.dumps(BASE))
            cfg["model"] = model
            cfg["name"], cfg["out_dir"] = f"mode{k}-{rep}", str(work / "runs")
            cfg["data"]["path"] = str(work / "data")
            cfg["train"].update(train)
            path = work / f"{cfg['name']}.json"
            path.write_text(json.dumps(cfg))
            subprocess.run([sys.executable, "-m", "vlmtune.cli", "train", "--config", str(path)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rows = [json.loads(x) for x in (work / "runs" / cfg["name"] / "metrics.jsonl").read_text().splitlines()]
            results[mode] = [r for r in rows if "padding" in r]
            seconds = sum(GLOBAL * STEPS_PER_EPOCH / r["samples_per_s"] for r in results[mode])
            speed[mode].append(GLOBAL * STEPS_PER_EPOCH * EPOCHS / seconds)
            print(f"{mode} run {rep}: {speed[mode][-1]:.1f} samples/s", file=sys.stderr)
    first = [r["loss"] for r in results["group_by_length: false"]]
    for rows in results.values():
        for x, y in zip(first, [r["loss"] for r in rows], strict=True):
            assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (x, y)
    print("| mode | " + " | ".join(f"padding, epoch {e + 1}" for e in range(EPOCHS)) + " | samples/s | final loss |")
    print("|---|" + "---:|" * (EPOCHS + 2))
    for mode, rows in results.items():
        pads = " | ".join(f"{100 * r['padding']:.1f}%" for r in rows)
        sps = statistics.median(speed[mode])
        print(f"| {mode} | {pads} | {sps:.1f} | {rows[-1]['loss']:.4f} |")
    print("\nper-epoch losses equal across the three modes (1e-4)")


if __name__ == "__main__":
    main()
