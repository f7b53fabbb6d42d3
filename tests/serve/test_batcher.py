"""The batcher under real mistakes and real clients: a request that fails in encode or generate fails alone and its
batch-mates are answered; a request that timed out or whose client disconnected stops generating (counted in
forward passes, not time), and the next request is answered normally."""

from __future__ import annotations

import base64
import io
import threading
from concurrent.futures import CancelledError, ThreadPoolExecutor

import httpx
import pytest
from PIL import Image
from serving import Script, Server, tiny_predictor

from vlmtune.config import ServeCfg
from vlmtune.data.sample import Sample, user
from vlmtune.models.family import SampleTooLong
from vlmtune.serve.batcher import Batcher, Request

ANSWER = " a person wearing an orange regata and blue trousers with a plain pattern"
GOOD = ["What colour is the top?", "What is the person wearing?", "Describe the image."]
BAD = "Is there a zebra?"


@pytest.fixture(scope="module")
def predictor():
    return tiny_predictor()


def _image(colour: str) -> Image.Image:
    return Image.new("RGB", (32, 32), colour)


def _request(question: str, colour: str = "red", max_new_tokens: int = 6) -> Request:
    return Request(Sample(id=question[:8], messages=[user(question)], images=["i"]), [_image(colour)], max_new_tokens)


def _uri(colour: str) -> str:
    buf = io.BytesIO()
    _image(colour).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _body(question: str, colour: str = "red", **options) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _uri(colour)}},
                                                      {"type": "text", "text": question}]}], **options}


def _poison(predictor) -> int:
    """A token of BAD's prompt that no good prompt holds: a batch with it fails in generate (`Script.fail_on`)."""
    def prompt(question: str) -> list[int]:
        r = _request(question)
        batch = predictor.family.encode(predictor.loaded.processor, [r.sample], [r.images], "generate", 200)
        return batch.inputs["input_ids"][0].tolist()

    good = {t for q in GOOD for t in prompt(q)}
    return next(t for t in prompt(BAD) if t not in good)


def _server(predictor, **limits) -> Server:
    from vlmtune.serve.app import create_app

    return Server(create_app(lambda: predictor, ServeCfg(**limits), "tiny", background=False))


def _spy(batcher: Batcher) -> list[Request]:
    """The requests the server submits, as they are submitted."""
    jobs, submit = [], batcher.submit
    batcher.submit = lambda job: (jobs.append(job), submit(job))[1]
    return jobs


def test_bad_requests_fail_alone_and_their_batch_mates_are_answered(predictor):
    """Six requests in one batch: three good, one too long and one whose text holds a literal <image> (both fail
    in encode), one that fails in generate. Each bad one gets its own error; the good ones get the answers they get
    alone (the model's own, dropout on); the worker goes on serving."""
    tok = predictor.loaded.processor.tokenizer
    alone = {q: predictor.complete([_request(q, c).sample], [[_image(c)]], 6)[0].text
             for q, c in zip(GOOD, ("red", "blue", "green"), strict=True)}
    script = Script(predictor.loaded.model, None, tok.eos_token_id, fail_on=_poison(predictor))
    batcher = Batcher(predictor, max_batch_size=6, max_wait_ms=60_000)  # the batch closes when all six are in
    try:
        good = [_request(q, c) for q, c in zip(GOOD, ("red", "blue", "green"), strict=True)]
        too_long = _request("What colour is the top? " * 40)
        placeholder = _request("What is <image> here?")
        fails_in_generate = _request(BAD)
        requests = [good[0], too_long, good[1], placeholder, fails_in_generate, good[2]]
        futures = [batcher.submit(r) for r in requests]
        assert [futures[i].result(timeout=120).text for i in (0, 2, 5)] == [alone[q] for q in GOOD]
        with pytest.raises(SampleTooLong, match="max_length"):
            futures[1].result()
        with pytest.raises(ValueError, match="<image> tokens"):
            futures[3].result()
        with pytest.raises(RuntimeError, match="scripted failure"):
            futures[4].result()
        batcher.max_batch_size = 1  # the next batch: this request alone, without waiting for five more
        after = batcher.submit(_request(GOOD[0], "red"))
        assert after.result(timeout=60).text == alone[GOOD[0]]
    finally:
        batcher.close()
        script.remove()


