"""RemotePredictor: the Predictor's `complete` over an OpenAI-compatible server (`vlmtune serve`, vLLM), so that
`vlmtune eval --url URL` scores a deployed model with the same metrics, prompts and prediction files as the run's
own evaluation.

    p = RemotePredictor.connect("http://127.0.0.1:8000", max_new_tokens=16)
    p.complete([sample], [[image]])                  # -> [Completion("red", ...)]

Each sample's prompt (its messages up to the last assistant turn) is sent as /v1/chat/completions messages with its
images inline as lossless PNG data URIs (the pixels the local Predictor sees: EXIF orientation applied, nothing
resized), greedy (temperature 0), `max_tokens` = max_new_tokens; a batch is sent as that many concurrent requests
(the server batches them). The standard library's HTTP client only: no extra package.
"""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from vlmtune.data.sample import Sample, message_text
from vlmtune.infer import Completion

TIMEOUT_S = 600.0


class RemoteError(RuntimeError):
    """The server could not be reached or refused a request; the message names the URL and the sample."""


def _base(url: str) -> str:
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--url {url!r}: an http(s) URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000")
    return url.removesuffix("/v1")


def _call(url: str, body: dict | None = None, timeout: float = TIMEOUT_S, api_key: str | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read().decode())
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:500]
        raise RemoteError(f"{url}: HTTP {e.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise RemoteError(f"{url}: cannot reach the server ({getattr(e, 'reason', e)})") from None
    except json.JSONDecodeError:
        raise RemoteError(f"{url}: the answer is not JSON (is this an OpenAI-compatible server?)") from None


def png_data_uri(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat_messages(sample: Sample, images: list) -> list[dict]:
    """The OpenAI chat messages of `sample`'s prompt: every turn before its last assistant answer (a sample ending
    with a user turn is all prompt), its image slots as image_url parts in order."""
    turns = sample.messages[:-1] if sample.messages[-1]["role"] == "assistant" else sample.messages
    pictures = iter(images)
    out = []
    for m in turns:
        if isinstance(m["content"], str) or m["role"] != "user":
            out.append({"role": m["role"], "content": message_text(m)})
            continue
        parts = [{"type": "image_url", "image_url": {"url": png_data_uri(next(pictures))}}
                 if p.get("type") == "image" else {"type": "text", "text": p["text"]} for p in m["content"]]
        out.append({"role": "user", "content": parts})
    return out


@dataclass
class RemotePredictor:
    url: str
    """The server's base URL (http://host:port, with or without /v1)."""
    model: str
    """The served model name (`GET /v1/models`)."""
    engine: str = "openai"
    """What the server is: "vllm" (it answers GET /version), "vlmtune" (its /v1/models carries a vlmtune block) or
    "openai" (another OpenAI-compatible server)."""
    version: str | None = None
    max_new_tokens: int = 16
    batch_size: int = 16
    """Requests in flight at once."""
    num_beams: int = 1
    timeout: float = TIMEOUT_S
    api_key: str | None = None

    @classmethod
    def connect(cls, url: str, model: str | None = None, engine: str | None = None, **kwargs) -> RemotePredictor:
        """Ask the server what it serves (`GET /v1/models`; `model` must be one of them, default the first) and what
        it is; `engine` "vllm" or "vlmtune" refuses a server that is not that."""
        base = _base(url)
        api_key = kwargs.pop("api_key", None) or os.environ.get("VLMTUNE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        listed = _call(f"{base}/v1/models", timeout=30, api_key=api_key)
        data = listed.get("data") if isinstance(listed, dict) else None
        names = [m.get("id") for m in data or [] if isinstance(m, dict)]
        if not names:
            raise RemoteError(f"{base}/v1/models lists no model")
        if model is not None and model not in names:
            raise ValueError(f"--served-model {model!r}: the server at {base} serves {names}")
        found, version = "openai", None
        if isinstance(listed.get("vlmtune"), dict) or any(isinstance(m, dict) and m.get("owned_by") == "vlmtune"
                                                           for m in data):
            found = "vlmtune"
        else:
            try:
                version = _call(f"{base}/version", timeout=30, api_key=api_key).get("version")
                found = "vllm" if version else found
            except RemoteError:
                pass
        if engine not in (None, "openai") and engine != found:
            raise ValueError(f"--engine {engine}: the server at {base} is {found}, not {engine}")
        if kwargs.get("num_beams", 1) != 1:
            raise ValueError("--num-beams: a remote server answers greedily (beam search is not in the chat API)")
        return cls(url=base, model=model or names[0], engine=found, version=version, api_key=api_key, **kwargs)

    def fingerprint(self) -> dict:
        """What an answer depends on (as `Predictor.fingerprint`): the server and the model it serves, the settings.
        A resumed evaluation keeps rows only from the same server, model and settings."""
        return {"model": f"{self.engine}:{self.url}/{self.model}",
                "settings": {"engine": self.engine, "engine_version": self.version,
                             "max_new_tokens": self.max_new_tokens, "num_beams": 1, "temperature": 0}}

    def tokenizer(self):
        """A stand-in for the served model's tokenizer where the server has one to offer (vLLM's POST /tokenize):
        called like a transformers tokenizer on a list of texts, for `auto_max_new_tokens`. None elsewhere."""
        if self.engine != "vllm":
            return None

        def tokenize(texts: list[str], add_special_tokens: bool = False) -> dict:
            ids = [_call(f"{self.url}/tokenize", {"model": self.model, "prompt": t,
                                                   "add_special_tokens": add_special_tokens}, 60,
                         self.api_key)["tokens"] for t in texts]
            return {"input_ids": ids}
        return tokenize

    def _one(self, sample: Sample, images: list, max_new_tokens: int) -> Completion:
        body = {"model": self.model, "messages": chat_messages(sample, images), "max_tokens": max_new_tokens,
                "temperature": 0, "stream": False}
        if self.engine == "vllm":  # vLLM's extension: the answer's token ids, for an exact comparison
            body["return_token_ids"] = True
        try:
            out = _call(f"{self.url}/v1/chat/completions", body, self.timeout, self.api_key)
        except RemoteError as e:
            raise RemoteError(f"sample {sample.id!r}: {e}") from None
        choice = (out.get("choices") or [{}])[0]
        text = ((choice.get("message") or {}).get("content") or "").strip()
        usage = out.get("usage") or {}
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        ids = list(choice.get("token_ids") or [])
        if ids and finish == "stop" and not isinstance(choice.get("stop_reason"), str):  # ended by an end token
            ids = ids[:-1]  # (the eos: stop_reason None; another of generation_config's: its id), which vLLM lists
            # and `Predictor.complete` does not; a stop string (never sent here) would be part of the answer
        return Completion(text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                          finish, ids)

    def complete(self, samples: list[Sample], images: list[list], max_new_tokens: int | None = None,
                 **_ignored) -> list[Completion]:
        """One request per sample, `batch_size` at a time, answers in the samples' order."""
        limit = max_new_tokens or self.max_new_tokens
        with ThreadPoolExecutor(max_workers=max(1, min(self.batch_size, len(samples)))) as pool:
            return list(pool.map(lambda pair: self._one(pair[0], pair[1], limit), zip(samples, images, strict=True)))
