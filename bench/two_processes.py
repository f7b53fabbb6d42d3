"""Two CPU processes (torchrun, gloo) vs one: the same losses, weights and evaluation.

    .venv/bin/python bench/two_processes.py        # ~2 minutes on 2 CPU cores; prints a markdown table

The built-in LLaVA-architecture model, fully fine-tuned (lr 1e-3, 20 warm-up steps), on 600 synthetic fashion
samples (480 train / 60 val), global batch 16 = micro-batch 4 x 4 accumulation steps in one process = micro-batch
4 x 2 steps x 2 processes, 150 steps, eval (generation, VQA accuracy on the 60 val questions) at steps 0, 75 and
150, seed 0. One run is started as `python -m vlmtune.cli train`, the other as
`torchrun --standalone --nproc_per_node 2 -m vlmtune.cli train`, both with OMP_NUM_THREADS=1.
Reported: the largest difference of the per-step losses and gradient norms, of the final weights, the val metrics
of both, and whether their prediction files are byte-identical. Wall time is given for completeness only: with one
thread per process it is not a speed comparison.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = {
    "model": {"family": "llava", "path": "builtin"},
    "lora": {"enabled": False},
    "data": {"synth": {"world": "fashion", "n": 600, "seed": 0, "size": 64}, "max_length": 256},
    "train": {"seed": 0, "max_steps": 150, "micro_batch_size": 4, "global_batch_size": 16, "lr": 1e-3,
              "warmup_steps": 20, "log_every": 1, "eval_every": 75, "save_every": 0, "progress": False,
              "trackers": []},
    "eval": {"batch_size": 8, "max_new_tokens": 4},
    "report": False,
}


def main() -> None:
    from safetensors.torch import load_file

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    work = Path(tempfile.mkdtemp(prefix="vlmtune-2proc-bench-"))
    launchers = {"1 process": [sys.executable],
                 "2 processes (torchrun, gloo)": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc_per_node", "2"]}
    runs = {}
    for k, (name, launcher) in enumerate(launchers.items()):
        cfg = json.loads(json.dumps(CONFIG))
        cfg["name"], cfg["out_dir"] = f"run{k}", str(work / "runs")
        cfg["data"]["path"] = str(work / "data")
        path = work / f"run{k}.json"
        path.write_text(json.dumps(cfg))
        t0 = time.perf_counter()
        subprocess.run([*launcher, "-m", "vlmtune.cli", "train", "--config", str(path)], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        run_dir = work / "runs" / cfg["name"]
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        runs[name] = {"wall": wall, "steps": [r for r in rows if "loss" in r],
                      "val": [r for r in rows if "val/vqa_accuracy" in r],
                      "weights": load_file(run_dir / "checkpoints" / "step-150" / "model.safetensors"),
                      "predictions": [(run_dir / "predictions" / f"step-{s}" / "predictions.jsonl").read_bytes()
                                      for s in (0, 75, 150)]}
    one, two = runs.values()
    loss = max(abs(a["loss"] - b["loss"]) for a, b in zip(one["steps"], two["steps"], strict=True))
    norm = max(abs(a["grad_norm"] - b["grad_norm"]) for a, b in zip(one["steps"], two["steps"], strict=True))
    weights = max((one["weights"][k] - two["weights"][k]).abs().max().item() for k in one["weights"])
    print("| run | steps | final loss | val VQA accuracy at steps 0 / 75 / 150 | wall (s) |\n|---|---:|---:|---|---:|")
    for name, r in runs.items():
        accs = " / ".join(f"{v['val/vqa_accuracy']:.4f}" for v in r["val"])
        print(f"| {name} | {len(r['steps'])} | {r['steps'][-1]['loss']:.6f} | {accs} | {r['wall']:.0f} |")
    same_val = [v["val/vqa_accuracy"] for v in one["val"]] == [v["val/vqa_accuracy"] for v in two["val"]]
    print(f"\nlargest difference over the 150 steps: loss {loss:.1e}, grad norm {norm:.1e}; final weights "
          f"{weights:.1e}; val metrics identical: {same_val}; prediction files byte-identical: "
          f"{one['predictions'] == two['predictions']}")


if __name__ == "__main__":
    main()
