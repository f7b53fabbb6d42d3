"""Helpers for the serving tests: a tiny model that writes a scripted answer and can be held at a given step, and
uvicorn in a thread.

A random tiny model writes random bytes; the streaming, batching and cancellation tests need answers of many words
with leading spaces and multi-byte characters, and a request that stays in flight until the test lets it go (so a
timeout or a disconnect happens mid-generation without the test timing anything)."""

from __future__ import annotations

import functools
import socket
import threading
import time


def tiny_predictor(dropout: float = 0.3, max_length: int = 200):
    """A Predictor over the built-in model (TINY_BUILTIN, random weights) with dropout on everywhere: answers
    that differ between a generate call in eval mode and one that is not would show."""
    import torch
    from helpers import TINY_BUILTIN

    from vlmtune.config import BuiltinCfg
    from vlmtune.infer import Predictor
    from vlmtune.models import get_family
    from vlmtune.models.builtin import build_builtin

    loaded = build_builtin(BuiltinCfg(**TINY_BUILTIN), seed=3)
    for m in loaded.model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = dropout
        for name in ("attention_dropout", "dropout"):  # Llama's and CLIP's attention keep a float
            if isinstance(getattr(m, name, None), float):
                setattr(m, name, dropout)
    return Predictor(loaded=loaded, family=get_family("llava"), max_length=max_length)


class Script:
    """Wraps `model.forward` until `remove()`: the real forward runs (cache, masks, dropout as in eval), then the
    next token of every row is pushed to the next id of `answer` (then `end`), so the model writes that answer
    (`answer=None`: the model's own).

    `calls` counts forward passes (one per generated token). With `hold_at=k`, the k-th pass waits for `release`
    after setting `held`. `fail_on`: a token id; a batch whose prompt holds it raises `fail_with` (a request that
    fails in generate: transformers' "image features and image tokens do not match", inf/nan probabilities...)."""

    def __init__(self, model, answer: list[int] | None, end: int, hold_at: int | None = None,
                 fail_on: int | None = None, fail_with: type[Exception] = RuntimeError):
        self.model, self.answer, self.end = model, answer, end
        self.hold_at, self.fail_on, self.fail_with = hold_at, fail_on, fail_with
        self.calls, self.step = 0, 0
        self.held, self.release = threading.Event(), threading.Event()
        self.lock = threading.Lock()
        self.forward = model.forward
        functools.update_wrapper(self, self.forward)  # generate checks its kwargs against forward's signature
        model.forward = self

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.calls += 1
            calls = self.calls
        if calls == self.hold_at:
            self.held.set()
            assert self.release.wait(60), "the test never released the held step"
        ids = kwargs["input_ids"]
        prefill = ids.shape[1] > 1  # the prompt; then one new token per call
        if prefill and self.fail_on is not None and (ids == self.fail_on).any():
            raise self.fail_with("scripted failure in generate")
        self.step = 0 if prefill else self.step + 1
        out = self.forward(*args, **kwargs)
        if self.answer is not None:  # None: the model's own answer
            target = self.answer[self.step] if self.step < len(self.answer) else self.end
            out.logits[:, -1, target] += 1e4
        return out

    def remove(self) -> None:
        self.release.set()
        del self.model.forward  # the class's forward again


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a thread, on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def batcher(self):
        return self.app.state.vlmtune.batcher

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
