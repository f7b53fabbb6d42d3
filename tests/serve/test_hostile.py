"""`vlmtune serve` against hostile requests (issue 20): thin images, malformed bodies that used to be 500s, DNS
rebinding of remote image hosts, and web pages of other sites driving a server on localhost. Every refusal is a 4xx
with an OpenAI-style error object, and the server answers a good request afterwards.

The app runs in-process (Starlette's TestClient, addressed as http://127.0.0.1 like a browser on the same machine)
over tiny random models; the slow-body test runs a real uvicorn server on a loopback port."""

from __future__ import annotations

import base64
import http.server
import io
import socket
import threading

import pytest
from PIL import Image

from vlmtune.config import ServeCfg


def _predictor(family: str):
    from vlmtune.infer import Predictor
    from vlmtune.models import FAMILIES

    return Predictor(loaded=FAMILIES[family].tiny(), family=FAMILIES[family], max_length=256)


@pytest.fixture(scope="module")
def llava():
    """A multi-image family whose CLIP-style processor scales the short side up to 32 (shortest_edge)."""
    return _predictor("llava")


def _client(predictor, **limits):
    from starlette.testclient import TestClient

    from vlmtune.serve.app import create_app

    app = create_app(lambda: predictor, ServeCfg(model_name="tiny", **limits), "tiny", background=False)
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


def _uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _body(*images: Image.Image, text: str = "What colour is the top?", **params) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": _uri(i)}} for i in images]
    return {"messages": [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}], "max_tokens": 3,
            **params}


def _refused(r, status: int, text: str, param: str | None = "any") -> dict:
    """The response is `status` with an OpenAI-style error whose message contains `text`."""
    assert r.status_code == status, (text, r.status_code, r.text[:400])
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert text in error["message"], (text, error)
    if param != "any":
        assert error["param"] == param, error
    return error


RED = Image.new("RGB", (40, 30), "red")


# ---------------------------------------------------------------- item 2: thin images


def test_a_thin_image_is_refused_with_its_numbers_before_the_processor_runs(llava, monkeypatch):
    """A 1x100000 PNG is 471 bytes and 100,000 pixels, but a processor that scales the short side up to 32 makes it
    32 x 3,200,000 (the real CLIP's 336: 336 x 33,600,000). Refused before the image processor is called."""
    image_processor = llava.loaded.processor.image_processor

    def processor_ran(*args, **kwargs):
        raise AssertionError("the image processor ran on a refused image")

    with _client(llava) as client:
        monkeypatch.setattr(image_processor, "preprocess", processor_ran)
        thin = Image.new("RGB", (1, 100_000), "white")
        _refused(client.post("/v1/chat/completions", json=_body(thin)), 400,
                 "1x100000 pixels has an aspect ratio of 100000.0:1, over the limit of 50:1",
                 "messages[0].content[0]")
        _refused(client.post("/v1/chat/completions", json=_body(Image.new("RGB", (5100, 100)))), 400,
                 "5100x100 pixels has an aspect ratio of 51.0:1, over the limit of 50:1")
        monkeypatch.undo()
        assert client.post("/v1/chat/completions", json=_body(Image.new("RGB", (5000, 100)))).status_code == 200


def test_the_size_after_the_processors_resize_has_its_own_limit(llava):
    """40x30 becomes 42x32 (short side to 32): over a limit of 1100 pixels although its own 1200 pixels are
    not over --max-image-pixels; 32x32 stays 32x32 = 1024 and is served."""
    with _client(llava, max_resized_pixels=1100) as client:
        _refused(client.post("/v1/chat/completions", json=_body(RED)), 400,
                 "40x30 pixels becomes 42x32 = 1344 pixels in the model's image processor, over the limit of 1100")
        assert client.post("/v1/chat/completions", json=_body(Image.new("RGB", (32, 32)))).status_code == 200
    with _client(llava, max_aspect_ratio=2000, max_resized_pixels=1_000_000) as client:  # thin, allowed so: the
        _refused(client.post("/v1/chat/completions", json=_body(Image.new("RGB", (1, 1500)))), 400,  # resize counts
                 "1x1500 pixels becomes 32x48000 = 1536000 pixels in the model's image processor, over the limit of "
                 "1000000")


