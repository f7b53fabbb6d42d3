"""Benchmark: LoRA fine-tuning over 3 epochs with and without the frozen-vision cache.

    .venv/bin/python bench/vision_cache.py            # ~4 minutes on 2 CPU cores; prints a markdown table

Same model, data, seed, batch and steps; one run with `train.vision_cache off`, one with `auto`, each in a fresh
process, 3 times, alternating; the median is reported. The model is the built-in LLaVA-architecture model at its
default size (CLIP 4 x 128 on 64x64 images with 8 px patches: 65 vision positions; Llama 2 x 128), where the vision
tower is more than a third of the forward FLOPs (printed). LoRA r=8 on the language model, vision tower and
projector frozen (`freeze_projector: true`, which the cache needs), 320 training images, batch 16, 60 steps = 3
epochs. The training time is read from the run's own log (samples/s per 5 steps), so model building, data
generation and the final evaluation are not counted. The per-step losses of the two runs must agree (asserted).
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

CONFIG = {
    "model": {"family": "llava", "path": "builtin"},
    "lora": {"enabled": True, "r": 8, "alpha": 16},
    "data": {"synth": {"world": "fashion", "n": 400, "seed": 0, "size": 64}, "val_split": None, "max_length": 256},
    "train": {"seed": 0, "max_steps": 60, "micro_batch_size": 16, "global_batch_size": 16, "lr": 2e-3,
              "freeze_projector": True, "log_every": 5, "eval_every": 0, "save_every": 0, "progress": False,
              "trackers": []},
    "report": False,
}


def flops_split() -> str:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vlmtune.config import BuiltinCfg
    from vlmtune.models.builtin import build_builtin

    loaded = build_builtin(BuiltinCfg())
    model = loaded.model.eval()
    pixels = torch.zeros(1, 3, 64, 64)
    ids = torch.full((1, 85), 5)
    with FlopCounterMode(display=False) as vision:
        model.model.get_image_features(pixel_values=pixels)
    with FlopCounterMode(display=False) as full:
        out = model.model.get_image_features(pixel_values=pixels)
        n = out.pooler_output[0].shape[0]
        ids[0, :n] = model.config.image_token_id
        model(input_ids=ids, pixel_values=pixels, logits_to_keep=1)
    v, f = vision.get_total_flops(), full.get_total_flops() - vision.get_total_flops()
    return (f"vision tower + projector {v / 1e6:.1f} MFLOP of {f / 1e6:.1f} MFLOP per sample forward "
            f"({100 * v / f:.0f}%)")


def one_run(work: Path, mode: str, k: int) -> tuple[float, list[float]]:
    cfg = json.loads(json.dumps(CONFIG))
    cfg["name"], cfg["out_dir"] = f"{mode}-{k}", str(work / "runs")
    cfg["data"]["path"] = str(work / "data")
    cfg["train"]["vision_cache"] = mode
    path = work / f"{mode}-{k}.json"
    path.write_text(json.dumps(cfg))
    subprocess.run([sys.executable, "-m", "vlmtune.cli", "train", "--config", str(path)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(x) for x in (work / "runs" / cfg["name"] / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "samples_per_s" in r]
    seconds = sum(16 * 5 / r["samples_per_s"] for r in rows)
    return 60 * 16 / seconds, [r["loss"] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    work = Path(tempfile.mkdtemp(prefix="vlmtune-cache-bench-"))
    print(flops_split())
    speed: dict[str, list[float]] = {"off": [], "auto": []}
    losses = {}
    for k in range(a.repeats):
        for mode in ("off", "auto"):
            sps, loss = one_run(work, mode, k)
            speed[mode].append(sps)
            losses[mode] = loss
            print(f"run {k} {mode}: {sps:.1f} samples/s", file=sys.stderr)
    for x, y in zip(losses["off"], losses["auto"], strict=True):
        assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (x, y)
    off, on = statistics.median(speed["off"]), statistics.median(speed["auto"])
    print(f"\n| vision cache | samples/s over 3 epochs (median of {a.repeats}) | final loss |\n| --- | --- | --- |")
    print(f"| off | {off:.1f} | {losses['off'][-1]:.4f} |")
    print(f"| auto (on) | {on:.1f} | {losses['auto'][-1]:.4f} |")
    print(f"\nspeed-up with the cache: {on / off:.2f}x; per-step losses equal to 1e-4")


if __name__ == "__main__":
    main()
