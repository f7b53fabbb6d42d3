"""`vlmtune serve`: the OpenAI-compatible server and web page (serve/), its limits from ServeCfg.

    vlmtune serve --model runs/my_run --port 8000 --api-key secret
"""

from __future__ import annotations

import argparse
import dataclasses

from vlmtune.cli.flags import add_config_flags, add_device_args
from vlmtune.config import ServeCfg


def cmd_serve(a) -> dict | None:
    from vlmtune.serve import serve  # lazy: fastapi is optional (serve extra)

    fields = {f.name for f in dataclasses.fields(ServeCfg)}
    cfg = ServeCfg(**{k: v for k, v in vars(a).items() if k in fields and v is not None})
    serve(a.model, cfg, a.index)
    return None


def add_parsers(sub) -> None:
    ex = argparse.RawDescriptionHelpFormatter
    sv = sub.add_parser("serve", help="serve a model: OpenAI-compatible API + web page", formatter_class=ex,
                        epilog="example: vlmtune serve --model runs/my_run --port 8000 --api-key secret\n"
                               "then: open http://127.0.0.1:8000/ or use any OpenAI client with base_url "
                               "http://127.0.0.1:8000/v1\n"
                               "a shop assistant (answers + catalogue items with links): vlmtune serve --model "
                               "runs/shop-chat --index indexes/shop   (see docs/fashion-retrieval.md)")
    sv.add_argument("--model", required=True, help="a run (its best checkpoint), checkpoint, adapter or model dir")
    sv.add_argument("--index", default=None, metavar="DIR",
                    help="a catalogue index (vlmtune retrieve index): chat answers carry its top-k items and links, "
                         "and POST /v1/retrieve searches it")
    # every ServeCfg field but the placement pair is a flag; unset: a flag not given leaves the field's default
    add_config_flags(sv, ServeCfg, skip=("device", "dtype"), unset=True, flags={"retrieve_k": "--k"},
                     extra={"retrieve_k": {"metavar": "N"}, "max_retrieve_k": {"metavar": "N"},
                            "allowed_hosts": {"metavar": "HOST"}, "allowed_origins": {"metavar": "ORIGIN"},
                            "api_key": {"note": "An empty key is refused."},
                            "max_new_tokens_default": {"note": "The max_tokens of a request that gives none (at most "
                                                               "--max-tokens)."}})
    add_device_args(sv)
    sv.set_defaults(fn=cmd_serve)