# ---------------------------------------------------------------- item 5: malformed requests are 4xx


def test_malformed_requests_are_400s_with_an_openai_error_and_the_server_keeps_serving(llava):
    good = _body(RED)
    nested = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    raw_cases = [
        (nested, "nested deeper than 32 levels", None),
        (b'{"messages": ' + b"[" * 40 + b"]" * 40 + b"}", "nested deeper than 32 levels", None),
        (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', "not UTF-8 (byte 0xe9 at offset 46)", None),
        (b'{"messages": [], "temperature": NaN}', "malformed JSON", None),
        (b"[1, 2]", "the body must be a JSON object", None),
    ]
    cases = [
        ({**good, "stream": True, "stream_options": "yes"}, "stream_options: Input should be an object",
         "stream_options"),
        ({**good, "stream_options": [1]}, "stream_options", "stream_options"),
        ({**good, "temperature": 1e-300}, "temperature: must be 0 (greedy) or between 0.01 and 2 (got 1e-300)",
         "temperature"),
        ({**good, "max_tokens": True}, "max_tokens: Input should be a valid integer (got true)", "max_tokens"),
        ({**good, "n": True}, "n: Input should be a valid integer (got true)", "n"),
        ({**good, "temperature": True}, "temperature: Input should be a valid number (got true)", "temperature"),
        ({**good, "top_p": False}, "top_p", "top_p"),
        ({**good, "stream": "yes"}, "stream: Input should be a valid boolean", "stream"),
        ({**good, "max_tokens": 2.5}, "max_tokens: Input should be a valid integer", "max_tokens"),
        ({**good, "max_tokens": "3"}, "max_tokens: Input should be a valid integer", "max_tokens"),
        ({**good, "max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1", "max_tokens"),
        ({**good, "max_completion_tokens": 10_000}, "max_completion_tokens 10000 exceeds the limit of 512",
         "max_completion_tokens"),
        ({"messages": [{"role": "user", "content": [7]}]}, "messages[0].content[0]: Input should be an object",
         "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "a text part needs a string 'text'",
         "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 3}}]}]},
         "messages[0].content[0].image_url.url: Input should be a valid string",
         "messages[0].content[0].image_url.url"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role: Input should be 'system', 'user' or",
         "messages[0].role"),
        ({"messages": "hi"}, "messages: Input should be a valid list", "messages"),
        ({"max_tokens": 3}, "messages: Field required", "messages"),
    ]
    with _client(llava) as client:
        before = client.post("/v1/chat/completions", json=good)
        assert before.status_code == 200
        for raw, text, param in raw_cases:
            _refused(client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"}),
                     400, text, param)
        for body, text, param in cases:
            _refused(client.post("/v1/chat/completions", json=body), 400, text, param)
        sampled = client.post("/v1/chat/completions", json={**good, "temperature": 0.01})  # the smallest allowed
        assert sampled.status_code == 200, sampled.text
        nulls = client.post("/v1/chat/completions", json={**good, "temperature": None, "top_p": None, "n": None,
                                                          "stream": None, "stream_options": None})
        assert nulls.status_code == 200 and nulls.json()["choices"] == before.json()["choices"]  # null: the default
        _refused(client.get("/v1/nothing-here"), 404, "Not Found")
        _refused(client.put("/v1/chat/completions", json=good), 405, "Method Not Allowed")
        after = client.post("/v1/chat/completions", json=good)
        assert after.status_code == 200 and after.json()["choices"] == before.json()["choices"]


def test_a_one_image_model_refuses_a_second_image_and_needs_one():
    """PaliGemma takes one image per sample: two gave 200 with an answer to who knows what, none a 500 (IndexError).
    Both are refused before the request reaches the batcher (where it would share a batch with good requests)."""
    paligemma = _predictor("paligemma")
    with _client(paligemma) as client:
        _refused(client.post("/v1/chat/completions", json=_body(RED, RED)), 400,
                 "the model (a paligemma model) takes one image per request", "messages[0].content[1]")
        _refused(client.post("/v1/chat/completions", json=_body()), 400,
                 "the model (a paligemma model) needs an image in the request", "messages")
        assert client.post("/v1/chat/completions", json=_body(RED)).status_code == 200


# ---------------------------------------------------------------- item 6: DNS rebinding of remote images


def _resolver(*answers: str):
    """A getaddrinfo that gives each call the next answer (the last one from then on): a DNS-rebinding name."""
    calls = []

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        calls.append(host)
        address = answers[min(len(calls), len(answers)) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port or 80))]

    return getaddrinfo, calls


