"""The OpenAI-compatible server: `create_app(load, cfg)` -> FastAPI.

    vlmtune serve --model runs/my_run --port 8000 [--api-key KEY]

    POST /v1/chat/completions   OpenAI chat format: text and image_url parts (data: URIs; http(s) only with
                                --allow-remote-images, never to private or loopback addresses), max_tokens,
                                temperature, top_p, stream (server-sent events), n=1; usage in the response
    GET  /v1/models             the served model
    GET  /health                200 {"status": "ready"} once the model is loaded, 503 before
    GET  /                      the web page (upload an image, ask, see the answer stream in)

Every answer comes from the same `Predictor` that `vlmtune predict` uses, through the dynamic batcher. Limits answer
with OpenAI-style errors: 413 for a body, image or pixel count over the limit, 400 for a malformed request, too many
images, max_tokens over the limit, a prompt too long or an image that does not decode, 401 for a missing or wrong
key, 504 when a request outlives `timeout_s`. A bad request never takes the server down.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from vlmtune.config import ServeCfg
from vlmtune.data.ocr import OcrOptions
from vlmtune.serve.batcher import Batcher
from vlmtune.serve.batcher import Request as Job

STATIC = Path(__file__).parent / "static"


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status)


# ---------------------------------------------------------------- request -> Sample


def _image_bytes(url: str, cfg: ServeCfg, where: str) -> bytes:
    if url.startswith("data:"):
        head, _, b64 = url.partition(",")
        if ";base64" not in head or not head[5:].startswith("image/"):
            raise ApiError(400, f"{where}: only base64 image data URIs are accepted (data:image/...;base64,...)",
                           where)
        if len(b64) * 3 // 4 > cfg.max_image_bytes + 3:
            raise ApiError(413, f"{where}: image of about {len(b64) * 3 // 4} bytes exceeds the limit of "
                                f"{cfg.max_image_bytes}", where)
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{where}: invalid base64 image data", where) from None
    scheme = urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise ApiError(400, f"{where}: unsupported image URL scheme {scheme!r} (use a data: URI)", where)
    if not cfg.allow_remote_images:
        raise ApiError(400, f"{where}: remote image URLs are refused (the server was started without "
                            "--allow-remote-images); send the image as a data: URI", where)
    return _fetch(url, cfg, where)


def _fetch(url: str, cfg: ServeCfg, where: str) -> bytes:
    """GET a public http(s) image: every address the host resolves to must be global (no private, loopback,
    link-local or reserved address), redirects are not followed, and the size is capped."""
    import urllib.error
    import urllib.request

    host = urlparse(url).hostname or ""
    try:
        addresses = {ai[4][0] for ai in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise ApiError(400, f"{where}: cannot resolve {host!r}", where) from None
    for a in addresses:
        if not ipaddress.ip_address(a.split("%")[0]).is_global:
            raise ApiError(400, f"{where}: {host!r} resolves to a non-public address ({a}); refused", where)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            raise ApiError(400, f"{where}: the image URL redirects; give the final URL", where)

    try:
        with urllib.request.build_opener(NoRedirect).open(url, timeout=10) as r:
            data = r.read(cfg.max_image_bytes + 1)
    except urllib.error.URLError as e:
        raise ApiError(400, f"{where}: cannot fetch the image ({e.reason})", where) from None
    if len(data) > cfg.max_image_bytes:
        raise ApiError(413, f"{where}: image exceeds the limit of {cfg.max_image_bytes} bytes", where)
    return data


def parse_messages(messages, cfg: ServeCfg):
    """OpenAI messages -> (vlmtune Sample, [PIL images]); raises ApiError naming the offending part."""
    from vlmtune.data.images import ImageError, decode_image_bytes
    from vlmtune.data.sample import Sample

    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    out, images = [], []
    for k, m in enumerate(messages):
        where = f"messages[{k}]"
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ApiError(400, f"{where}: role must be system, user or assistant", where)
        content = m.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise ApiError(400, f"{where}: content must be a string or a list of parts", where)
        parts = []
        for j, part in enumerate(content):
            pw = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                if m["role"] != "user":
                    raise ApiError(400, f"{pw}: images are accepted in user messages only", pw)
                if len(images) >= cfg.max_images:
                    raise ApiError(400, f"{pw}: more than {cfg.max_images} images in one request", pw)
                spec = part.get("image_url")
                url = spec.get("url") if isinstance(spec, dict) else spec
                if not isinstance(url, str):
                    raise ApiError(400, f"{pw}: image_url.url must be a string", pw)
                try:
                    decoded = decode_image_bytes(_image_bytes(url, cfg, pw), pw, cfg.max_image_pixels,
                                                 cfg.max_image_bytes)
                except ImageError as e:
                    status = 413 if "exceeds the limit" in str(e) else 400
                    raise ApiError(status, str(e), pw) from None
                images.append(decoded.image)
                parts.append({"type": "image"})
            else:
                raise ApiError(400, f"{pw}: unsupported content part (text and image_url are)", pw)
        out.append({"role": m["role"], "content": parts})
    if out[-1]["role"] != "user":
        raise ApiError(400, "the last message must be from the user", f"messages[{len(out) - 1}]")
    sample = Sample(id=f"req-{uuid.uuid4().hex[:12]}", messages=out, images=[f"image-{i}" for i in range(len(images))])
    return sample, images


# ---------------------------------------------------------------- the app


class State:
    def __init__(self):
        self.predictor = None
        self.batcher = None
        self.error: str | None = None
        self.ocr: OcrOptions | None = None
        self.ready = threading.Event()


def create_app(load: Callable[[], object], cfg: ServeCfg, model_name: str, background: bool = True,
               ocr: OcrOptions | None = None, on_load_error: Callable[[str], None] | None = None):
    """The FastAPI app. `load()` returns the Predictor; it runs in a thread (`background`) so /health answers
    503 while the model loads. A failed load is reported by /health and passed to `on_load_error` (`vlmtune serve`
    logs it and exits non-zero: a server that can never answer must not sit there looking alive). `ocr`: the model
    was trained with OCR-enriched prompts (data.ocr), and each request's images are read the same way."""
    state = State()
    state.ocr = ocr

    def do_load():
        try:
            state.predictor = load()
            state.batcher = Batcher(state.predictor, cfg.max_batch_size, cfg.max_wait_ms)
        except Exception as e:  # noqa: BLE001 - reported by /health and on_load_error
            state.error = f"{type(e).__name__}: {e}"
        finally:
            state.ready.set()
        if state.error and on_load_error is not None:
            on_load_error(state.error)

    app = FastAPI(title="vlmtune", docs_url=None, redoc_url=None)
    app.state.vlmtune = state
    if background:
        threading.Thread(target=do_load, name="vlmtune-load", daemon=True).start()
    else:
        do_load()

    @app.middleware("http")
    async def limits_and_auth(request: Request, call_next):
        if request.url.path.startswith("/v1/"):
            if cfg.api_key:
                auth = request.headers.get("authorization", "")
                given = auth[7:] if auth.lower().startswith("bearer ") else ""
                if not hmac.compare_digest(given.encode(), cfg.api_key.encode()):
                    return _error(401, "missing or wrong API key (Authorization: Bearer <key>)", None,
                                  "authentication_error")
            length = request.headers.get("content-length")
            if length and length.isdigit() and int(length) > cfg.max_body_bytes:
                return _error(413, f"request body of {length} bytes exceeds the limit of {cfg.max_body_bytes}")
        return await call_next(request)

    @app.get("/health")
    async def health():
        if not state.ready.is_set():
            return JSONResponse({"status": "loading"}, 503)
        if state.error:
            return JSONResponse({"status": "error", "error": state.error}, 503)
        return {"status": "ready", "model": model_name}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "vlmtune"}]}

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        chunks, size = [], 0
        async for part in request.stream():  # counted as it arrives: a chunked body has no Content-Length
            size += len(part)
            if size > cfg.max_body_bytes:
                return _error(413, f"request body exceeds the limit of {cfg.max_body_bytes} bytes")
            chunks.append(part)
        body = b"".join(chunks)
        if not state.ready.is_set() or state.error:
            return _error(503, "the model is not loaded yet" if not state.error else state.error, None,
                          "service_unavailable")
        try:
            req = json.loads(body)
            if not isinstance(req, dict):
                raise ApiError(400, "the body must be a JSON object")
            job, stream, include_usage = await run_in_threadpool(_job, req, cfg, ocr)
        except json.JSONDecodeError as e:
            return _error(400, f"malformed JSON: {e.msg} at column {e.colno}")
        except ApiError as e:
            return _error(e.status, e.message, e.param, e.kind)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict, finish: str | None = None, usage=None) -> str:
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else []}
            if usage is not None:
                obj["usage"] = usage
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        if stream:
            loop = asyncio.get_running_loop()
            deltas: asyncio.Queue = asyncio.Queue()
            job.on_delta = lambda d: loop.call_soon_threadsafe(deltas.put_nowait, d)
            future = asyncio.wrap_future(state.batcher.submit(job))

            async def events():
                try:
                    async for event in answer():
                        yield event
                finally:  # closed early (the client disconnected) or timed out: stop generating for it
                    if not future.done():
                        job.cancelled.set()

            async def answer():
                yield chunk({"role": "assistant", "content": ""})
                deadline = loop.time() + cfg.timeout_s
                while True:
                    get = asyncio.ensure_future(deltas.get())
                    done, _ = await asyncio.wait({get, future}, timeout=max(0.0, deadline - loop.time()),
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if get in done:
                        yield chunk({"content": get.result()})
                        continue
                    get.cancel()
                    if not done:
                        job.cancelled.set()
                        yield f"data: {json.dumps({'error': {'message': 'request timed out', 'code': 504}})}\n\n"
                        return
                    break
                while not deltas.empty():
                    yield chunk({"content": deltas.get_nowait()})
                try:
                    c = future.result()
                except Exception as e:  # noqa: BLE001 - reported in the stream
                    code = 400 if isinstance(e, ValueError) else 500  # as the non-streamed answer would be
                    yield f"data: {json.dumps({'error': {'message': str(e), 'code': code}})}\n\n"
                    return
                yield chunk({}, c.finish_reason)
                if include_usage:
                    yield chunk({}, usage=_usage(c))
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        answer = asyncio.wrap_future(state.batcher.submit(job))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({answer, gone}, timeout=cfg.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not answer.done():  # timed out, or the client left: stop generating for it
            job.cancelled.set()
            return _error(504, f"request timed out after {cfg.timeout_s} s", None, "timeout")
        try:
            c = answer.result()
        except ValueError as e:  # too long for max_length, or a family limit
            return _error(400, str(e), "messages")
        except Exception as e:  # noqa: BLE001 - the server keeps serving
            return _error(500, f"{type(e).__name__}: {e}", None, "server_error")
        return {"id": cid, "object": "chat.completion", "created": created, "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                             "finish_reason": c.finish_reason}], "usage": _usage(c)}

    @app.on_event("shutdown")
    def shutdown():
        if state.batcher:
            state.batcher.close()

    return app


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (its body was read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.1)  # never spin, whatever a middleware hands back


def _usage(c) -> dict:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens}


def _job(req: dict, cfg: ServeCfg, ocr: OcrOptions | None = None):
    """The request's parameters checked, its images decoded (in a worker thread: decoding is CPU work) and, for a
    model trained with OCR enrichment, their text put into the prompt as in training."""
    n = req.get("n", 1)
    if n != 1:
        raise ApiError(400, "only n=1 is supported", "n")
    max_tokens = req.get("max_completion_tokens", req.get("max_tokens"))
    if max_tokens is None:
        max_tokens = min(cfg.max_new_tokens_default, cfg.max_tokens)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ApiError(400, "max_tokens must be a positive integer", "max_tokens")
    if max_tokens > cfg.max_tokens:
        raise ApiError(400, f"max_tokens {max_tokens} exceeds the limit of {cfg.max_tokens}", "max_tokens")
    temperature = req.get("temperature", 0.0)
    top_p = req.get("top_p", 1.0)
    if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise ApiError(400, "temperature must be between 0 and 2", "temperature")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ApiError(400, "top_p must be in (0, 1]", "top_p")
    sample, images = parse_messages(req.get("messages"), cfg)
    if ocr is not None and images:
        from vlmtune.data.ocr import OcrError, read_images_text, with_ocr_text

        try:
            sample = with_ocr_text(sample, read_images_text(images, ocr), ocr.into, ocr.template)
        except OcrError as e:
            raise ApiError(400, f"reading the text in the image(s) failed: {e}", "messages") from None
    options = req.get("stream_options") or {}
    return (Job(sample, images, max_tokens, float(temperature), float(top_p)), bool(req.get("stream")),
            bool(options.get("include_usage")))
