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
import base64
import binascii
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
from typing import Annotated, Literal
from urllib.parse import urlparse, urlsplit

import pydantic_core
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from vlmtune.config import OcrCfg, ServeCfg
from vlmtune.data.formats.openai import MessageError, read_messages
from vlmtune.serve.batcher import Batcher
from vlmtune.serve.batcher import Request as Job

STATIC = Path(__file__).parent / "static"
MAX_JSON_DEPTH = 32
"""Nesting of a request body (a chat request needs 6: body, messages, message, content, part, image_url)."""
MIN_TEMPERATURE = 0.01
"""Below it (and above 0, which is greedy) logits / temperature overflow to inf and sampling fails."""
FETCH_TIMEOUT_S = 10.0
"""A remote image (--allow-remote-images) must have arrived within this."""
OPEN_PATHS = ("/", "/health")
"""Served without the API key: the page (it asks for the key) and the health check."""
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
EVERY_INTERFACE = ("0.0.0.0", "::", "")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
           close: bool = False):
    """An OpenAI-style error; `close` ends the connection after it (a body that was refused unread, or is too slow)."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status,
                        headers={"Connection": "close"} if close else None)


# ---------------------------------------------------------------- the request, validated


class _Strict(BaseModel):
    """Strict types (`true` is not a number, `"1"` is not an int); fields vlmtune does not use are ignored, as
    OpenAI clients send many (model, user, seed, ...)."""

    model_config = ConfigDict(strict=True, extra="ignore")


class ImageURL(_Strict):
    url: StrictStr


class Part(_Strict):
    type: Literal["text", "image_url"]
    text: StrictStr | None = None
    image_url: Annotated[ImageURL | None, BeforeValidator(lambda v: {"url": v} if isinstance(v, str) else v)] = None

    @model_validator(mode="after")
    def _complete(self):
        if self.type == "text" and self.text is None:
            raise PydanticCustomError("part", "a text part needs a string 'text'")
        if self.type == "image_url" and self.image_url is None:
            raise PydanticCustomError("part", "an image_url part needs 'image_url': {'url': ...}")
        return self


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: Annotated[list[Part], BeforeValidator(lambda v: [{"type": "text", "text": v}] if isinstance(v, str)
                                                   else v)]


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class ChatOptions(_Strict):
    """vlmtune's own part of a chat request, `"vlmtune": {...}` (the openai client sends it with `extra_body`)."""

    k: Annotated[StrictInt, Field(ge=0)] | None = None
    """Catalogue items to attach (with --index); None: the server's --k, 0: none."""
    query: Literal["auto", "text", "image"] = "auto"
    """What of the last user message searches the catalogue: its text and its image (auto), or one of them (the
    page's Describe button searches by the image alone: its text is the caption prompt, not a wish)."""


Temperature = Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


class ChatRequest(_Strict):
    """The parts of an OpenAI chat completion request that vlmtune serves; null means the default."""

    messages: list[Message]
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: StrictInt | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    vlmtune: ChatOptions | None = None

    @field_validator("messages")
    @classmethod
    def _some(cls, v):
        if not v:
            raise PydanticCustomError("messages", "must be a non-empty list")
        return v

    @field_validator("n")
    @classmethod
    def _one(cls, v):
        if v not in (None, 1):
            raise PydanticCustomError("n", "only n=1 is supported")
        return v

    @field_validator("temperature")
    @classmethod
    def _not_tiny(cls, v):
        if v is not None and 0 < v < MIN_TEMPERATURE:
            raise PydanticCustomError("temperature", "must be 0 (greedy) or between {low} and 2",
                                      {"low": MIN_TEMPERATURE})
        return v


