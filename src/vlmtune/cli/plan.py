"""`vlmtune plan`: what a recipe will cost before training (train/plan).

    vlmtune plan --config configs/qwen2_5_vl/3b_lora_vqa.yaml --gpu-memory 24GB [--data DIR] [--gpu l40s] [--json]
"""

from __future__ import annotations

import argparse

from vlmtune.config import RunCfg
from vlmtune.train.plan import SHARDING_MODES, make_plan
from vlmtune.train.plan.lengths import MAX_SAMPLES
from vlmtune.train.plan.speed import GPU_PEAK, MFU


def cmd_plan(a, overrides: list[str]) -> dict | None:
    cfg = RunCfg.from_file(a.config, overrides)
    plan = make_plan(cfg, data=a.data, gpus=a.gpus, gpu_memory=a.gpu_memory, gpu=a.gpu, sharding=a.sharding,
                     max_samples=a.max_samples, mfu=a.mfu)
    if a.json:
        return plan.to_dict()
    print(plan.text())
    return None


def add_parsers(sub) -> None:
    p = sub.add_parser("plan", help="parameters, sequence lengths, peak memory, FLOPs and time of a recipe, before "
                                    "training (no weights are loaded)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example: vlmtune plan --config configs/qwen2_5_vl/3b_lora_vqa.yaml --gpu-memory 24GB\n"
                              "any config key can be overridden as --section.key VALUE (as in vlmtune train)")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--data", default=None, help="a dataset directory to measure (default: the recipe's data.path "
                                                "when it exists, else an assumed sample)")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--gpu-memory", default=None, help="memory per GPU, e.g. 24GB (default: the --gpu's)")
    p.add_argument("--gpu", default=None, help=f"GPU for the time estimate: {', '.join(sorted(GPU_PEAK))}")
    p.add_argument("--sharding", choices=SHARDING_MODES, default="none",
                   help="how the state is split over --gpus: DDP (none), ZeRO-2, ZeRO-3 or FSDP")
    p.add_argument("--max-samples", type=int, default=MAX_SAMPLES,
                   help="measure at most this many samples (a seeded random subset of a larger split)")
    p.add_argument("--mfu", type=float, default=MFU, help="model FLOPs utilisation assumed for the time")
    p.add_argument("--json", action="store_true", help="print the whole plan as JSON (one line)")
    p.set_defaults(fn=cmd_plan)
