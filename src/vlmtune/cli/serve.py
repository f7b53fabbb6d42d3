"""`vlmtune serve`: the OpenAI-compatible server and web page (serve/), its limits from ServeCfg.

    vlmtune serve --model runs/my_run --port 8000 --api-key secret
"""

from __future__ import annotations

import argparse

from vlmtune.cli.flags import add_device_args


def cmd_serve(a) -> dict | None:
    import dataclasses

    from vlmtune.config import ServeCfg
    from vlmtune.serve import serve

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
    sv.add_argument("--k", dest="retrieve_k", type=int, default=None, metavar="N",
                    help="catalogue items per answer with --index (default 4; a request may ask 0 to 50)")
    sv.add_argument("--max-retrieve-k", type=int, default=None, metavar="N",
                    help="the largest k a request may ask (default 50)")
    sv.add_argument("--host", default=None, help="default 127.0.0.1")
    sv.add_argument("--port", type=int, default=None, help="default 8000")
    sv.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY (an empty key is refused)")
    sv.add_argument("--allowed-hosts", nargs="+", default=None, metavar="HOST",
                    help="Host names served ('*', '*.example.com'); default: --host and localhost (any IP too when "
                         "bound to 0.0.0.0)")
    sv.add_argument("--allowed-origins", nargs="+", default=None, metavar="ORIGIN",
                    help="web origins whose pages may call the API (CORS), e.g. https://app.example.com; default: "
                         "only the server's own page")
    sv.add_argument("--model-name", default=None, help="the id in /v1/models (default: the model directory name)")
    sv.add_argument("--max-batch-size", type=int, default=None, help="requests per generate call (default 8)")
    sv.add_argument("--max-wait-ms", type=float, default=None, help="how long a batch waits to fill (default 10)")
    sv.add_argument("--max-tokens", type=int, default=None, help="largest max_tokens a request may ask (512)")
    sv.add_argument("--max-prompt-tokens", type=int, default=None, help="prompt limit, image tokens included (4096)")
    sv.add_argument("--max-images", type=int, default=None, help="images per request (default 4)")
    sv.add_argument("--max-image-bytes", type=int, default=None)
    sv.add_argument("--max-image-pixels", type=int, default=None)
    sv.add_argument("--max-aspect-ratio", type=float, default=None, help="longest / shortest image side (default 50)")
    sv.add_argument("--max-resized-pixels", type=int, default=None,
                    help="image pixels once the model's processor resizes or pads it (default 40000000)")
    sv.add_argument("--max-body-bytes", type=int, default=None)
    sv.add_argument("--timeout-s", type=float, default=None, help="per-request limit (default 120)")
    sv.add_argument("--body-timeout-s", type=float, default=None,
                    help="a request body must arrive within this (default 30)")
    sv.add_argument("--allow-remote-images", action="store_true", default=None,
                    help="fetch http(s) image URLs (never from private or loopback addresses)")
    add_device_args(sv)
    sv.set_defaults(fn=cmd_serve)

