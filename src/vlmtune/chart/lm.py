"""The text model of DePlot's reasoning stage: greedy replies and sampled ones (self-consistency), from a local
directory, with stop strings; and a small random LM to run the whole path offline.

    lm = load_lm("models/my-llm")                       # a causal LM directory (AutoModelForCausalLM)
    lm.generate(prompt, max_new_tokens=128, stop=("\\n\\n",))
    lm.sample(prompt, n=5, temperature=0.7, max_new_tokens=128)     # 5 replies, reproducible per prompt (seed)

    vlmtune chart init-lm --out runs/tiny-lm            # random weights, tokenizer trained on chart text (offline)
    vlmtune chart init-lm --out runs/rugpt-2l --from DIR --layers 2   # a real config + tokenizer, random weights

A vlmtune run or VLM directory whose family takes text-only samples works too (through `Predictor`, text-only).
Sampling is seeded per prompt (`seed` xor the prompt's CRC-32) inside `torch.random.fork_rng`, so a question gets
the same samples whatever the order of the evaluation, and the caller's random state is left alone.

Any object with these two methods is a `TextLM` (a remote API client, a scripted fake in tests); the reasoners in
`vlmtune.chart.reason` take plain `prompt -> reply` and `(prompt, n, temperature) -> replies` callables, which
`generator` / `sampler` bind from a TextLM.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vlmtune.chart.prompts import cot_prompt, llm_prompt, pot_prompt
from vlmtune.data.charts import QUESTION_TYPES, make_question, random_spec
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.infer import Predictor
from vlmtune.models import family_of
from vlmtune.models.device import checkpoint_dtype, resolve_device


class TextLM(Protocol):
    def generate(self, prompt: str, max_new_tokens: int, stop: tuple[str, ...] = (), chat: bool = False) -> str: ...

    def sample(self, prompt: str, n: int, temperature: float, max_new_tokens: int, stop: tuple[str, ...] = (),
               chat: bool = False) -> list[str]: ...


def generator(lm: TextLM, max_new_tokens: int, stop: tuple[str, ...] = (), chat: bool = False) -> Callable[[str], str]:
    """`prompt -> reply` (greedy) with these settings bound."""
    return lambda prompt: lm.generate(prompt, max_new_tokens=max_new_tokens, stop=stop, chat=chat)


def sampler(lm: TextLM, max_new_tokens: int, stop: tuple[str, ...] = (),
            chat: bool = False) -> Callable[[str, int, float], list[str]]:
    """`(prompt, n, temperature) -> n replies` with these settings bound."""
    return lambda prompt, n, temperature: lm.sample(prompt, n=n, temperature=temperature,
                                                    max_new_tokens=max_new_tokens, stop=stop, chat=chat)


def _cut(text: str, stop: tuple[str, ...]) -> str:
    for s in stop:
        text = text.split(s, 1)[0]
    return text


@dataclass
class CausalLM:
    """A transformers causal LM and its tokenizer. `chat=True` wraps the prompt in the tokenizer's chat template
    (when it has one); otherwise the prompt is continued as a document, as DePlot's completion models were."""

    model: Any
    tokenizer: Any
    seed: int = 0

    @classmethod
    def from_path(cls, path: str | Path, device: str = "auto", dtype: str | None = None, seed: int = 0) -> CausalLM:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json (expected a causal LM directory for --llm)")
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, checkpoint_dtype(path, {}, dtype)))
        return cls(model=model.to(resolve_device(device)).eval(), tokenizer=tok, seed=seed)

    def _ids(self, prompt: str, chat: bool, max_new_tokens: int):
        tok = self.tokenizer
        if chat and tok.chat_template:
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)["input_ids"]
        else:
            ids = tok(prompt, return_tensors="pt").input_ids
        context = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", None)
        if context and ids.shape[1] + max_new_tokens > context:
            raise ValueError(f"the prompt has {ids.shape[1]} tokens; with {max_new_tokens} new ones it exceeds the "
                             f"LM's context of {context}")
        return ids.to(self.model.device)

    def _run(self, ids, max_new_tokens: int, stop: tuple[str, ...], **options) -> list[str]:
        import torch

        tok = self.tokenizer
        stop_options = {"stop_strings": list(stop), "tokenizer": tok} if stop else {}
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None
                                      else tok.eos_token_id, **stop_options, **options)
        return [_cut(tok.decode(row[ids.shape[1]:], skip_special_tokens=True), stop) for row in out]

    def generate(self, prompt: str, max_new_tokens: int, stop: tuple[str, ...] = (), chat: bool = False) -> str:
        ids = self._ids(prompt, chat, max_new_tokens)
        return self._run(ids, max_new_tokens, stop, do_sample=False)[0]

    def sample(self, prompt: str, n: int, temperature: float, max_new_tokens: int, stop: tuple[str, ...] = (),
               chat: bool = False) -> list[str]:
        import torch

        ids = self._ids(prompt, chat, max_new_tokens)
        devices = [self.model.device] if self.model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed ^ zlib.crc32(prompt.encode("utf-8")))
            return self._run(ids, max_new_tokens, stop, do_sample=True, temperature=temperature, top_p=1.0,
                             num_return_sequences=n)


