"""Predictor: the one generation path, shared by `vlmtune eval`, `vlmtune predict`, evaluation during training,
serving and the demo.

    p = Predictor.from_path("runs/tiny_fashion_vqa")          # a run (its best checkpoint), checkpoint or HF dir
    p.ask(Image.open("x.png"), "What colour is the top?")     # -> "red"
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmtune.config import MAX_PROMPT_LENGTH, VideoCfg
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.video import encode_with_videos, sample_inputs
from vlmtune.models import get_family
from vlmtune.models.family import Loaded, ModelFamily, autocast_for, input_dtype
from vlmtune.models.loss import accepts_logits_to_keep, forward_losses, logit_prefix_of
from vlmtune.runs import load_for_inference, model_video_options, resolve_model_dir


def prompt_length(family, batch) -> int:
    """Leading columns of `generate`'s output that are not new tokens: a decoder-only model repeats its
    (left-padded) prompt; an encoder-decoder model starts with its decoder prompt (the decoder start token)."""
    if family.shift_labels:
        return batch.inputs["input_ids"].shape[1]
    decoder = batch.inputs.get("decoder_input_ids")
    return decoder.shape[1] if decoder is not None else 1


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    """"stop" (the model ended its answer) or "length" (max_new_tokens reached)."""
    token_ids: list[int] = field(default_factory=list)
    """The new tokens up to (not including) the end token."""


def stop_ids(model, tok) -> set[int]:
    """The tokens generation stops at: the model's `generation_config.eos_token_id` (one id or a list: BLIP-2's "\\n",
    Idefics3's `<end_of_utterance>`, Qwen's `<|im_end|>`), the tokenizer's eos, and the padding token `generate` fills
    finished rows with."""
    config = getattr(model, "generation_config", None)
    ids: set[int] = set()
    for x in (getattr(config, "eos_token_id", None), tok.eos_token_id, tok.pad_token_id):
        ids.update(x if isinstance(x, list) else [] if x is None else [x])
    return ids


def answer_text(tok, ids: list[int]) -> str:
    """The text of an answer's token ids: `Completion.text`, and what the pieces a `TextStream` hands out add up to."""
    return tok.decode(ids, skip_special_tokens=True).strip()


def cleans_up_spaces(tok) -> bool:
    """Whether `tok.decode` removes spaces before punctuation ("a ," -> "a,", "do n't" -> "don't"), so that a later
    token can change text decoded before it. Asked of the tokenizer itself: the setting alone does not say (recent
    transformers ignore it for BPE tokenizers)."""
    probe = "a ,"
    return answer_text(tok, tok.encode(probe, add_special_tokens=False)) != probe


class TextStream:
    """Incremental detokenisation of one answer: `push` its new token ids one at a time and get the text each adds;
    `finish` returns the rest. The pieces joined equal `answer_text` of all the ids, the non-streamed answer.

    As transformers' `TextIteratorStreamer` and vLLM's incremental detokenizer do, it decodes the whole growing list
    and hands out the new suffix: a token decoded alone loses what depends on its neighbours (the leading space of
    "Ġa"/"▁a", a character split over byte tokens). Text that later tokens may still change is held back until they
    come: the bytes of a character not yet complete (tokens that decode alone to U+FFFD: Cyrillic or accents over
    byte-level BPE tokens, an emoji over SentencePiece's <0xF0>... byte-fallback tokens, whose whole run decodes
    differently once it ends), trailing whitespace (the answer is stripped, and it may end there), and, for a
    tokenizer that cleans up spaces, the last word and the space before it. `sent`: text already handed out for this
    answer (a batch retried after a failure runs it again from the start). Decoding the whole list costs O(length)
    per token, small next to a forward pass at the lengths served (max_tokens <= 512 by default)."""

    def __init__(self, tok, sent: str = "", holds_word: bool | None = None):
        self.tok, self.ids, self.sent = tok, [], sent
        self.holds_word = cleans_up_spaces(tok) if holds_word is None else holds_word

    def push(self, token: int) -> str:
        self.ids.append(token)
        if "\ufffd" in self.tok.decode([token], skip_special_tokens=True):  # part of a character: nothing settles
            return ""
        text = self.tok.decode(self.ids, skip_special_tokens=True).rstrip("\ufffd").strip()
        if self.holds_word:
            text = re.sub(r"\s+\S*$", "", text)
        return self._advance(text)

    def finish(self) -> str:
        return self._advance(answer_text(self.tok, self.ids))

    def _advance(self, text: str) -> str:
        if not text.startswith(self.sent):  # decoded differently than what was sent: wait until it agrees again
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