def test_through_the_server_a_request_failing_in_generate_is_a_4xx_alone(predictor):
    """Four concurrent requests in one batch, one of them failing in generate with a ValueError (the user's input:
    transformers' "image features and image tokens do not match"): it gets 400 with its message, the three others
    200 with their own answers."""
    tok = predictor.loaded.processor.tokenizer
    alone = {q: predictor.complete([_request(q).sample], [[_image("red")]], 6)[0].text for q in GOOD}
    script = Script(predictor.loaded.model, None, tok.eos_token_id, fail_on=_poison(predictor), fail_with=ValueError)
    server = _server(predictor, max_batch_size=4, max_wait_ms=60_000)
    try:
        questions = [*GOOD, BAD]
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda q: httpx.post(server.url + "/v1/chat/completions", timeout=120,
                                                         json=_body(q, max_tokens=6)), questions))
        assert [r.status_code for r in replies] == [200, 200, 200, 400], [r.text[:200] for r in replies]
        assert [r.json()["choices"][0]["message"]["content"] for r in replies[:3]] == [alone[q] for q in GOOD]
        assert "scripted failure" in replies[3].json()["error"]["message"]
    finally:
        server.stop()
        script.remove()


def _scripted(predictor, hold_at: int) -> tuple[Script, list[int]]:
    tok = predictor.loaded.processor.tokenizer
    answer = tok.encode(ANSWER, add_special_tokens=False)
    assert len(answer) > hold_at + 5  # left alone, the dead request would run many more steps
    return Script(predictor.loaded.model, answer, tok.eos_token_id, hold_at=hold_at), answer


def test_a_timed_out_request_stops_generating_and_the_next_is_answered(predictor):
    """The request is held at its 2nd forward pass until it has had its 504; released, its generation ends at that
    step (2 passes in all, not one per token of its long answer), and a one-token request after it gets 200 in one
    pass."""
    script, answer = _scripted(predictor, hold_at=2)
    server = _server(predictor, timeout_s=2.0, max_tokens=64)
    try:
        jobs = _spy(server.batcher)
        dead = httpx.post(server.url + "/v1/chat/completions", json=_body("Describe.", max_tokens=64), timeout=60)
        assert dead.status_code == 504 and script.held.wait(30)
        script.release.set()
        with pytest.raises(CancelledError):  # the batcher is done with it
            jobs[0].future.result(timeout=60)
        assert script.calls == 2
        after = httpx.post(server.url + "/v1/chat/completions", json=_body("Describe.", max_tokens=1), timeout=60)
        assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"] == "a"
        assert script.calls == 3
    finally:
        server.stop()
        script.remove()


def _read_first_delta(url: str, body: dict, outcomes: list) -> None:
    """Stream until the first piece of text arrives, then close the connection (a user closing the page)."""
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                outcomes.append("first delta")
                break


def _give_up(url: str, body: dict, outcomes: list) -> None:
    """Wait for the answer for 3 s, then close the connection (a client's own read timeout)."""
    try:
        httpx.post(url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=3))
    except httpx.ReadTimeout:
        outcomes.append("gave up")


@pytest.mark.parametrize("stream", [True, False])
def test_disconnected_clients_stop_generating(predictor, stream):
    """Four clients in one batch disconnect while it is held at its 2nd forward pass: streaming clients after
    their first piece of text, plain ones by giving up (their own read timeout). Released, the batch ends at that
    step (2 passes, not one per token of the long answer), and a one-token request after it gets 200 in one pass."""
    script, answer = _scripted(predictor, hold_at=2)
    server = _server(predictor, max_batch_size=4, max_wait_ms=60_000, max_tokens=64)
    try:
        jobs = _spy(server.batcher)
        body, outcomes = _body("Describe.", max_tokens=64, stream=stream), []
        client = _read_first_delta if stream else _give_up
        clients = [threading.Thread(target=client, args=(server.url, body, outcomes)) for _ in range(4)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(60)
        assert outcomes == ["first delta" if stream else "gave up"] * 4
        assert len(jobs) == 4 and script.held.wait(30)
        assert all(job.cancelled.wait(30) for job in jobs)  # the server saw each client go
        script.release.set()
        for job in jobs:
            with pytest.raises(CancelledError):  # the batcher is done with it
                job.future.result(timeout=60)
        assert script.calls == 2
        server.batcher.max_batch_size = 1  # the next batch: one request, without waiting for three more
        after = httpx.post(server.url + "/v1/chat/completions", json=_body("Describe.", max_tokens=1), timeout=60)
        assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"] == "a"
        assert script.calls == 3
    finally:
        server.stop()
        script.remove()
