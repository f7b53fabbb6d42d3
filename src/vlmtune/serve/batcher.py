"""Dynamic batching: concurrent requests are grouped into one `generate` call, and each request's text is streamed
back as the model writes it.

Requests wait in a queue. The worker thread takes the first one, waits up to `max_wait_ms` for more that share its
sampling parameters (temperature, top_p), up to `max_batch_size`, and runs them as one batch through the same
`Predictor.complete` that `vlmtune predict` uses. A `_RowStreamer` receives the new token of every row at each step
and hands each request its own text deltas (`infer.TextStream`: the deltas add up to the non-streamed answer).

A request that fails (it cannot be encoded, or `generate` fails on it) fails alone with its own error, and its
batch-mates are answered: after a failed batch, requests are encoded one by one, and if all encode, run one by one
(only then, not on every batch). A request whose client went away (timed out, disconnected) is cancelled: it is
dropped if still queued, and its row ends at the next step of a running batch (`_StopCancelled`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from transformers import StoppingCriteria, StoppingCriteriaList

from vlmtune.infer import TextStream, answer_text, cleans_up_spaces, stop_ids


@dataclass
class Request:
    sample: Any
    images: list
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    on_delta: Callable[[str], None] | None = None
    """Called from the worker thread with each new piece of text (streaming)."""
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set when nobody waits for the answer any more (timeout, disconnect, the future cancelled): generation stops."""
    streamed: str = ""
    """The text handed to `on_delta` so far (a retried batch does not send it twice)."""

    @property
    def key(self) -> tuple:
        return (self.temperature > 0, round(self.temperature, 6), round(self.top_p, 6))


class _RowStreamer:
    """A transformers streamer for a batch: each row's new tokens go through its request's `TextStream`, and the text
    they add to the request's `on_delta`. The first `put` is the prompt (skipped); each later one is a (batch,)
    tensor of new token ids. A row's text is complete (held-back text flushed) at its end token, at its own
    `max_new_tokens`, or when `generate` ends; a cancelled request gets nothing more."""

    def __init__(self, tokenizer, requests: list[Request], stop: set[int]):
        self.requests = requests
        holds_word = cleans_up_spaces(tokenizer)
        self.texts = [TextStream(tokenizer, r.streamed, holds_word) for r in requests]
        self.finished = [r.on_delta is None for r in requests]
        self.prompt_seen = False
        self.eos = stop  # where the Predictor ends each answer (`infer.stop_ids`), so streamed == returned text

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        tokens = value.reshape(-1).tolist()
        for i, (req, tok) in enumerate(zip(self.requests, tokens, strict=True)):
            if self.finished[i]:
                continue
            if tok in self.eos or req.cancelled.is_set():
                self._finish(i)
                continue
            self._send(req, self.texts[i].push(tok))
            if len(self.texts[i].ids) >= req.max_new_tokens:  # a batch-mate asked for more: this answer is complete
                self._finish(i)

    def end(self) -> None:
        for i in range(len(self.requests)):
            if not self.finished[i]:
                self._finish(i)

    def _finish(self, i: int) -> None:
        self.finished[i] = True
        if not self.requests[i].cancelled.is_set():
            self._send(self.requests[i], self.texts[i].finish())

    @staticmethod
    def _send(req: Request, delta: str) -> None:
        if delta:
            req.streamed += delta
            try:
                req.on_delta(delta)
            except Exception:  # noqa: BLE001 - the receiver is gone (its event loop closed): so is the request
                req.cancelled.set()


class _StopCancelled(StoppingCriteria):
    """Ends the rows of cancelled requests (timed out, client gone) at the next step. Their rows are padded from
    there; `generate` returns as soon as every row has ended, so a batch whose requests have all gone stops at once
    (it cannot drop one row from a running batch: the others go on, and the cancelled row with them, padded)."""

    def __init__(self, requests: list[Request]):
        self.requests = requests

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        per = input_ids.shape[0] // len(self.requests)  # rows per request: num_beams
        cancelled = [r.cancelled.is_set() for r in self.requests for _ in range(per)]
        return torch.tensor(cancelled, dtype=torch.bool, device=input_ids.device)