@dataclass
class PredictorLM:
    """A vlmtune model used text-only through `Predictor` (its family's chat template is always applied)."""

    predictor: Any
    seed: int = 0

    def _complete(self, prompt: str, n: int, max_new_tokens: int, temperature: float) -> list[str]:
        sample = Sample(id="reason", messages=[user(prompt, n_images=0), assistant("?")], images=[])
        done = self.predictor.complete([sample] * n, [[]] * n, max_new_tokens=max_new_tokens,
                                       temperature=temperature)
        return [c.text for c in done]

    def generate(self, prompt: str, max_new_tokens: int, stop: tuple[str, ...] = (), chat: bool = False) -> str:
        return _cut(self._complete(prompt, 1, max_new_tokens, 0.0)[0], stop)

    def sample(self, prompt: str, n: int, temperature: float, max_new_tokens: int, stop: tuple[str, ...] = (),
               chat: bool = False) -> list[str]:
        import torch

        device = self.predictor.loaded.model.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed ^ zlib.crc32(prompt.encode("utf-8")))
            return [_cut(r, stop) for r in self._complete(prompt, n, max_new_tokens, temperature)]


def load_lm(path: str | Path, device: str = "auto", dtype: str | None = None, seed: int = 0) -> TextLM:
    """The TextLM of a local directory: a vlmtune run / VLM family directory whose family takes text-only samples
    (through Predictor), or a plain causal LM (transformers AutoModelForCausalLM)."""
    path = Path(path)
    try:
        is_vlm = (path / "run_config.yaml").is_file() or bool(family_of(path))
    except (ValueError, FileNotFoundError):
        is_vlm = False
    if is_vlm:
        predictor = Predictor.from_path(path, device=device, dtype=dtype)
        if not predictor.family.text_only:
            raise ValueError(f"{path}: the {predictor.family.name} family cannot answer text-only prompts; use a "
                             "causal LM or a family that takes text-only samples")
        return PredictorLM(predictor, seed=seed)
    return CausalLM.from_path(path, device=device, dtype=dtype, seed=seed)


# ------------------------------------------------------------------------------------------- a random LM offline


def _corpus() -> list[str]:
    """Text the reasoning prompts are made of: the exemplars (both styles) and tables and questions of the charts
    world."""
    r = random.Random(0)
    lines = []
    for _ in range(60):  # the exemplars repeat in every prompt; a few dozen tables give the rest
        spec = random_spec(r)
        table = spec.table()
        question, answer = make_question(r, spec, r.choice(QUESTION_TYPES[1:]))
        lines += [cot_prompt(table, question), pot_prompt(table, question), llm_prompt(table, question), answer]
    return lines


def init_lm(out: str | Path, source: str | Path | None = None, layers: int = 2, hidden: int = 64,
            seed: int = 0) -> dict:
    """Write a causal LM with random weights to `out`: from `source` (a directory with a config.json and a
    tokenizer, e.g. a model's files without weights), its depth cut to `layers`; or, without `source`, a small
    Llama (`hidden` wide, `layers` deep) with a byte-level BPE tokenizer trained here on chart-reasoning text. For
    running the reasoning setups offline: its replies are noise, its answers score ~0."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new directory")
    if source is not None:
        source = Path(source)
        if not (source / "config.json").is_file():
            raise FileNotFoundError(f"{source}: no config.json (--from takes a model directory)")
        config = AutoConfig.from_pretrained(source)
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if hasattr(config, key):
                setattr(config, key, layers)
        tok = AutoTokenizer.from_pretrained(source)
    else:
        tok = PreTrainedTokenizerFast(tokenizer_object=train_byte_bpe(_corpus(), ["<pad>", "<s>", "</s>"], 1024),
                                      pad_token="<pad>", bos_token="<s>", eos_token="</s>", model_max_length=4096)
        config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=4096, pad_token_id=tok.pad_token_id,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"out": str(out), "parameters": sum(p.numel() for p in model.parameters()),
            "layers": layers, "vocab": len(tok), "from": str(source) if source else None}


__all__ = ["CausalLM", "PredictorLM", "TextLM", "generator", "init_lm", "load_lm", "sampler"]