def _answer_ids(row: list[int], stop: set[int]) -> list[int]:
    """New token ids up to the first stop token."""
    out = []
    for x in row:
        if x in stop:
            break
        out.append(x)
    return out


def _finish(row: list[int], answer: list[int], max_new_tokens: int) -> str:
    """"stop" when the row holds an end token (its `_answer_ids` stop short of it) or ended early, else "length"."""
    return "stop" if len(answer) < len(row) or len(row) < max_new_tokens else "length"


def _evaluation_output(name: str) -> bool:
    """A file `vlmtune eval` / `predict` may write into a model directory given as its --out."""
    return (name.endswith((".jsonl", ".fingerprint.json", ".html")) or name == "metrics.json"
            or name.startswith("submission_"))


def checkpoint_identity(path: str | Path) -> str:
    """What names a checkpoint's weights without reading them: its resolved directory and the name, size and mtime
    of each file in it. Only the model's own files: not its folders (`vlmtune eval --model CKPT` writes into
    CKPT/eval/), nor an evaluation's output written beside them. A checkpoint retrained or replaced in place differs;
    so does a copy elsewhere (another path), which costs a recomputed evaluation, never a stale one."""
    d = resolve_model_dir(path).resolve()
    files = sorted((f.name, st.st_size, st.st_mtime_ns) for f in d.iterdir()
                   if f.is_file() and not _evaluation_output(f.name) for st in [f.stat()])
    return json.dumps([str(d), files])


def weights_sha256(model) -> str:
    """sha256 of a model's parameters and buffers (names, dtypes, shapes, bytes): the identity of a model that exists
    only in memory. Reads every weight once, so a Predictor made from a checkpoint names it by its files instead."""
    import torch

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.device.type != "meta":
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