def test_a_rebinding_name_is_resolved_once_and_loopback_is_never_connected(monkeypatch):
    """The name answers a public address to the check and 127.0.0.1 to any later lookup: the only connection goes
    to the checked public address (refused here: no network in tests), never to loopback."""
    from vlmtune.serve.messages import _fetch
    from vlmtune.serve.request import ApiError

    getaddrinfo, lookups = _resolver("93.184.215.14", "127.0.0.1")
    connects = []

    def connect(sock, address):
        connects.append(address)
        raise ConnectionRefusedError("no network in tests")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    with pytest.raises(ApiError) as refused:
        _fetch("http://rebind.example/cat.png", ServeCfg(allow_remote_images=True), "messages[0].content[0]")
    monkeypatch.undo()
    assert connects == [("93.184.215.14", 80)] and lookups == ["rebind.example"]
    assert refused.value.status == 400 and "cannot fetch the image" in refused.value.message


def test_the_pinned_connection_keeps_the_host_name_in_the_request(monkeypatch):
    """The connection goes to the address that was checked, and the request still names the host (Host header; for
    https the TLS SNI and certificate check use the same name). Loopback is let through here only by the test."""
    import vlmtune.serve.messages as app_module

    png = io.BytesIO()
    RED.save(png, format="PNG")
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers["Host"]))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png.getvalue())))
            self.end_headers()
            self.wfile.write(png.getvalue())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        getaddrinfo, lookups = _resolver("127.0.0.1")
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(app_module, "_is_public", lambda address: True)
        data = app_module._fetch(f"http://images.example:{port}/a/cat.png?v=2", ServeCfg(allow_remote_images=True),
                                 "messages[0].content[0]")
        monkeypatch.undo()
    finally:
        server.shutdown()
    assert data == png.getvalue() and lookups == ["images.example"]
    assert seen == [("/a/cat.png?v=2", f"images.example:{port}")]


# ---------------------------------------------------------------- item 7: pages of other sites, keys, slow bodies


def test_a_page_of_another_site_cannot_drive_a_keyless_server(llava):
    """A form or text/plain POST needs no CORS preflight, so any page could send one: 415. A DNS-rebinding page
    reaches the server under its own name: its Host is refused. A cross-origin fetch carries its Origin: refused."""
    good = _body(RED)
    with _client(llava) as client:
        _refused(client.post("/v1/chat/completions", content=str(good).encode(),
                             headers={"content-type": "text/plain"}), 415, "Content-Type: application/json (got "
                                                                           "text/plain)")
        _refused(client.post("/v1/chat/completions", content=b"messages=1",
                             headers={"content-type": "application/x-www-form-urlencoded"}), 415, "application/json")
        _refused(client.post("/v1/chat/completions", content=b"{}", headers={"content-type": ""}), 415, "got none")
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example"):
            _refused(client.get("/v1/models", headers={"host": host}), 400, f"Host {host!r} is not a name of this "
                                                                            "server")
            _refused(client.post("/v1/chat/completions", json=good, headers={"host": host}), 400, "--allowed-hosts")
        _refused(client.post("/v1/chat/completions", json=good, headers={"origin": "http://evil.example"}), 403,
                 "requests from pages of 'http://evil.example' are refused")
        _refused(client.post("/v1/chat/completions", json=good, headers={"origin": "null"}), 403, "--allowed-origins")
        for host in ("127.0.0.1", "127.0.0.1:8000", "localhost:8000", "[::1]:8000"):  # the server's own names
            assert client.get("/v1/models", headers={"host": host}).status_code == 200, host
        own = client.post("/v1/chat/completions", json=good, headers={"origin": "http://127.0.0.1"})
        assert own.status_code == 200 and "access-control-allow-origin" not in own.headers  # its own page
        assert client.post("/v1/chat/completions", json=good,
                           headers={"content-type": "application/json; charset=utf-8"}).status_code == 200


