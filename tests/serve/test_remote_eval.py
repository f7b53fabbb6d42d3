"""`vlmtune eval --url` / `vlmtune predict --url`: a served model scored through the same runner and metrics as
the local Predictor (RemotePredictor, src/vlmtune/remote.py). Against `vlmtune serve` of the same model the
predictions and metrics are identical; a vLLM-like server is recognised by its /version; an unreachable or wrong
server is one clear line."""

from __future__ import annotations

import http.server
import json
import threading

import pytest
from fake_vllm import handler
from helpers import save_builtin
from serving import Server

from vlmtune import cli
from vlmtune.config import ServeCfg
from vlmtune.data.dataset import load_split
from vlmtune.data.images import load_images
from vlmtune.infer import Predictor
from vlmtune.remote import RemotePredictor, chat_messages
from vlmtune.serve.app import create_app


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_builtin(tmp_path_factory.mktemp("remote") / "model", seed=5)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_eval_through_vlmtune_serve_equals_the_local_eval(model_dir, fashion_dir, tmp_path, capsys):
    common = ["--data", str(fashion_dir), "--split", "test", "--max-new-tokens", "6", "--no-report"]
    assert cli.main(["eval", "--model", str(model_dir), "--out", str(tmp_path / "local"), *common]) == 0
    local = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    server = Server(create_app(lambda: Predictor.from_path(model_dir, device="cpu"), ServeCfg(), "tiny",
                               background=False))
    try:
        assert cli.main(["eval", "--url", server.url, "--out", str(tmp_path / "served"), "--batch-size", "3",
                         *common]) == 0
        captured = capsys.readouterr()
        served = json.loads(captured.out.strip().splitlines()[-1])
        assert "answers from vlmtune at" in captured.err
        mine = tmp_path / "served" / "predictions.jsonl"
        local_rows, served_rows = _rows(tmp_path / "local/predictions.jsonl"), _rows(mine)
        assert served_rows == local_rows and len(served_rows) == 5
        assert any(r["prediction"] for r in served_rows)  # a random model writes something: the test compares text
        assert {k: v for k, v in served.items() if k != "out"} == {k: v for k, v in local.items() if k != "out"}
        made_by = json.loads((tmp_path / "served" / "predictions.fingerprint.json").read_text())
        assert made_by["settings"]["engine"] == "vlmtune" and made_by["settings"]["max_new_tokens"] == 6
        # a server that is not the engine asked for is refused, in one line
        rc = cli.main(["eval", "--url", server.url, "--engine", "vllm", "--out", str(tmp_path / "x"), *common])
        err = capsys.readouterr().err
        assert rc == 2 and "is vlmtune, not vllm" in err and "Traceback" not in err
    finally:
        server.stop()


def test_predict_url_and_unreachable_server(fashion_dir, tmp_path, capsys):
    rc = cli.main(["predict", "--url", "http://127.0.0.1:9", "--data", str(fashion_dir), "--max-new-tokens", "4",
                   "--out", str(tmp_path / "p.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach the server" in err and "http://127.0.0.1:9/v1/models" in err
    rc = cli.main(["eval", "--url", "http://127.0.0.1:9", "--data", str(fashion_dir)])
    assert rc == 2 and "give --out" in capsys.readouterr().err
    rc = cli.main(["eval", "--url", "ftp://x", "--data", str(fashion_dir), "--out", str(tmp_path / "o")])
    assert rc == 2 and "an http(s) URL" in capsys.readouterr().err


def test_a_vllm_server_is_recognised_and_sent_the_samples_images(fashion_dir, tmp_path):
    seen: list = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler("served-run", seen))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        p = RemotePredictor.connect(url, engine="vllm", max_new_tokens=8, batch_size=4)
        assert (p.engine, p.version, p.model, p.url) == ("vllm", "0.32.0", "served-run", url.removesuffix("/v1"))
        samples = load_split(fashion_dir, "test", False)
        images = [load_images(fashion_dir, s) for s in samples]
        done = p.complete(samples, images)
        assert [c.text for c in done] == [f"1 image(s): {s.question}" for s in samples]  # in the samples' order
        assert all(c.finish_reason == "stop" and c.prompt_tokens == 7 for c in done)
        assert p.complete(samples[:1], images[:1], max_new_tokens=2)[0].finish_reason == "length"
        question = samples[0].question  # the requests went out concurrently: find the first sample's
        body = next(b for b in seen if b["messages"][-1]["content"][-1]["text"] == question)
        assert body["temperature"] == 0 and body["max_tokens"] == 8 and body["model"] == "served-run"
        assert body["messages"] == chat_messages(samples[0], images[0])
        uri = body["messages"][0]["content"][0]["image_url"]["url"]
        assert uri.startswith("data:image/png;base64,")
        from vlmtune.eval.runner import auto_max_new_tokens

        long = max(len(t) for s in samples for t in s.gold())  # the served tokenizer sizes `auto`
        assert auto_max_new_tokens(p.tokenizer(), samples)[0] == max(16, -(-(long + 1) * 5 // 4), long + 9)
        with pytest.raises(ValueError, match="serves \\['served-run'\\]"):
            RemotePredictor.connect(url, model="other")
        with pytest.raises(ValueError, match="is vllm, not vlmtune"):
            RemotePredictor.connect(url, engine="vlmtune")
    finally:
        httpd.shutdown()


def test_chat_messages_are_the_prompt_with_lossless_images(fashion_dir):
    import base64
    import io

    from PIL import Image

    sample = load_split(fashion_dir, "test", False)[0]
    images = load_images(fashion_dir, sample)
    messages = chat_messages(sample, images)
    assert [m["role"] for m in messages] == [m["role"] for m in sample.messages[:-1]]  # the answer is not sent
    uri = messages[0]["content"][0]["image_url"]["url"]
    back = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert back.size == images[0].size and back.tobytes() == images[0].convert(back.mode).tobytes()
