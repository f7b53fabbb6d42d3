"""`vlmtune serve`: the official openai client, streaming, dynamic batching, every limit, auth, a corrupt image,
parity with `vlmtune predict`, and the web page in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from serving import Server, _free_port

from vlmtune.config import RunCfg, ServeCfg

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fashion_dir):
    from helpers import tiny_run_cfg

    from vlmtune.train.loop import train

    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path_factory.mktemp("serve"), fashion_dir,
                                        train={"max_steps": 12, "eval_every": 0, "save_every": 12, "lr": 1e-2}))
    train(cfg)
    return cfg.run_dir


def _start(run_dir, **limits):
    from vlmtune.serve import build_app

    cfg = ServeCfg(model_name="tiny", **limits)
    app = build_app(run_dir, cfg, background=False)
    return Server(app), app


@pytest.fixture(scope="module")
def server(run_dir):
    s, app = _start(run_dir, max_batch_size=8, max_wait_ms=50, max_tokens=32, max_images=2, max_image_bytes=200_000,
                    max_image_pixels=100_000, max_body_bytes=1_000_000, max_prompt_tokens=120)
    s.app = app
    yield s
    s.stop()


def _uri(img: Image.Image, fmt="PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


def _val(fashion_dir):
    from vlmtune.data.store import read_samples

    return read_samples(fashion_dir, split="val")[0]


def _messages(fashion_dir, sample):
    img = Image.open(fashion_dir / sample.images[0])
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _uri(img)}},
                                         {"type": "text", "text": sample.question}]}]


def test_openai_client_answers_as_predict_does(server, run_dir, fashion_dir, tmp_path, capsys):
    from openai import OpenAI

    from vlmtune.cli import main

    samples = _val(fashion_dir)
    assert main(["predict", "--model", str(run_dir), "--data", str(fashion_dir), "--split", "val",
                 "--out", str(tmp_path / "p.jsonl"), "--max-new-tokens", "16"]) == 0
    expected = {r["id"]: r["prediction"] for r in map(json.loads, (tmp_path / "p.jsonl").read_text().splitlines())}
    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["tiny"]
    for s in samples:
        r = client.chat.completions.create(model="tiny", messages=_messages(fashion_dir, s), max_tokens=16)
        assert r.choices[0].message.content == expected[s.id], s.id
        assert r.usage.prompt_tokens > 16 and r.usage.completion_tokens >= 1  # 16 image tokens + the question
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        assert r.choices[0].finish_reason in ("stop", "length")


def test_streaming_gives_the_same_text(server, fashion_dir):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    s = _val(fashion_dir)[0]
    full = client.chat.completions.create(model="tiny", messages=_messages(fashion_dir, s), max_tokens=16)
    stream = client.chat.completions.create(model="tiny", messages=_messages(fashion_dir, s), max_tokens=16,
                                            stream=True, stream_options={"include_usage": True})
    deltas, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                deltas.append(c.delta.content)
            finish = c.finish_reason or finish
    assert "".join(deltas) == full.choices[0].message.content and len(deltas) >= 1
    assert finish == full.choices[0].finish_reason and usage.total_tokens == full.usage.total_tokens


def test_concurrent_requests_are_batched(server, fashion_dir):
    samples = _val(fashion_dir)
    single = {}
    for s in samples:  # one at a time
        r = httpx.post(server.url + "/v1/chat/completions", json={"messages": _messages(fashion_dir, s),
                                                                 "max_tokens": 16}, timeout=60)
        single[s.id] = r.json()["choices"][0]["message"]["content"]
    batcher = server.app.state.vlmtune.batcher
    before = batcher.batches
    jobs = samples * 2
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda s: httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
            "messages": _messages(fashion_dir, s), "max_tokens": 16}).json()["choices"][0]["message"]["content"],
            jobs))
    assert answers == [single[s.id] for s in jobs]  # batching does not change an answer
    assert batcher.batches - before < len(jobs) and max(batcher.batch_sizes[before - len(batcher.batch_sizes):]) > 1


def test_a_request_that_cannot_be_encoded_fails_alone_in_its_batch(server, fashion_dir):
    from vlmtune.data.sample import Sample, user
    from vlmtune.serve.batcher import Request

    batcher = server.app.state.vlmtune.batcher
    img = Image.open(fashion_dir / _val(fashion_dir)[0].images[0]).convert("RGB")
    good = Request(Sample(id="g", messages=[user("What colour is the top?")], images=["i"]), [img], 8)
    bad = Request(Sample(id="b", messages=[user("What colour is the top? " * 40)], images=["i"]), [img], 8)
    n = len(batcher.batch_sizes)
    futures = [batcher.submit(bad), batcher.submit(good)]
    with pytest.raises(ValueError, match="max_length"):
        futures[0].result(timeout=60)
    assert futures[1].result(timeout=60).text == batcher.predictor.complete([good.sample], [[img]], 8)[0].text
    assert batcher.batch_sizes[n:] == [1]  # the good request ran, without its batch-mate


def _post(server, body=None, raw=None, headers=None):
    return httpx.post(server.url + "/v1/chat/completions", json=body, content=raw, headers=headers, timeout=60)


def _msg(url, text="What colour is the top?"):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def test_every_limit_answers_with_the_right_status(server, fashion_dir):
    small = _uri(Image.new("RGB", (40, 30), "red"))
    ok = _post(server, {"messages": _msg(small), "max_tokens": 4})
    assert ok.status_code == 200
    cases = [
        ({"raw": b"x" * 1_000_001, "headers": {"content-type": "application/json"}}, 413, "request body"),
        ({"raw": (b"x" * 100_000 for _ in range(11)), "headers": {"content-type": "application/json"}}, 413,
         "request body exceeds"),  # chunked: no Content-Length
        ({"body": {"messages": _msg(_uri(Image.effect_noise((300, 300), 80).convert("RGB")))}}, 413,
         "exceeds the limit of 200000"),  # ~270 KB of noise
        ({"body": {"messages": _msg(_uri(Image.new("RGB", (400, 300), "red")))}}, 413,
         "400x300 pixels exceeds the limit of 100000"),
        ({"body": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": small}}] * 3
                                 + [{"type": "text", "text": "?"}]}]}}, 400, "more than 2 images"),
        ({"body": {"messages": _msg(small), "max_tokens": 33}}, 400, "max_tokens 33 exceeds the limit of 32"),
        ({"body": {"messages": _msg(small, "What colour is the top? " * 40)}}, 400, "max_length"),
        ({"body": {"messages": _msg(small), "n": 2}}, 400, "only n=1"),
        ({"raw": b"{not json", "headers": {"content-type": "application/json"}}, 400, "malformed JSON"),
        ({"body": {"messages": _msg("https://example.com/cat.png")}}, 400, "--allow-remote-images"),
        ({"body": {"messages": _msg("data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==")}}, 400, "cannot decode"),
        ({"body": {"messages": []}}, 400, "non-empty list"),
        ({"body": {"messages": _msg(small), "temperature": 3}}, 400, "temperature"),
    ]
    for kwargs, status, text in cases:
        r = _post(server, **kwargs)
        assert r.status_code == status, (text, r.status_code, r.text[:300])
        assert text in r.json()["error"]["message"], (text, r.json())
    after = _post(server, {"messages": _msg(small), "max_tokens": 4})  # the server survived all of them
    assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"] == \
        ok.json()["choices"][0]["message"]["content"]


def test_auth_timeout_remote_images_and_health(run_dir, monkeypatch):
    s, _ = _start(run_dir, api_key="s3cret", timeout_s=0.0001, allow_remote_images=True)
    try:
        body = {"messages": _msg(_uri(Image.new("RGB", (40, 30), "red")))}
        assert _post(s, body).status_code == 401
        assert _post(s, body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert httpx.get(s.url + "/v1/models", headers=good).status_code == 200
        assert httpx.get(s.url + "/health").json()["status"] == "ready"  # health needs no key
        r = _post(s, body, headers=good)
        assert r.status_code == 504 and "timed out" in r.json()["error"]["message"]
        r = _post(s, {"messages": _msg(f"http://127.0.0.1:{s.port}/health")}, headers=good)
        assert r.status_code == 400 and "non-public address (127.0.0.1)" in r.json()["error"]["message"]
    finally:
        s.stop()


def test_health_is_503_until_the_model_has_loaded(run_dir):
    from vlmtune.serve import load_predictor
    from vlmtune.serve.app import create_app

    release = threading.Event()
    cfg = ServeCfg()

    def slow_load():
        release.wait(30)
        return load_predictor(run_dir, cfg, 4)

    s = Server(create_app(slow_load, cfg, "tiny"))
    try:
        assert httpx.get(s.url + "/health").status_code == 503
        assert _post(s, {"messages": _msg(_uri(Image.new("RGB", (8, 8))))}).status_code == 503
        release.set()
        for _ in range(200):
            if httpx.get(s.url + "/health").status_code == 200:
                break
            time.sleep(0.05)
        assert httpx.get(s.url + "/health").json() == {"status": "ready", "model": "tiny"}
    finally:
        s.stop()


def test_the_web_page_answers_in_chromium(server, fashion_dir, tmp_path):
    assert Path(CHROMIUM).is_file() or shutil.which("chromium"), "make test installs Debian's chromium"
    from playwright.sync_api import sync_playwright

    s = _val(fashion_dir)[0]
    api = _post(server, {"messages": _messages(fashion_dir, s)}).json()  # the server's default max_tokens, as the page
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('tiny')")
        page.set_input_files("#file", str(fashion_dir / s.images[0]))
        page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
        page.fill("#question", s.question)
        page.click("#send")
        page.wait_for_selector("#chat .turn[data-done='1']", timeout=60_000)
        answer = page.text_content("#chat .turn[data-done='1']")
        classes = page.get_attribute("#chat .turn[data-done='1']", "class")
        browser.close()
    assert errors == [] and classes == "turn assistant", answer
    assert answer == api["choices"][0]["message"]["content"] and answer


def test_serve_exits_non_zero_with_the_reason_when_the_model_does_not_load(tmp_path):
    """`vlmtune serve` on a directory that is not a model: the load fails (in the loading thread, after the port is
    bound), the reason goes to stderr and the process exits non-zero, instead of answering 503 forever."""
    import os
    import subprocess
    import sys

    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text('{"hello": 1}')
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "vlmtune.cli", "serve", "--model", str(not_a_model), "--port", str(_free_port())]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)  # a hang fails the test here
    assert done.returncode == 2, done.stderr
    assert f"vlmtune serve: error: could not load the model from {not_a_model}" in done.stderr
    assert "is not a known family" in done.stderr  # the reason itself, not only that it failed
    assert "Traceback" not in done.stderr
