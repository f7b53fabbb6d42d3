"""Benchmark: what LoRA should do with the projector. Frozen (the frozen-vision cache stays on), trained in full
(peft `modules_to_save`), or adapted with LoRA too; all three with LoRA on the language model.

    .venv/bin/python bench/projector_default.py                  # ~15 minutes on 2 CPU cores; a markdown table
    .venv/bin/python bench/projector_default.py --seeds 0 --steps 100

The base is the demo's pretrained model (`vlmtune demo`'s "general" run: the built-in LLaVA-architecture model
taught shapes, colours and captions; pretrained here first when `--base` is absent). Each variant fine-tunes it on
the demo's fashion domain (2,000 pictures, top and bottom colour questions, a caption turn) with the demo's
settings (batch 32, lr 1e-3, warm-up, cosine) and LoRA r=8 on the language model, in a fresh `vlmtune train`
process, for each seed. Reported: the domain's val accuracy at the end, the general probe's drop (forgetting), the
trainable parameters and the training samples/s from the run's own log.
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

import yaml

VARIANTS = {
    "frozen (cache on)": {"train": {"freeze_projector": True}},
    "full (modules_to_save)": {"train": {"freeze_projector": False}},
    # the family's own language-model targets, plus the projector's two linears
    "LoRA on projector": {"train": {"freeze_projector": True}, "lora": {"targets": "+projector"}},
}
PROJECTOR_LINEARS = r".*multi_modal_projector\.linear_[12]"


def _merge(into: dict, extra: dict) -> dict:
    for k, v in extra.items():
        into[k] = _merge(dict(into.get(k) or {}), v) if isinstance(v, dict) else v
    return into


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]


def main() -> None:
    from vlmtune.demo import FULL, configs
    from vlmtune.models import FAMILIES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--base", default="runs/demo/general/best", help="the demo's pretrained model")
    ap.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="projector-"))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    vlmtune = str(Path(sys.executable).with_name("vlmtune"))
    cfgs = configs(FULL, Path("runs/demo"))
    base = Path(a.base)
    if not (base / "config.json").is_file():
        pre = dict(cfgs["general"], out_dir=str(base.parents[1]))
        (out / "general.yaml").parent.mkdir(parents=True, exist_ok=True)
        (out / "general.yaml").write_text(yaml.safe_dump(pre))
        subprocess.run([vlmtune, "train", "--config", str(out / "general.yaml")], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for seed in a.seeds:
        for variant, extra in VARIANTS.items():
            cfg = _merge(json.loads(json.dumps(cfgs["naive"])), {
                "name": f"{variant.split()[0].lower()}-seed{seed}", "out_dir": str(out),
                "model": {"path": str(base)}, "forgetting": {"max_drop": 100.0},
                "lora": {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.0},
                "train": {"seed": seed, "max_steps": a.steps, "warmup_steps": max(1, a.steps // 10),
                          "eval_every": a.steps, "save_every": a.steps, "log_every": 10}})
            cfg = _merge(cfg, extra)
            if cfg["lora"].get("targets") == "+projector":  # one regex (peft reads a list as name suffixes)
                cfg["lora"]["targets"] = ["|".join(f"(?:{t})" for t in (*FAMILIES["llava"].lora_targets,
                                                                          PROJECTOR_LINEARS))]
            path = out / f"{cfg['name']}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            log = out / f"{cfg['name']}.log"
            if not log.is_file():  # a finished run of an earlier invocation with the same --out is reused
                print(f"$ vlmtune train --config {path}", file=sys.stderr, flush=True)
                done = subprocess.run([vlmtune, "train", "--config", str(path)], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
                if done.returncode != 0:
                    sys.exit(done.stderr[-3000:])
                log.write_text(done.stderr)
            stderr = log.read_text().splitlines()
            trainable = next(x for x in stderr if x.startswith("trainable "))
            cache = next(x for x in stderr if x.startswith("vision cache: "))
            rows = _rows(out / cfg["name"])
            final = [r for r in rows if "val/vqa_accuracy" in r][-1]
            speed = [r["samples_per_s"] for r in rows if "samples_per_s" in r]
            results[variant].append({"val": final["val/vqa_accuracy"], "probe": final["probe/general/delta"],
                                     "samples_per_s": statistics.median(speed), "trainable": trainable.split(":")[0],
                                     "cache": cache.split(",")[0].removeprefix("vision cache: ").split(" (")[0]})
            print(f"  {variant}, seed {seed}: {results[variant][-1]}", file=sys.stderr, flush=True)
    print(f"base {base}, {a.steps} steps, seeds {a.seeds}")
    print("| projector | trainable | vision cache | val accuracy (per seed) | probe delta, points | samples/s |")
    print("|---|---|---|---|---|---:|")
    for variant, rs in results.items():
        print(f"| {variant} | {rs[0]['trainable'].removeprefix('trainable ')} | {rs[0]['cache']} | "
              + " / ".join(f"{r['val']:.3f}" for r in rs) + " | "
              + " / ".join(f"{r['probe']:+.1f}" for r in rs) + " | "
              + f"{statistics.median(r['samples_per_s'] for r in rs):.0f} |")


if __name__ == "__main__":
    main()
