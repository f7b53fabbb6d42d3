"""`vlmtune models` (the families) and `vlmtune compose` (a new LLaVA model from a vision tower and an LM).

    vlmtune models --markdown
"""

from __future__ import annotations

import argparse
import sys

from vlmtune.models import FAMILIES, support_table
from vlmtune.models.compose import compose


def cmd_compose(a) -> dict:
    return compose(a.vision, a.lm, a.out, projector=a.projector, seed=a.seed)


def cmd_models(a) -> dict | None:
    if a.markdown:
        print(support_table(), end="")
        return None
    rows = {}
    for name, f in FAMILIES.items():
        rows[name] = {"description": f.description, "tasks": list(f.tasks), "lora_targets": list(f.lora_targets),
                      "freeze_groups": sorted(f.freeze_groups), "text_only": f.text_only,
                      "multi_image": f.multi_image}
        print(f"{name:12s} {f.description}", file=sys.stderr)
    return {"families": rows, "builtin": "model.path: builtin (llava family)"}


def add_parsers(sub) -> None:
    ex = argparse.RawDescriptionHelpFormatter
    co = sub.add_parser("compose", help="join a CLIP/SigLIP vision tower and a causal LM into a LLaVA model",
                        formatter_class=ex,
                        epilog="example: vlmtune compose --vision openai/clip-vit-large-patch14-336 "
                               "--lm lmsys/vicuna-7b-v1.5 --projector mlp2x --out models/clip-vicuna")
    co.add_argument("--vision", required=True, help="CLIP or SigLIP checkpoint (hub id or directory)")
    co.add_argument("--lm", required=True, help="causal language model checkpoint (hub id or directory)")
    co.add_argument("--projector", choices=["linear", "mlp2x"], default="mlp2x")
    co.add_argument("--out", required=True, help="new directory to write (never overwritten)")
    co.add_argument("--seed", type=int, default=0, help="seed of the new projector's initialisation")
    co.set_defaults(fn=cmd_compose)

    m = sub.add_parser("models", help="list model families")
    m.add_argument("--markdown", action="store_true", help="print the support table of docs/models.md")
    m.set_defaults(fn=cmd_models)
