"""Fuzzing the server: valid `/v1/chat/completions` bodies, mutated (values of any type anywhere, keys removed or
added, nesting around the body's depth limit, hostile text, sampling parameters at and past their edges, images as
data URIs that are corrupt, truncated, thin, huge in pixels or bytes, of odd modes or no image at all, remote and
file URLs), or broken as bytes (not UTF-8, truncated, random, over the body limit), under various content types.

The app runs in-process (Starlette's TestClient at http://127.0.0.1, like test_hostile.py) over the tiny LLaVA, with
the byte limits lowered so that "over the limit" is cheap to send. Properties, for every request: the status is
below 500; a refusal is a 4xx with an OpenAI-style error object whose code is the status; a 200 is a valid completion
(or a valid event stream); a body that is not `application/json` is 415 and one that is not UTF-8 is 400. After every
example the server is healthy: /health is ready and a known-good request is answered 200.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
from fuzz.mutate import (
    INVALID_UTF8_BYTES,
    JSON,
    ODD_TEXT,
    PLACEHOLDER_TEXTS,
    SURROGATE,
    TRUNCATED_PNG,
    Quiet,
    huge_text,
    insert_invalid_utf8,
    nested,
    png,
)
from hypothesis import given, note
from hypothesis import strategies as st
from PIL import Image

from vlmtune.config import ServeCfg
from vlmtune.serve.request import MAX_JSON_DEPTH

LIMITS = {"max_tokens": 6, "max_body_bytes": 256 * 1024, "max_image_bytes": 64 * 1024, "max_image_pixels": 1_000_000,
          "max_images": 2, "timeout_s": 60.0}
"""The server's limits here: low, so that a body or image over them is small."""
GOOD_IMAGE = png((8, 8), (200, 30, 30))


def _uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels, with one row of real data: refused from its header."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 2)) + _chunk(b"IEND", b""))


def _encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on load
    return _encoded(Image.new("RGB", (12, 6), "blue"), "JPEG", exif=exif)


def _images() -> dict[str, str]:
    """Image URLs, by name: good ones in odd encodings, and ones every server must refuse."""
    palette = Image.new("P", (8, 8))
    palette.info["transparency"] = 0
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "green")]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    return {
        "png": _uri(GOOD_IMAGE), "jpeg": _uri(_encoded(Image.new("RGB", (9, 7), "green"), "JPEG"), "image/jpeg"),
        "exif rotated": _uri(_exif_rotated(), "image/jpeg"), "16-bit": _uri(png((8, 8), 40000, "I;16")),
        "palette with transparency": _uri(_encoded(palette, "PNG")), "animated gif": _uri(gif.getvalue(), "image/gif"),
        "cmyk": _uri(_encoded(Image.new("CMYK", (8, 8)), "JPEG"), "image/jpeg"), "1x1": _uri(png((1, 1))),
        "50:1": _uri(png((100, 2))), "rgba": _uri(png((8, 8), (0, 0, 0, 0), "RGBA")),
        "thin": _uri(png((1, 60))), "very thin": _uri(png((1, 100_000))), "bomb header": _uri(_png_header(20_000,
                                                                                                         20_000)),
        "corrupt": _uri(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20), "truncated": _uri(TRUNCATED_PNG),
        "empty": _uri(b""), "text": _uri(b"hello", "text/plain"), "no base64": "data:image/png,iVBORw0KGgo",
        "bad base64": "data:image/png;base64,!!!not-base64!!!", "too many bytes": _uri(b"\0" * (96 * 1024)),
        "svg": _uri(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
        "remote": "http://127.0.0.1:1/cat.png", "file": "file:///etc/hostname", "relative": "cat.png", "empty url": "",
    }


IMAGES = _images()


def _body(image: str = IMAGES["png"], text: str = "What colour is it?", **params) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                                      {"type": "text", "text": text}]}], "max_tokens": 2, **params}


PARAMS = ["max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream", "stream_options"]
EDGES = st.sampled_from([True, False, None, 0, 1, 2, -1, 6, 7, 2**63, 1e-300, 0.005, 0.01, 1.0, 2.0, 2.0000001, 1e308,
                         "1", "true", [], {}, {"include_usage": True}, {"include_usage": "yes"}, [1]])
HOSTILE = (JSON | ODD_TEXT | huge_text(1000) | st.builds(lambda a, s: a + s, ODD_TEXT, SURROGATE)
           | st.sampled_from(PLACEHOLDER_TEXTS) | st.sampled_from(sorted(IMAGES.values())))
CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "text/plain", "",
                 "application/x-www-form-urlencoded", "multipart/form-data", "application/json-patch+json"]


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _get(value, path):
    for k in path:
        value = value[k]
    return value


