"""Load test of `vlmtune serve` on loopback: dynamic batching vs batch size 1, and vLLM beside them.

    .venv/bin/python bench/serve_load.py            # ~3 minutes on 2 CPU cores; prints a markdown table
    .venv/bin/python bench/serve_load.py --engines builtin,vllm     # + `vlmtune serve --engine vllm` (make vllm)

The built-in model (LLaVA architecture, CLIP 4x128 on 64x64 images + Llama 2x128, random weights, so every answer
runs to max_tokens=16: the same work per request) is saved once and served twice from one script, by uvicorn on
127.0.0.1: once with max_batch_size 1 (every request is its own generate call) and once with dynamic batching
(max_batch_size 16, max_wait_ms 10). N concurrent clients (httpx, asyncio) send a fixed number of requests, each
with its own 64x64 PNG as a data: URI. Reported: throughput, p50 / p95 latency, errors (must be 0), the mean batch.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path


def _image_uri(k: int) -> str:
    from PIL import Image

    img = Image.new("RGB", (64, 64), ((k * 37) % 256, (k * 91) % 256, (k * 53) % 256))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


async def _load(url: str, clients: int, requests: int, max_tokens: int, extra: dict | None = None):
    import httpx

    bodies = [{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _image_uri(k)}},
                                                         {"type": "text", "text": "What colour is the top?"}]}],
               "max_tokens": max_tokens, **(extra or {})} for k in range(requests)]
    latencies, errors, tokens = [], 0, 0
    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)

    async def client(http):
        nonlocal errors, tokens
        while not queue.empty():
            body = queue.get_nowait()
            t = time.perf_counter()
            r = await http.post(url + "/v1/chat/completions", json=body)
            latencies.append(time.perf_counter() - t)
            if r.status_code != 200:
                errors += 1
            else:
                tokens += r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return wall, latencies, errors, tokens


def serve_and_load(model_dir: Path, batch: int, clients: int, requests: int, max_tokens: int) -> dict:
    import socket

    import uvicorn

    from vlmtune.config import ServeCfg
    from vlmtune.serve import build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ServeCfg(max_batch_size=batch, max_wait_ms=10, max_tokens=max_tokens, timeout_s=600)
    app = build_app(model_dir, cfg, background=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    asyncio.run(_load(url, clients, 8, max_tokens))  # warm-up
    batcher = app.state.vlmtune.batcher
    n0 = len(batcher.batch_sizes)
    wall, lat, errors, tokens = asyncio.run(_load(url, clients, requests, max_tokens))
    sizes = batcher.batch_sizes[n0:]
    server.should_exit = True
    thread.join(timeout=10)
    return {"batch": batch, **_summary(requests, wall, lat, errors, tokens),
            "mean_batch": sum(sizes) / max(1, len(sizes))}


def _summary(requests: int, wall: float, latencies: list, errors: int, tokens: int) -> dict:
    """Throughput and latency of one load run (`_load`'s result)."""
    lat = sorted(latencies)
    return {"wall": wall, "rps": requests / wall, "tps": tokens / wall, "p50": statistics.median(lat),
            "p95": lat[int(0.95 * (len(lat) - 1))], "errors": errors}


def vllm_and_load(model_dir: Path, clients: int, requests: int, max_tokens: int, vllm_python: str | None) -> dict:
    """The same model and requests through `vlmtune serve --engine vllm` (vLLM's server in .venv-vllm, its own
    process; the export is made first, outside the timing). Every answer runs to max_tokens (`ignore_eos`): the
    same work per request as the random built-in model does on the builtin engine."""
    import signal
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "vlmtune.cli", "serve", "--engine", "vllm", "--model", str(model_dir), "--port",
            str(port), "--max-tokens", str(max_tokens), "--model-name", "bench",
            *(["--vllm-python", vllm_python] if vllm_python else [])]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for line in proc.stderr:
            if "serving at" in line:
                break
        else:
            raise RuntimeError(f"vlmtune serve --engine vllm exited ({proc.wait()})")
        start_s = time.perf_counter() - t0
        extra = {"model": "bench", "ignore_eos": True, "temperature": 0}
        asyncio.run(_load(url, clients, 8, max_tokens, extra))  # warm-up
        wall, lat, errors, tokens = asyncio.run(_load(url, clients, requests, max_tokens, extra))
        version = httpx.get(url + "/version").json().get("version")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    return {"engine": f"vllm {version}", **_summary(requests, wall, lat, errors, tokens), "mean_batch": None,
            "start_s": start_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--engines", default="builtin", help="builtin, vllm or builtin,vllm (vllm: `make vllm` first)")
    ap.add_argument("--vllm-python", default=None, help="the Python of vLLM's environment (default .venv-vllm)")
    a = ap.parse_args()
    engines = a.engines.split(",")
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    from vlmtune.config import BuiltinCfg
    from vlmtune.models.builtin import build_builtin

    model_dir = Path(tempfile.mkdtemp(prefix="vlmtune-serve-bench-")) / "builtin"
    loaded = build_builtin(BuiltinCfg(), seed=0)
    loaded.model.save_pretrained(model_dir)
    loaded.processor.save_pretrained(model_dir)
    rows = []
    if "builtin" in engines:
        rows += [serve_and_load(model_dir, b, a.clients, a.requests, a.max_tokens) for b in (1, 16)]
    if "vllm" in engines:
        rows.append(vllm_and_load(model_dir, a.clients, a.requests, a.max_tokens, a.vllm_python))
    print(f"{a.clients} concurrent clients, {a.requests} requests, max_tokens {a.max_tokens}, one 64x64 PNG each\n")
    print("| server | requests/s | tokens/s | p50 latency (s) | p95 latency (s) | errors | mean batch |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "engine" in r:
            name = f"{r['engine']} (`serve --engine vllm`; started in {r['start_s']:.0f} s)"
        elif r["batch"] == 1:
            name = "builtin, max_batch_size 1"
        else:
            name = f"builtin, dynamic batching (max_batch_size {r['batch']}, 10 ms)"
        batch = "-" if r["mean_batch"] is None else f"{r['mean_batch']:.1f}"
        print(f"| {name} | {r['rps']:.1f} | {r['tps']:.0f} | {r['p50']:.2f} | {r['p95']:.2f} | {r['errors']} "
              f"| {batch} |")
    if "builtin" in engines:
        print(f"\nthroughput ratio (batching / batch 1): {rows[1]['rps'] / rows[0]['rps']:.2f}x")
    if len(engines) == 2:
        print(f"throughput ratio (vLLM / builtin dynamic batching): {rows[2]['rps'] / rows[1]['rps']:.2f}x")


if __name__ == "__main__":
    main()
