"""A chat request -> what the batcher runs: its messages as a `Sample` with the images decoded (data: URIs; http(s)
only with --allow-remote-images, never to private or loopback addresses, the connection pinned to the checked
address), checked against the server's and the model's limits (`_job`), with the catalogue items when it searches
the catalogue (`_request`); and `POST /v1/retrieve` of a raw body (`_retrieve`).
"""

from __future__ import annotations

import base64
import binascii
import http.client
import ipaddress
import socket
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

from pydantic import ValidationError

from vlmtune.config import OcrCfg, ServeCfg
from vlmtune.data.formats.openai import MessageError, read_messages
from vlmtune.data.images import ImageError, check_image_shape, decode_image_bytes
from vlmtune.data.ocr import OcrError, read_images_text, with_ocr_text
from vlmtune.data.sample import Sample
from vlmtune.serve.batcher import Request as Job
from vlmtune.serve.catalogue import catalogue_items, catalogue_query
from vlmtune.serve.request import ApiError, ChatRequest, Message, RetrieveRequest, _validation_error, parse_body

FETCH_TIMEOUT_S = 10.0
"""A remote image (--allow-remote-images) must have arrived within this."""


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
