"""The OpenAI-compatible server: `create_app(load, cfg)` -> FastAPI.

    vlmtune serve --model runs/my_run --port 8000 [--api-key KEY]

    POST /v1/chat/completions   OpenAI chat format: text and image_url parts (data: URIs; http(s) only with
                                --allow-remote-images, never to private or loopback addresses), max_tokens,
                                temperature, top_p, stream (server-sent events), n=1; usage in the response
    GET  /v1/models             the served model (+ "vlmtune": the page's caption prompt, examples, catalogue)
    GET  /health                200 {"status": "ready"} once the model is loaded, 503 before
    GET  /                      the web page (upload an image, ask or describe, see the answer stream in)
    GET  /v1/examples/N         the page's example images (catalogue photos, else images of the run's data)

With `vlmtune serve --model RUN --index DIR` (a `vlmtune retrieve index`), the server is also a shop assistant:

    chat answers                the model's reply + the top-k catalogue items for the last user message (its text,
                                its image or both): in "vlmtune": {"items": [...]} of the response (of the first
                                chunk when streaming) and as a markdown list of links appended to the text
    POST /v1/retrieve           {"text", "image", "k"} -> {"items": [{"rank", "score", "id", "caption", "item_url",
                                "image"}]}
    GET  /v1/items/N/image      an item's photo (the "image" of an item)

Every answer comes from the same `Predictor` that `vlmtune predict` uses, through the dynamic batcher. Limits answer
with OpenAI-style errors: 413 for a body, image or pixel count over the limit, 400 for a malformed request (checked
by the pydantic `ChatRequest`, strict types: `true` is not a number), too many images, an image too thin or too large
once the model's processor resizes it, max_tokens over the limit, a prompt too long or an image that does not decode,
401 for a missing or wrong key, 415 for a body that is not `application/json`, 400/403 for a Host or Origin that is
not this server's own (a web page driving a server on localhost), 408 for a body that does not arrive in
`body_timeout_s`, 504 when a request outlives `timeout_s`. A bad request never takes the server down.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import mimetypes
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from vlmtune.config import OcrCfg, ServeCfg
from vlmtune.serve.batcher import Batcher
from vlmtune.serve.catalogue import links_markdown
from vlmtune.serve.messages import _request, _retrieve
from vlmtune.serve.request import ApiError

STATIC = Path(__file__).parent / "static"
OPEN_PATHS = ("/", "/health")
"""Served without the API key: the page (it asks for the key) and the health check."""
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
EVERY_INTERFACE = ("0.0.0.0", "::", "")


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
           close: bool = False):
    """An OpenAI-style error; `close` ends the connection after it (a body that was refused unread, or is too slow)."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status,
                        headers={"Connection": "close"} if close else None)


def _served_hosts(cfg: ServeCfg) -> set[str]:
    """The host names the server answers to by default: the address it is bound to and the localhost names; bound
    to every interface (0.0.0.0, ::), also this machine's own name (any IP address is accepted then too)."""
    names = {*LOCAL_NAMES, cfg.host.lower().strip("[]")}
    if cfg.host in EVERY_INTERFACE:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return names


def _host_allowed(host: str, allowed: list[str] | None, served: set[str], any_address: bool) -> bool:
    """Whether a Host header names this server. A DNS-rebinding page reaches the server under its own domain name
    (evil.example resolving to 127.0.0.1), so a name that is not the server's is refused; an IP address cannot be
    rebound, so any is accepted when the server is bound to every interface."""
    try:
        name = urlsplit(f"//{host}").hostname or ""  # lower case, without port or IPv6 brackets
    except ValueError:
        return False
    if allowed is not None:  # as Starlette's TrustedHostMiddleware: "*", "*.example.com" or an exact name
        return any(p == "*" or name == p.lower() or (p.startswith("*.") and name.endswith(p[1:].lower()))
                   for p in allowed)
    if name in served:
        return True
    if any_address:
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return False
    return False


def _origin_allowed(origin: str, host: str, allowed: list[str] | None) -> bool:
    """The server's own page (its origin is the Host it was loaded from), or an origin given by --allowed-origins."""
    if allowed and ("*" in allowed or origin in allowed):
        return True
    return urlsplit(origin).netloc.lower() == host.lower()