class Batcher:
    def __init__(self, predictor, max_batch_size: int = 8, max_wait_ms: float = 10.0):
        self.predictor = predictor
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.queue: queue.Queue[Request] = queue.Queue()
        self.batches = 0
        """How many generate calls were made (tests and the load benchmark read it)."""
        self.batch_sizes: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vlmtune-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> Future:
        # whoever gives up on the future and cancels it (asyncio.wait_for at a timeout...) cancels the request
        request.future.add_done_callback(lambda f: f.cancelled() and request.cancelled.set())
        self.queue.put(request)
        return request.future

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _collect(self) -> list[Request]:
        first = self.queue.get(timeout=0.1)
        batch, held = [first], []
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                r = self.queue.get(timeout=left)
            except queue.Empty:
                break
            (batch if r.key == first.key else held).append(r)
        for r in held:  # other sampling parameters: the next batch
            self.queue.put(r)
        return batch

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self._collect()
            except queue.Empty:
                continue
            self._serve(batch)

    def _serve(self, batch: list[Request]) -> None:
        """Run the batch as one generate call. If it fails, only the requests that caused it fail: each request is
        encoded alone, one that cannot be (too long, a family limit, an image its processor refuses) gets its own
        error, and the rest run together again; if every request encodes, each runs alone, so one that fails in
        generate fails alone too."""
        batch = self._live(batch)
        if not batch:
            return
        try:
            self._generate(batch)
            return
        except Exception as e:  # noqa: BLE001 - the worker must survive anything one request does
            if len(batch) == 1:
                self._fail(batch[0], e)
                return
        ok = [r for r in batch if self._encodes(r)]
        if len(ok) < len(batch):
            self._serve(ok)
        else:
            for r in ok:
                self._serve([r])

    @staticmethod
    def _live(batch: list[Request]) -> list[Request]:
        """The requests someone still waits for; the others' futures are cancelled."""
        for r in batch:
            if r.cancelled.is_set():
                r.future.cancel()
        return [r for r in batch if not r.future.done()]

    def _encodes(self, r: Request) -> bool:
        try:
            self.predictor.family.encode(self.predictor.loaded.processor, [r.sample], [r.images], "generate",
                                         self.predictor.max_length)
            return True
        except Exception as e:  # noqa: BLE001 - the request's own error, whatever it is
            self._fail(r, e)
            return False

    @staticmethod
    def _fail(r: Request, error: Exception) -> None:
        with contextlib.suppress(InvalidStateError):  # cancelled meanwhile, from the server's thread
            r.future.set_exception(error)

    def _generate(self, ok: list[Request]) -> None:
        """One generate call for `ok`; each request's future gets its Completion (a cancelled one is cancelled)."""
        tok = self.predictor.loaded.processor.tokenizer
        stop = stop_ids(self.predictor.loaded.model, tok)
        streamer = _RowStreamer(tok, ok, stop) if any(r.on_delta for r in ok) else None
        done = self.predictor.complete([r.sample for r in ok], [r.images for r in ok],
                                       max_new_tokens=max(r.max_new_tokens for r in ok),
                                       temperature=ok[0].temperature, top_p=ok[0].top_p, streamer=streamer,
                                       stopping_criteria=StoppingCriteriaList([_StopCancelled(ok)]))
        self.batches += 1
        self.batch_sizes.append(len(ok))
        for r, c in zip(ok, done, strict=True):
            if len(c.token_ids) > r.max_new_tokens:  # a batch-mate asked for more: greedy rows do not depend
                ids = c.token_ids[: r.max_new_tokens]  # on the limit, so the first N tokens are its answer
                c.text = answer_text(tok, ids)
                c.token_ids, c.completion_tokens, c.finish_reason = ids, len(ids), "length"
            if r.cancelled.is_set():
                r.future.cancel()
            with contextlib.suppress(InvalidStateError):  # cancelled meanwhile, from the server's thread
                r.future.set_result(c)