@st.composite
def json_body(draw) -> tuple[dict, str]:
    """A request body, mutated in one or more ways, and what was done."""
    body = _body(image=draw(st.sampled_from(sorted(IMAGES.values()))), text=draw(st.sampled_from(
        ["What colour is it?", "", " a regata laranja"])), stream=draw(st.sampled_from([False, True, None])))
    done = []
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["replace", "delete", "extra", "param", "deep", "messages", "text"]))
        paths = list(_paths(body))[1:]
        if how == "replace":
            path = draw(st.sampled_from(paths))
            _get(body, path[:-1])[path[-1]] = draw(HOSTILE)
            how = f"{'.'.join(map(str, path))} replaced"
        elif how == "delete":
            keyed = [p for p in paths if isinstance(p[-1], str)]
            if keyed:
                path = draw(st.sampled_from(keyed))
                del _get(body, path[:-1])[path[-1]]
                how = f"{'.'.join(map(str, path))} deleted"
        elif how == "extra":
            dicts = [p for p in [(), *paths] if isinstance(_get(body, p), dict)]
            target = _get(body, draw(st.sampled_from(dicts)))
            target[draw(st.sampled_from(["model", "user", "seed", "tools", "logprobs", "detail", "name"])
                        | st.text(max_size=6))] = draw(JSON)
        elif how == "param":
            body[draw(st.sampled_from(PARAMS))] = draw(EDGES)
        elif how == "deep":
            depth = draw(st.integers(MAX_JSON_DEPTH - 8, MAX_JSON_DEPTH + 8))
            path = draw(st.sampled_from(paths))
            _get(body, path[:-1])[path[-1]] = nested(depth)
            how = f"{'.'.join(map(str, path))} nested {depth} deep"
        elif how == "messages" and isinstance(body.get("messages"), list) and body["messages"]:
            turn = draw(st.sampled_from([{"role": r, "content": c} for r in ("system", "user", "assistant", "tool")
                                         for c in ("hi", [], [{"type": "image_url", "image_url": IMAGES["png"]}])]))
            body["messages"].insert(draw(st.integers(0, len(body["messages"]))), turn)
        elif how == "text":
            text = draw(HOSTILE.filter(lambda v: isinstance(v, str)))
            body["messages"] = [{"role": "user", "content": text}] if draw(st.booleans()) else [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGES["png"]}},
                                             {"type": "text", "text": text}]}]
        done.append(how)
    return body, "; ".join(done)


@st.composite
def request(draw) -> tuple[bytes, str, str]:
    """(raw body, content type, what was done)."""
    body, what = draw(json_body())
    raw = json.dumps(body).encode() if draw(st.booleans()) else json.dumps(body, ensure_ascii=False).encode(
        "utf-8", "surrogatepass")  # a lone surrogate as raw bytes: not UTF-8
    how = draw(st.sampled_from(["json"] * 4 + ["utf8", "truncate", "random", "huge"]))
    if how == "utf8":
        raw = insert_invalid_utf8(raw, draw(st.integers(0, len(raw))), draw(st.sampled_from(INVALID_UTF8_BYTES)))
    elif how == "truncate":
        raw = raw[:draw(st.integers(0, len(raw) - 1))]
    elif how == "random":
        raw = draw(st.binary(max_size=200))
    elif how == "huge":
        raw = json.dumps({**body, "padding": "x" * LIMITS["max_body_bytes"]}).encode()
    content_type = draw(st.sampled_from(CONTENT_TYPES[:1] * 6 + CONTENT_TYPES))
    return raw, content_type, f"{what}; body: {how}"


@pytest.fixture(scope="module")
def client(llava):
    from starlette.testclient import TestClient

    from vlmtune.serve.app import create_app

    app = create_app(lambda: llava.value, ServeCfg(model_name="tiny", **LIMITS), "tiny", background=False)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        yield Quiet("TestClient of the tiny LLaVA server", c)


def _check_error(r) -> None:
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == r.status_code, error
    assert isinstance(error["message"], str) and error["message"], error


def _check_completion(r, stream: bool) -> None:
    if not stream:
        c = r.json()
        assert c["object"] == "chat.completion" and c["model"] == "tiny", c
        [choice] = c["choices"]
        assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str), c
        assert choice["finish_reason"] in ("stop", "length"), c
        usage = c["usage"]
        assert 0 <= usage["completion_tokens"] <= LIMITS["max_tokens"] and usage["prompt_tokens"] > 0, c
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], c
        return
    assert r.headers["content-type"].startswith("text/event-stream"), r.headers
    events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e.strip()]
    assert events and all(e.startswith("{") or e == "[DONE]" for e in events), r.text[:500]
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    errors = [c["error"] for c in chunks if "error" in c]
    assert all(c.get("object") == "chat.completion.chunk" for c in chunks if "error" not in c), chunks
    assert events[-1] == "[DONE]" or (errors and all(400 <= e["code"] < 500 for e in errors)), events[-3:]


def _healthy(client) -> None:
    assert client.get("/health").json() == {"status": "ready", "model": "tiny"}
    good = client.post("/v1/chat/completions", json=_body())
    assert good.status_code == 200, good.text
    _check_completion(good, stream=False)


@given(case=request())
def test_every_request_is_answered_below_500_and_the_server_stays_healthy(case, client):
    raw, content_type, what = case
    note(f"{what}; content type {content_type!r}; body {raw[:600]!r}")
    c = client.value
    r = c.post("/v1/chat/completions", content=raw, headers={"content-type": content_type} if content_type else {})
    note(f"answer {r.status_code}: {r.text[:400]}")
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert 400 <= r.status_code < 500
        _check_error(r)
    else:
        body = json.loads(raw)
        _check_completion(r, stream=body.get("stream") is True)
    if content_type.split(";")[0].strip().lower() != "application/json":
        assert r.status_code == 415, r.text
    elif len(raw) <= LIMITS["max_body_bytes"]:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            assert r.status_code == 400 and "not UTF-8" in r.json()["error"]["message"], r.text
    _healthy(c)


def test_the_image_catalogue_holds_good_and_refused_images(client):
    """The fixed images the fuzzer draws from: the good ones answered, the others refused with a 4xx, each once."""
    c = client.value
    refused = {"thin", "very thin", "bomb header", "corrupt", "truncated", "empty", "text", "no base64", "bad base64",
               "too many bytes", "svg", "remote", "file", "relative", "empty url"}
    for name, url in IMAGES.items():
        r = c.post("/v1/chat/completions", json=_body(url))
        assert (r.status_code == 200) == (name not in refused), (name, r.status_code, r.text[:300])
        if name in refused:
            assert 400 <= r.status_code < 500, (name, r.text)
            _check_error(r)
