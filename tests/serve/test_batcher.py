"""The batcher under real mistakes: a request that fails in encode or generate fails alone and its batch-mates are
answered."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image
from serving import Script, Server, tiny_predictor

from vlmtune.config import ServeCfg
from vlmtune.data.sample import Sample, user
from vlmtune.models.family import SampleTooLong
from vlmtune.serve.batcher import Batcher, Request

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