class RetrieveRequest(_Strict):
    """`POST /v1/retrieve`: a text, an image (a data: URI, or {"url": ...}) or both -> the top-k catalogue items."""

    text: StrictStr | None = None
    image: Annotated[ImageURL | None, BeforeValidator(lambda v: {"url": v} if isinstance(v, str) else v)] = None
    k: Annotated[StrictInt, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _something(self):
        if self.text is not None and not self.text.strip():
            raise PydanticCustomError("text", "text: must not be empty (leave it out to search by the image)")
        if self.text is None and self.image is None:
            raise PydanticCustomError("query", "give a 'text', an 'image' or both")
        return self


def _where(loc) -> str:
    """pydantic's ('messages', 0, 'content', 1, 'text') -> 'messages[0].content[1].text'."""
    out = ""
    for x in loc:
        out += f"[{x}]" if isinstance(x, int) else f".{x}" if out else str(x)
    return out


def _validation_error(e: ValidationError) -> ApiError:
    first = e.errors(include_url=False)[0]
    where = _where(first["loc"])
    # pydantic names Python types ("a valid dictionary or instance of StreamOptions"); the client sent JSON
    message = "Input should be an object" if first["type"] in ("model_type", "dict_type") else first["msg"]
    if first["type"] != "missing" and isinstance(first.get("input"), (bool, int, float, str)):
        message += f" (got {json.dumps(first['input'])[:40]})"
    return ApiError(400, f"{where}: {message}" if where else message, where or None)


def parse_body(body: bytes) -> dict:
    """The request body -> a JSON object: UTF-8, at most MAX_JSON_DEPTH deep (pydantic-core's parser stops far
    deeper structures before recursing into them), no NaN or Infinity."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the body is not UTF-8 (byte {body[e.start]:#04x} at offset {e.start})") from None
    too_deep = ApiError(400, f"the body's JSON is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = pydantic_core.from_json(text, allow_inf_nan=False)
    except ValueError as e:
        if "recursion limit" in str(e):
            raise too_deep from None
        raise ApiError(400, f"malformed JSON: {e}") from None
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise too_deep
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


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


def _is_public(address: str) -> bool:
    return ipaddress.ip_address(address.split("%")[0]).is_global


def _fetch(url: str, cfg: ServeCfg, where: str) -> bytes:
    """GET a public http(s) image. The host is resolved once, every address it resolves to must be global (no
    private, loopback, link-local or reserved address), and the connection goes to one of those checked addresses,
    while the Host header, TLS SNI and certificate check keep the name: a second lookup, which DNS rebinding would
    answer with 127.0.0.1, never happens. Redirects are not followed; size and time are capped. No proxy is used."""
    import http.client

    parts = urlparse(url)
    host, https = parts.hostname or "", parts.scheme == "https"
    try:
        port = parts.port or (443 if https else 80)
    except ValueError:
        raise ApiError(400, f"{where}: the image URL has an invalid port", where) from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise ApiError(400, f"{where}: cannot resolve {host!r}", where) from None
    for info in infos:
        if not _is_public(info[4][0]):
            raise ApiError(400, f"{where}: {host!r} resolves to a non-public address ({info[4][0]}); refused", where)

    def connect(address=None, timeout=FETCH_TIMEOUT_S, source_address=None) -> socket.socket:
        error: OSError = OSError(f"no address for {host}")
        for family, kind, proto, _, sockaddr in infos:  # the checked addresses, never a new lookup
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
                return sock
            except OSError as e:
                sock.close()
                error = e
        raise error

    conn = (http.client.HTTPSConnection if https else http.client.HTTPConnection)(host, port, timeout=FETCH_TIMEOUT_S)
    conn._create_connection = connect  # http.client's one hook for how it opens its socket; SNI still uses `host`
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    deadline = time.monotonic() + FETCH_TIMEOUT_S
    try:
        conn.request("GET", path, headers={"Accept": "image/*", "User-Agent": "vlmtune"})
        response = conn.getresponse()
        if 300 <= response.status < 400:
            raise ApiError(400, f"{where}: the image URL redirects; give the final URL", where)
        if response.status != 200:
            raise ApiError(400, f"{where}: the image URL answered HTTP {response.status}", where)
        data = bytearray()
        while chunk := response.read1(65536):
            data += chunk
            if len(data) > cfg.max_image_bytes:
                raise ApiError(413, f"{where}: image exceeds the limit of {cfg.max_image_bytes} bytes", where)
            if time.monotonic() > deadline:
                raise ApiError(400, f"{where}: the image took over {FETCH_TIMEOUT_S:g} s to fetch", where)
    except (OSError, http.client.HTTPException) as e:
        raise ApiError(400, f"{where}: cannot fetch the image ({type(e).__name__}: {e})", where) from None
    finally:
        conn.close()
    return bytes(data)


def decode_image(url: str, cfg: ServeCfg, where: str, image_processor=None):
    """An image URL of a request (a data: URI, or http(s) with --allow-remote-images) -> a PIL image, within the
    server's limits and, with `image_processor`, that processor's (aspect ratio, size once resized)."""
    from vlmtune.data.images import ImageError, check_image_shape, decode_image_bytes

    try:
        decoded = decode_image_bytes(_image_bytes(url, cfg, where), where, cfg.max_image_pixels, cfg.max_image_bytes,
                                     cfg.max_aspect_ratio)
    except ImageError as e:
        status = 413 if "exceeds the limit" in str(e) else 400
        raise ApiError(status, str(e), where) from None
    try:  # the decoded size: EXIF orientation may have swapped width and height
        check_image_shape(*decoded.image.size, where, image_processor, cfg.max_aspect_ratio, cfg.max_resized_pixels)
    except ImageError as e:
        raise ApiError(400, str(e), where) from None
    return decoded.image


def parse_messages(messages: list[Message], cfg: ServeCfg, predictor=None):
    """Validated messages -> (vlmtune Sample, [PIL images]); raises ApiError naming the offending part. The
    messages are read by the OpenAI format's `read_messages` (the one reading of that shape); here each image is
    decoded within the server's limits. With the `predictor`, images are checked against its model before its
    processor sees them: their aspect ratio and their size once resized (computed from the processor's settings),
    their number (a one-image family)."""
    from vlmtune.data.sample import Sample

    family = predictor.family if predictor is not None else None
    image_processor = getattr(predictor.loaded.processor, "image_processor", None) if predictor is not None else None
    images = []

    def image(url: object, detail: object, k: int, j: int) -> None:
        pw = f"messages[{k}].content[{j}]"
        if len(images) >= cfg.max_images:
            raise ApiError(400, f"{pw}: more than {cfg.max_images} images in one request", pw)
        if family is not None and images and not family.multi_image:
            raise ApiError(400, f"{pw}: the model (a {family.name} model) takes one image per request", pw)
        images.append(decode_image(url, cfg, pw, image_processor))

    try:  # an empty text part is a valid request (the OpenAI API accepts it), unlike a training example's
        out = list(read_messages([m.model_dump() for m in messages], image, blank_text=True))
    except MessageError as e:
        raise ApiError(400, f"{e.where}: {e.problem}", e.where) from None
    if out[-1]["role"] != "user":
        raise ApiError(400, "the last message must be from the user", f"messages[{len(out) - 1}]")
    if family is not None and not images and not family.text_only:
        raise ApiError(400, f"the model (a {family.name} model) needs an image in the request", "messages")
    sample = Sample(id=f"req-{uuid.uuid4().hex[:12]}", messages=out, images=[f"image-{i}" for i in range(len(images))])
    return sample, images


# ---------------------------------------------------------------- the app


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


@dataclass
class Query:
    """What searches the catalogue for one chat request."""

    text: str | None
    image: object | None
    """A PIL image."""
    k: int


def catalogue_query(r: ChatRequest, images: list, cfg: ServeCfg, retriever=None) -> Query | None:
    """The last user message's text and its last image (or one of them, as `vlmtune.query` says), or None when
    nothing is to be searched (no index and no `vlmtune.k`, or k 0)."""
    from vlmtune.data.images import ImageError, check_image_shape

    options = r.vlmtune or ChatOptions()
    if options.k == 0 or (options.k is None and (retriever is None or cfg.retrieve_k == 0)):
        return None
    if retriever is None:
        raise ApiError(400, "vlmtune.k: this server has no catalogue index (start it with --index DIR)", "vlmtune.k")
    k = options.k if options.k is not None else cfg.retrieve_k
    if k > cfg.max_retrieve_k:
        raise ApiError(400, f"vlmtune.k {k} exceeds the limit of {cfg.max_retrieve_k}", "vlmtune.k")
    last, where = r.messages[-1], f"messages[{len(r.messages) - 1}]"
    text = " ".join(p.text for p in last.content if p.type == "text").strip() or None
    image = images[-1] if any(p.type == "image_url" for p in last.content) else None
    if options.query != "auto":
        if (text if options.query == "text" else image) is None:
            raise ApiError(400, f"vlmtune.query is {options.query!r} but {where} has no {options.query}",
                           "vlmtune.query")
        text, image = (text, None) if options.query == "text" else (None, image)
    if text is None and image is None:
        return None
    if image is not None:  # the dual encoder's processor resizes it too
        try:
            check_image_shape(*image.size, where, retriever.encoder.image_processor, cfg.max_aspect_ratio,
                              cfg.max_resized_pixels)
        except ImageError as e:
            raise ApiError(400, str(e), where) from None
    return Query(text, image, k)


def catalogue_items(retriever, text: str | None, image, k: int) -> list[dict]:
    """The top-k items as the API returns them: rank, score, id, caption, item_url and `image`, the item's photo
    on this server (GET, under the API key). The server's file paths are not shown."""
    try:
        found = retriever.search(text, image, k)
    except Exception as e:  # noqa: BLE001 - answered as a server error, the server keeps serving
        raise ApiError(500, f"catalogue search failed: {type(e).__name__}: {e}", None, "server_error") from None
    return [{"rank": it["rank"], "score": it["score"], "id": it["id"], "caption": it["caption"],
             "item_url": it["item_url"], "image": f"/v1/items/{it['row']}/image"} for it in found]


MARKDOWN_TEXT = str.maketrans({"\\": "\\\\", "[": "\\[", "]": "\\]"})
MARKDOWN_URL = str.maketrans({" ": "%20", "(": "%28", ")": "%29", "<": "%3C", ">": "%3E"})


def _web_url(url: str | None) -> bool:
    return bool(url) and urlsplit(url).scheme in ("http", "https") and bool(urlsplit(url).netloc)


def links_markdown(items: list[dict], after: str) -> str:
    """The items as a numbered markdown list of links, to append to the answer `after` (for clients that show only
    the text). Only http(s) URLs become links; brackets in captions are escaped, spaces and parentheses in URLs
    percent-encoded, so a caption or URL cannot break out of its link."""
    if not items:
        return ""
    lines = []
    for it in items:
        caption = " ".join(it["caption"].split()).translate(MARKDOWN_TEXT)
        url = it["item_url"]
        if _web_url(url):
            url = url.translate(MARKDOWN_URL)
            caption = f"[{caption}]({url})"
        lines.append(f"{it['rank']}. {caption} (score {it['score']:.3f})")
    return ("\n\n" if after else "") + "Catalogue items:\n" + "\n".join(lines)


def _job(req: dict, cfg: ServeCfg, ocr: OcrCfg | None = None, predictor=None, retriever=None):
    """The request checked (`ChatRequest`, then the server's limits and, with the `predictor`, its model's image
    limits), its images decoded (in a worker thread: decoding is CPU work) and, for a model trained with OCR
    enrichment, their text put into the prompt as in training. -> (batcher job, stream, include_usage, catalogue
    query or None)."""
    try:
        r = ChatRequest.model_validate(req)
    except ValidationError as e:
        raise _validation_error(e) from None
    max_tokens = r.max_completion_tokens or r.max_tokens or min(cfg.max_new_tokens_default, cfg.max_tokens)
    if max_tokens > cfg.max_tokens:
        param = "max_completion_tokens" if r.max_completion_tokens else "max_tokens"
        raise ApiError(400, f"{param} {max_tokens} exceeds the limit of {cfg.max_tokens}", param)
    sample, images = parse_messages(r.messages, cfg, predictor)
    query = catalogue_query(r, images, cfg, retriever)
    if ocr is not None and images:
        from vlmtune.data.ocr import OcrError, read_images_text, with_ocr_text

        try:
            sample = with_ocr_text(sample, read_images_text(images, ocr), ocr.into, ocr.template)
        except OcrError as e:
            raise ApiError(400, f"reading the text in the image(s) failed: {e}", "messages") from None
    temperature = r.temperature if r.temperature is not None else 0.0
    top_p = r.top_p if r.top_p is not None else 1.0
    include_usage = r.stream_options is not None and r.stream_options.include_usage
    return Job(sample, images, max_tokens, temperature, top_p), bool(r.stream), include_usage, query


def _request(body: bytes, cfg: ServeCfg, ocr: OcrCfg | None, predictor, retriever=None):
    """`_job` of a raw body (parsing 20 MB of JSON is CPU work too, done off the event loop), and the catalogue
    items when the request searches the catalogue: (job, stream, include_usage, items or None)."""
    job, stream, include_usage, query = _job(parse_body(body), cfg, ocr, predictor, retriever)
    items = catalogue_items(retriever, query.text, query.image, query.k) if query is not None else None
    return job, stream, include_usage, items


def _model_label(model: str) -> str:
    """The index's model as its name, not the server's path: `runs/fashion-clip/best` -> `fashion-clip`."""
    path = Path(str(model))
    return path.parent.name if path.name == "best" and path.parent.name else path.name


def _retrieve(body: bytes, cfg: ServeCfg, retriever) -> dict:
    """`POST /v1/retrieve` of a raw body -> {"object", "index", "model", "k", "items"}."""
    try:
        r = RetrieveRequest.model_validate(parse_body(body))
    except ValidationError as e:
        raise _validation_error(e) from None
    k = r.k if r.k is not None else cfg.retrieve_k or 1
    if k > cfg.max_retrieve_k:
        raise ApiError(400, f"k {k} exceeds the limit of {cfg.max_retrieve_k}", "k")
    image = decode_image(r.image.url, cfg, "image", retriever.encoder.image_processor) if r.image else None
    return {"object": "vlmtune.retrieval", "index": retriever.index.root.name,
            "model": _model_label(retriever.index.meta["model"]), "k": k,
            "items": catalogue_items(retriever, r.text, image, k)}