def test_allowed_hosts_and_origins_open_the_server_to_the_names_given(llava):
    good = _body(RED)
    with _client(llava, allowed_hosts=["api.example.com", "*.internal.example"],
                 allowed_origins=["https://app.example.com"]) as client:
        for host in ("api.example.com", "api.example.com:443", "gpu1.internal.example"):
            assert client.get("/v1/models", headers={"host": host}).status_code == 200, host
        _refused(client.get("/v1/models", headers={"host": "127.0.0.1"}), 400, "served: api.example.com")
        headers = {"host": "api.example.com", "origin": "https://app.example.com"}
        preflight = client.options("/v1/chat/completions", headers={
            **headers, "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        r = client.post("/v1/chat/completions", json=good, headers=headers)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
        _refused(client.post("/v1/chat/completions", json=good,
                             headers={"host": "api.example.com", "origin": "https://evil.example"}), 403, "evil")
    with _client(llava, host="0.0.0.0") as client:  # every interface: any address by number, never a foreign name
        assert client.get("/v1/models", headers={"host": "192.168.1.7:8000"}).status_code == 200
        assert client.get("/v1/models", headers={"host": "[fe80::1]:8000"}).status_code == 200
        _refused(client.get("/v1/models", headers={"host": "evil.example:8000"}), 400, "is not a name of this server")


def test_the_key_guards_the_schema_and_an_empty_key_is_refused_at_start(llava, capsys):
    from vlmtune.cli import main

    with _client(llava, api_key="s3cret") as client:
        for path in ("/openapi.json", "/docs", "/v1/models"):
            _refused(client.get(path), 401, "missing or wrong API key")
        assert client.get("/openapi.json", headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200  # the page asks
    for key in ("", "  "):
        with pytest.raises(ValueError, match="the API key is empty"):
            ServeCfg(api_key=key)
        assert main(["serve", "--model", "runs/never-loaded", "--api-key", key]) == 2
        err = capsys.readouterr().err
        assert "vlmtune serve: error: serve: the API key is empty" in err and "Traceback" not in err


def test_a_half_sent_body_is_answered_408_and_closed(llava):
    """A client that sends its headers and part of its body, then nothing: after --body-timeout-s the server answers
    408 and closes the connection (the socket's own timeout only bounds a test that would otherwise hang)."""
    import uvicorn

    from vlmtune.serve.app import create_app

    app = create_app(lambda: llava, ServeCfg(body_timeout_s=0.5), "tiny", background=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.02)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + b'{"messages": [')
            received = b""
            while chunk := sock.recv(65536):  # until the server closes the connection
                received += chunk
    finally:
        server.should_exit = True
        thread.join(10)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower(), received[:300]
    assert b"the request body did not arrive within 0.5 s" in body


def test_the_server_reads_messages_with_the_formats_reader(llava):
    """An image in an assistant message, an empty content list: refused with data.formats.openai.read_messages'
    words and the part's path; an empty text part is still accepted (the OpenAI API accepts it)."""
    with _client(llava) as client:
        turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [
            {"type": "image_url", "image_url": {"url": _uri(RED)}}]}, {"role": "user", "content": "?"}]
        _refused(client.post("/v1/chat/completions", json={"messages": turns}), 400,
                 "messages[1].content[0]: unsupported assistant content part (images are accepted in user messages "
                 "only)", "messages[1].content[0]")
        _refused(client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": []}]}), 400,
                 "messages[0]: 'content' must be a string or a non-empty list of parts", "messages[0]")
        body = _body(RED)
        body["messages"][0]["content"].append({"type": "text", "text": ""})
        assert client.post("/v1/chat/completions", json=body).status_code == 200