@dataclass
class Predictor:
    loaded: Loaded
    family: ModelFamily
    max_new_tokens: int = 16
    num_beams: int = 1
    batch_size: int = 16
    max_length: int = MAX_PROMPT_LENGTH
    """Prompt budget, image tokens included; a longer prompt is refused, never cut."""
    vision_cache: Any = None
    """A training run's VisionCache: generation takes the frozen vision side's output from it (validation images
    are then encoded by the vision tower once per run, not at every evaluation)."""
    autocast: Any = None
    """A callable returning the context generation runs in: the training loop passes its own autocast; by default
    `autocast_for(model)` (autocast only for a model that mixes float32 trainables with a half-precision base)."""
    video: VideoCfg = field(default_factory=VideoCfg)
    """How a sample's videos become frames (`data.video`): `from_path` takes the run's, so evaluation, prediction
    and serving sample a video as training did."""
    identity: str | None = None
    """What names the weights, for resuming an evaluation (eval/runner.py keeps only rows the same weights made):
    `from_path` sets the checkpoint's `checkpoint_identity`, the training loop its step and config. None: the
    sha256 of the weights in memory, computed when an evaluation that writes a predictions file asks for it."""

    def _autocast(self):
        return self.autocast() if self.autocast is not None else autocast_for(self.loaded.model)

    @classmethod
    def from_path(cls, path: str | Path, device="auto", dtype: str | None = None, **kwargs) -> Predictor:
        """The Predictor of a run, checkpoint or model directory, on `device` (`--device`: auto picks the GPU when
        there is one) in `dtype` (`--dtype`; default: the dtype the run trained in); see `vlmtune.models.device`."""
        loaded = load_for_inference(path, device=device, dtype=dtype)
        kwargs.setdefault("video", model_video_options(path))
        return cls(loaded=loaded, family=get_family(loaded.family), identity=checkpoint_identity(path), **kwargs)

    def inputs(self, root: Path, sample: Sample) -> tuple[Sample, list, list]:
        """(sample, images, videos) of a dataset sample as `complete` takes them (data/video.py `sample_inputs`,
        videos sampled by `self.video`)."""
        return sample_inputs(Path(root), sample, self.family, policy=self.video)

    def fingerprint(self) -> dict:
        """What an answer depends on besides its sample: the model ("model") and the generation settings
        ("settings"; answers are always greedy or beam search, never sampled). Not the batch size or the device:
        a run resumed with smaller batches after running out of memory, or on another machine, keeps its rows."""
        model = self.loaded.model
        return {"model": self.identity or weights_sha256(model),
                "settings": {"family": self.family.name, "max_new_tokens": self.max_new_tokens,
                             "num_beams": self.num_beams, "max_length": self.max_length,
                             "dtype": str(input_dtype(model))}}

    def generate(self, samples: list[Sample], images: list[list]) -> list[str]:
        """Greedy (or beam) answers for each sample's prompt (its messages up to the last assistant turn)."""
        answers: list[str] = []
        for i in range(0, len(samples), self.batch_size):
            done = self.complete(samples[i : i + self.batch_size], images[i : i + self.batch_size])
            answers.extend(c.text for c in done)
        return answers

    def complete(self, samples: list[Sample], images: list[list], max_new_tokens: int | None = None,
                 temperature: float = 0.0, top_p: float = 1.0, streamer=None,
                 stopping_criteria=None, videos: list[list] | None = None,
                 top_k: int | None = None) -> list[Completion]:
        """One `generate` call for a batch: greedy (temperature 0, or beam search with `num_beams`) or sampled.
        `streamer` (a transformers streamer) receives the new token ids of every row at each step; the serving
        batcher uses it to stream each request's text as it is written (through `TextStream`), and
        `stopping_criteria` (a transformers `StoppingCriteriaList`) to end the rows of requests that went away.
        `videos`: per sample its `Video`s, for a family with native video (`inputs` gives them). `top_k`: None
        leaves the model's generation config's (transformers fills an unset one with 50 when sampling), 0 is off."""
        import torch

        model = self.loaded.model
        was_training = model.training
        model.eval()
        try:
            batch = encode_with_videos(self.family, self.loaded.processor, samples, images, videos, "generate",
                                       self.max_length)
            if self.vision_cache is not None:
                batch.inputs = self.vision_cache.with_features(model, batch.inputs, [len(ims) for ims in images],
                                                               self.vision_cache.image_unit_keys(images), videos)
            batch = batch.to(model.device, input_dtype(model))
            options = {"do_sample": False, "num_beams": self.num_beams}
            if temperature > 0:
                options = {"do_sample": True, "temperature": temperature, "top_p": top_p, "num_beams": 1}
                options |= {"top_k": top_k} if top_k is not None else {}
            with torch.inference_mode(), self._autocast():
                out = model.generate(**batch.inputs, max_new_tokens=max_new_tokens or self.max_new_tokens,
                                     streamer=streamer, stopping_criteria=stopping_criteria, **options)
            start = prompt_length(self.family, batch)
            tok = self.loaded.processor.tokenizer
            stop = stop_ids(model, tok)
            rows = out[:, start:].tolist()
            answers = [_answer_ids(row, stop) for row in rows]  # the text ends where the model's answer ends
            mask = batch.inputs.get("attention_mask")
            prompts = mask.sum(dim=1).tolist() if mask is not None else [start] * len(samples)
            limit = max_new_tokens or self.max_new_tokens
            return [Completion(answer_text(tok, ids), int(p), len(ids), _finish(row, ids, limit), ids)
                    for p, row, ids in zip(prompts, rows, answers, strict=True)]
        finally:
            model.train(was_training)

    def loglik(self, samples: list[Sample], images: list[list]) -> list[float]:
        """Mean log-probability per token of each sample's assistant turns (its answer or caption) given the rest:
        how likely the model finds that text for that image (retrieval scores, answer ranking)."""
        import torch

        model = self.loaded.model
        was_training = model.training
        model.eval()
        scores: list[float] = []
        try:
            for i in range(0, len(samples), self.batch_size):
                chunk, chunk_images = samples[i : i + self.batch_size], images[i : i + self.batch_size]
                batch = self.family.encode(self.loaded.processor, chunk, chunk_images, "train", self.max_length)
                inputs = dict(batch.to(model.device, input_dtype(model)).inputs)
                labels = inputs.pop("labels")
                with torch.inference_mode(), self._autocast():
                    sums, counts = forward_losses(model, self.family, inputs, labels, accepts_logits_to_keep(model),
                                                  logit_prefix_of(self.family, model))
                scores.extend((-sums / counts.clamp(min=1)).tolist())
        finally:
            model.train(was_training)
        return scores

    def ask(self, image, question: str) -> str:
        """One image (or None) and one question -> the answer."""
        images = [image] if image is not None else []
        sample = Sample(id="ask", messages=[user(question, n_images=len(images)), assistant("?")],
                        images=["image"] * len(images))
        return self.generate([sample], [images])[0]
