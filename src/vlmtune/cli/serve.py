"""`vlmtune serve`: the OpenAI-compatible server and web page (serve/), its limits from ServeCfg; or, with
`--engine vllm`, vLLM's server on the run's export (export.for_vllm, serve/vllm.py).

    vlmtune serve --model runs/my_run --port 8000 --api-key secret
    vlmtune serve --engine vllm --model runs/my_run --port 8000 [--tensor-parallel 2] [--lora]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from vlmtune.cli.flags import add_config_flags, add_device_args
from vlmtune.config import ServeCfg
from vlmtune.export import for_vllm
from vlmtune.serve.vllm import VllmModel, find_vllm_python, run_server, vllm_command


def cmd_serve(a) -> dict | None:
    fields = {f.name for f in dataclasses.fields(ServeCfg)}
    cfg = ServeCfg(**{k: v for k, v in vars(a).items() if k in fields and v is not None})
    if a.engine == "vllm":
        return _serve_vllm(a, cfg)
    if a.lora or a.tensor_parallel != 1:
        raise ValueError("--lora and --tensor-parallel are options of --engine vllm")
    from vlmtune.serve import serve  # lazy: fastapi is optional (serve extra)

    serve(a.model, cfg, a.index)
    return None


def _serve_vllm(a, cfg: ServeCfg) -> dict:
    """Export the run for vLLM (export.for_vllm) and run vLLM's server on it in vLLM's environment until stopped."""
    if a.index:
        raise ValueError("--index (catalogue items in the answers) is served by the builtin engine only")
    if a.tensor_parallel < 1:
        raise ValueError(f"--tensor-parallel must be >= 1, got {a.tensor_parallel}")
    python = find_vllm_python(a.vllm_python)  # before any export: say at once when vLLM is not installed
    info = for_vllm(a.model, lora=a.lora)
    if info["family"] == "paligemma":
        print("vlmtune serve: warning: vLLM's CPU attention runs PaliGemma's prompt causally, not as the prefix LM it "
              "was trained as: its answers differ from `vlmtune eval`'s there (docs/vllm-cpu.md); on a GPU vLLM's "
              "attention backends attend both ways", file=sys.stderr)
    model = VllmModel(path=info["path"], name=cfg.model_name or info["name"], chat_template=info["chat_template"],
                      adapter=info["adapter"], lora_rank=info["lora_rank"], dtype=a.dtype or info["dtype"],
                      max_model_len=info["max_length"] + cfg.max_tokens if info["max_length"] else None)
    argv = vllm_command(python, model, cfg.host, cfg.port, a.tensor_parallel, cfg.max_images, cfg.api_key,
                        a.vllm_arg)
    url = f"http://{cfg.host}:{cfg.port}"
    try:
        status = run_server(argv, url)
    except RuntimeError as e:  # vLLM did not start: its own words, no traceback of ours
        print(f"vlmtune serve: error: {e}", file=sys.stderr)
        return {"ok": False, "engine": "vllm", "url": url, "model": model.path}
    return {"ok": status == 0, "engine": "vllm", "url": url, "model": model.path, "status": status}


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
    sv.add_argument("--engine", choices=["builtin", "vllm"], default="builtin",
                    help="builtin (default): vlmtune's own server and web page, one process; vllm: vLLM's OpenAI "
                         "server on the run's export (paged KV cache, continuous batching, tensor parallelism; "
                         "`make vllm` first; docs/serve.md)")
    sv.add_argument("--tensor-parallel", type=int, default=1, metavar="N", help="vllm: GPUs per replica (default 1)")
    sv.add_argument("--lora", action="store_true",
                    help="vllm: serve a LoRA run as its base + the adapter (default: the adapter merged)")
    sv.add_argument("--vllm-python", default=None, metavar="PATH",
                    help="vllm: the Python of vLLM's environment (default: .venv-vllm/bin/python, "
                         "$VLMTUNE_VLLM_PYTHON)")
    sv.add_argument("--vllm-arg", action="append", default=[], metavar="ARG",
                    help="vllm: one more argument for vLLM's server, repeatable (--vllm-arg=--gpu-memory-utilization "
                         "--vllm-arg=0.8)")
    sv.set_defaults(fn=cmd_serve)