DEFAULT_CAPTION_PROMPT = "Describe the image."
"""The prompt vlmtune's caption importers (cc3m, coco, flickr30k, hf) write: the Describe button's prompt for a model
whose run does not show its own."""


@dataclass
class Page:
    """What the web page offers beside the chat box: the Describe button's prompt (the caption prompt the run trained
    on) and example images (catalogue photos with --index, else images of the run's data); see `serve.page_for`."""

    caption_prompt: str = DEFAULT_CAPTION_PROMPT
    caption_prompt_from: str = "default"
    """Where the prompt was found (the dataset and sample), or "default"."""
    examples: list[Path] = field(default_factory=list)


class State:
    def __init__(self):
        self.predictor = None
        self.retriever = None
        self.batcher = None
        self.error: str | None = None
        self.ocr: OcrCfg | None = None
        self.ready = threading.Event()


def create_app(load: Callable[[], object], cfg: ServeCfg, model_name: str, background: bool = True,
               ocr: OcrCfg | None = None, on_load_error: Callable[[str], None] | None = None,
               retriever: Callable[[], object] | None = None, page: Page | None = None):
    """The FastAPI app. `load()` returns the Predictor; it runs in a thread (`background`) so /health answers
    503 while the model loads. A failed load is reported by /health and passed to `on_load_error` (`vlmtune serve`
    logs it and exits non-zero: a server that can never answer must not sit there looking alive). `ocr`: the model
    was trained with OCR-enriched prompts (data.ocr), and each request's images are read the same way.
    `retriever()` returns the catalogue's `Retriever` (--index), loaded after the model in the same thread: chat
    answers then carry the top-k items, and /v1/retrieve and /v1/items/N/image answer. `page`: the web page's
    Describe prompt and example images."""
    state = State()
    state.ocr = ocr
    extras = page or Page()

    def do_load():
        try:
            state.predictor = load()
            if retriever is not None:
                state.retriever = retriever()
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

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):  # 404, 405: OpenAI-style too
        return JSONResponse({"error": {"message": str(e.detail), "type": "invalid_request_error", "param": None,
                                       "code": e.status_code}}, e.status_code, headers=e.headers)

    @app.middleware("http")
    async def auth_and_limits(request: Request, call_next):
        post = request.method == "POST"
        if cfg.api_key and request.url.path not in OPEN_PATHS:  # /openapi.json and /docs included
            auth = request.headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), cfg.api_key.encode()):
                return _error(401, "missing or wrong API key (Authorization: Bearer <key>)", None,
                              "authentication_error", close=post)
        if post:  # a form or text/plain POST is what a page of another site can send without asking (no preflight)
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                return _error(415, f"the body must be JSON sent as Content-Type: application/json (got "
                                   f"{media or 'none'})", None, close=True)
            length = request.headers.get("content-length")
            if length and length.isdigit() and int(length) > cfg.max_body_bytes:
                return _error(413, f"request body of {length} bytes exceeds the limit of {cfg.max_body_bytes}",
                              close=True)
        return await call_next(request)

    if cfg.allowed_origins:  # pages of these origins may call the API: CORS answers their browsers' preflights
        app.add_middleware(CORSMiddleware, allow_origins=cfg.allowed_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    hosts = _served_hosts(cfg)

    @app.middleware("http")
    async def own_host_and_origin(request: Request, call_next):  # outermost: runs before CORS and the key
        host = request.headers.get("host", "")
        if not _host_allowed(host, cfg.allowed_hosts, hosts, cfg.host in EVERY_INTERFACE):
            return _error(400, f"Host {host!r} is not a name of this server (served: "
                               f"{', '.join(cfg.allowed_hosts or sorted(hosts))}; see --allowed-hosts)", None,
                          close=True)
        origin = request.headers.get("origin")
        if origin is not None and not _origin_allowed(origin, host, cfg.allowed_origins):
            return _error(403, f"requests from pages of {origin!r} are refused (not this server's own page; see "
                               "--allowed-origins)", None, "permission_error", close=True)
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
        catalogue = None
        if state.retriever is not None:
            catalogue = {"index": state.retriever.index.root.name, "items": len(state.retriever.index),
                         "k": cfg.retrieve_k, "max_k": cfg.max_retrieve_k}
        extra = {"caption_prompt": extras.caption_prompt, "caption_prompt_from": extras.caption_prompt_from,
                 "examples": [f"/v1/examples/{i}" for i in range(len(extras.examples))], "catalogue": catalogue}
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "vlmtune", "vlmtune": extra}]}

    def image_file(path: Path, what: str):
        if not path.is_file():  # a regular file only: never a FIFO or a directory
            return _error(404, f"the image of {what} is missing on the server", None)
        media = mimetypes.guess_type(path.name)[0] or ""
        return FileResponse(path, media_type=media if media.startswith("image/") else "application/octet-stream")

    @app.get("/v1/examples/{number}")
    async def example(number: str):
        """The page's example images, by number (the paths are the server's, never the client's)."""
        if not number.isdigit() or int(number) >= len(extras.examples):
            return _error(404, f"no example {number!r} (this server has {len(extras.examples)})")
        return image_file(extras.examples[int(number)], f"example {number}")

    @app.get("/v1/items/{row}/image")
    async def item_image(row: str):
        """A catalogue item's photo, by its row in the index."""
        if not state.ready.is_set() or state.error:
            return _error(503, "the model is not loaded yet" if not state.error else state.error, None,
                          "service_unavailable")
        if state.retriever is None:
            return _error(404, "this server has no catalogue index (start it with --index DIR)")
        if not row.isdigit() or int(row) >= len(state.retriever.index):
            return _error(404, f"no item {row!r} (the index has {len(state.retriever.index)})")
        return image_file(Path(state.retriever.index.item(int(row))["image"]), f"item {row}")

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def read_body(request: Request) -> bytes | JSONResponse:
        """The whole body within the size and time limits, or the error response."""
        chunks, size = [], 0
        try:
            async with asyncio.timeout(cfg.body_timeout_s):  # a body sent a byte at a time must not hold a connection
                async for part in request.stream():  # counted as it arrives: a chunked body has no Content-Length
                    size += len(part)
                    if size > cfg.max_body_bytes:
                        return _error(413, f"request body exceeds the limit of {cfg.max_body_bytes} bytes",
                                      close=True)
                    chunks.append(part)
        except TimeoutError:
            return _error(408, f"the request body did not arrive within {cfg.body_timeout_s:g} s", None, "timeout",
                          close=True)
        except ClientDisconnect:
            return _error(400, "the client disconnected before the whole body arrived", close=True)
        if not state.ready.is_set() or state.error:
            return _error(503, "the model is not loaded yet" if not state.error else state.error, None,
                          "service_unavailable")
        return b"".join(chunks)

    @app.post("/v1/retrieve")
    async def retrieve(request: Request):
        body = await read_body(request)
        if isinstance(body, JSONResponse):
            return body
        if state.retriever is None:
            return _error(404, "this server has no catalogue index (start it with --index DIR)")
        try:
            return await run_in_threadpool(_retrieve, body, cfg, state.retriever)
        except ApiError as e:
            return _error(e.status, e.message, e.param, e.kind)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await read_body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            job, stream, include_usage, items = await run_in_threadpool(_request, body, cfg, ocr, state.predictor,
                                                                        state.retriever)
        except ApiError as e:
            return _error(e.status, e.message, e.param, e.kind)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict, finish: str | None = None, usage=None, extra: dict | None = None) -> str:
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else []}
            if usage is not None:
                obj["usage"] = usage
            if extra is not None:
                obj["vlmtune"] = extra
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
                yield chunk({"role": "assistant", "content": ""}, extra={"items": items} if items is not None else None)
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
                if items:  # the links, for clients that show only the text (the page shows cards instead)
                    yield chunk({"content": links_markdown(items, c.text)}, extra={"links": True})
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
        out = {"id": cid, "object": "chat.completion", "created": created, "model": model_name,
               "choices": [{"index": 0, "message": {"role": "assistant",
                                                    "content": c.text + links_markdown(items or [], c.text)},
                            "finish_reason": c.finish_reason}], "usage": _usage(c)}
        if items is not None:
            out["vlmtune"] = {"items": items}
        return out

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
