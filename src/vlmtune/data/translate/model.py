"""The translation model of `vlmtune data translate` (the rules: data/translate/__init__.py): `Translator` loads a
Marian or NLLB seq2seq model on first use and translates batches greedily, each text with its own output budget;
NLLB's language codes.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from vlmtune.config import check_model_path

NLLB_CODES = {
    "en": "eng_Latn", "ru": "rus_Cyrl", "pt": "por_Latn", "uk": "ukr_Cyrl", "de": "deu_Latn", "fr": "fra_Latn",
    "es": "spa_Latn", "it": "ita_Latn", "pl": "pol_Latn", "tr": "tur_Latn", "zh": "zho_Hans", "ja": "jpn_Jpan",
    "ko": "kor_Hang", "ar": "arb_Arab", "hi": "hin_Deva",
}
"""Short language codes -> the FLORES-200 codes NLLB's tokenizer uses."""

SENTENCE_END = re.compile(r"(?<=[.!?;。！？])\s+")


def nllb_code(lang: str) -> str:
    """"ru" -> "rus_Cyrl"; a full code ("rus_Cyrl") is returned as it is."""
    if "_" in lang:
        return lang
    if lang not in NLLB_CODES:
        raise ValueError(f"no NLLB code known for language {lang!r}: give the full code (e.g. 'rus_Cyrl') or one "
                         f"of {sorted(NLLB_CODES)}")
    return NLLB_CODES[lang]


def short_lang(lang: str) -> str:
    """"rus_Cyrl" -> "ru" (what caption metrics read from meta["lang"]); a short code is returned as it is."""
    return next((k for k, v in NLLB_CODES.items() if v == lang), lang)


def _token_id(tokenizer, token: str) -> int | None:
    """The id of `token` when the tokenizer has it as one token (not the unknown token), else None."""
    ids = tokenizer.convert_tokens_to_ids([token])
    tid = ids[0] if ids else None
    return None if tid is None or tid == tokenizer.unk_token_id else tid


# ---------------------------------------------------------------- the model


class Translator:
    """A seq2seq translation model for one language pair; the model itself is loaded on the first `translate`."""

    def __init__(self, model: str, src: str, tgt: str, batch_size: int = 16, device: str | None = None):
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        self.name, self.src, self.tgt, self.batch_size, self.device = str(model), src, tgt, batch_size, device
        check_model_path(model)
        try:
            self.config = AutoConfig.from_pretrained(model)
        except OSError as e:  # not a directory, not a hub id (or no network and not in the local cache)
            raise FileNotFoundError(f"{model}: cannot load a translation model from here: {e}") from None
        if not getattr(self.config, "is_encoder_decoder", False):
            raise ValueError(f"{model}: model type {self.config.model_type!r} is not a seq2seq translation model "
                             "(Marian, NLLB, ...)")
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        try:
            self.generation = GenerationConfig.from_pretrained(model)
        except OSError:  # no generation_config.json: the model config's defaults
            self.generation = GenerationConfig.from_model_config(self.config)
        self.forced_bos_token_id, self.source_token_id = self._language_codes()
        limits = [n for n in (getattr(self.tokenizer, "model_max_length", None),
                              getattr(self.config, "max_position_embeddings", None)) if n and n < 1_000_000]
        self.max_input_tokens = min(limits) if limits else 512
        """Longer texts are split into pieces of at most this many tokens (special tokens included)."""
        positions = getattr(self.config, "max_position_embeddings", None) or 1024
        self.max_output_tokens = min(self.max_input_tokens, positions - 2)
        """The largest output budget: the decoder start token and one more (see `generate`) must fit too."""
        self.stamp = self._stamp()
        self.key = hashlib.sha256(json.dumps(self.stamp, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self._model = None
        self.calls = 0
        """`generate` calls made (one per batch)."""

    def _language_codes(self) -> tuple[int | None, int | None]:
        """(forced_bos_token_id, source code id) for an NLLB-style tokenizer; (None, None) for a one-pair model."""
        tok = self.tokenizer
        if _token_id(tok, f"__{self.tgt}__") is not None:
            raise ValueError(f"{self.name}: an M2M100-style model ('__{self.tgt}__' language tokens) is not supported; "
                             "use an NLLB model (e.g. facebook/nllb-200-distilled-600M) or a Marian one")
        if not any(_token_id(tok, code) is not None for code in ("eng_Latn", "rus_Cyrl", "por_Latn")):
            return None, None  # no language codes: a one-pair (Marian) model
        src_code, tgt_code = nllb_code(self.src), nllb_code(self.tgt)
        src, tgt = _token_id(tok, src_code), _token_id(tok, tgt_code)
        missing = [code for code, tid in ((src_code, src), (tgt_code, tgt)) if tid is None]
        if missing or not hasattr(tok, "src_lang"):
            raise ValueError(f"{self.name}: an NLLB-style tokenizer without the language code(s) "
                             f"{missing or 'src_lang'}")
        tok.src_lang = src_code
        if src not in tok("a")["input_ids"]:
            raise ValueError(f"{self.name}: setting src_lang={src_code!r} did not mark the input with its code")
        return tgt, src

    def _stamp(self) -> dict:
        """What the cached translations depend on; its hash is the cache key."""
        local = Path(self.name)
        files = []
        if local.is_dir():  # a local model: its files' sizes and times (any change to the weights misses the cache)
            files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in local.iterdir() if p.is_file())
        volatile = ("transformers_version", "_name_or_path", "_commit_hash")
        return {"model": str(local.resolve()) if local.is_dir() else self.name,
                "commit": getattr(self.config, "_commit_hash", None), "files": files,
                "config": {k: v for k, v in self.config.to_dict().items() if k not in volatile},
                "generation": {k: v for k, v in self.generation.to_dict().items() if k not in volatile},
                "from": self.src, "to": self.tgt, "max_input_tokens": self.max_input_tokens}

    @property
    def model(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForSeq2SeqLM

            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            self._model = AutoModelForSeq2SeqLM.from_pretrained(self.name).to(device).eval()
        return self._model

    def n_tokens(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, verbose=False)["input_ids"]] if texts else []

    def pieces(self, text: str, where: str) -> list[str]:
        """`text`, or its sentences (then words) packed into pieces that fit the input limit."""
        if self.n_tokens([text])[0] <= self.max_input_tokens:
            return [text]
        units = []
        for sentence in SENTENCE_END.split(text.strip()):
            if self.n_tokens([sentence])[0] <= self.max_input_tokens:
                units.append(sentence)
                continue
            for word in sentence.split():
                if self.n_tokens([word])[0] > self.max_input_tokens:
                    raise ValueError(f"{where}: a single word of {self.n_tokens([word])[0]} tokens exceeds the "
                                     f"model's input limit of {self.max_input_tokens}; it cannot be translated whole")
                units.append(word)
        pieces = [units[0]]
        for unit in units[1:]:
            joined = f"{pieces[-1]} {unit}"
            if self.n_tokens([joined])[0] <= self.max_input_tokens:
                pieces[-1] = joined
            else:
                pieces.append(unit)
        return pieces

    def budget(self, n_input: int) -> int:
        """New tokens allowed for an input of `n_input` tokens: twice as many plus 16, within the model's limit."""
        return min(self.max_output_tokens, 2 * n_input + 16)

    def generate(self, texts: list[str]) -> list[tuple[str, str]]:
        """One `generate` call: [(translation, "stop" | "length")] per text. Each row is cut to its own budget, so
        a text's result does not depend on the other texts of its batch (greedy and beam decoding are prefix-stable
        per row)."""
        import torch

        model = self.model
        enc = self.tokenizer(texts, return_tensors="pt", padding=True).to(model.device)
        budgets = [self.budget(int(n)) for n in enc["attention_mask"].sum(dim=1).tolist()]
        # one token past the largest budget: a model that forces its end token at the length limit (Marian's
        # forced_eos_token_id) puts it outside every row's budget, so "length" is reported the same in any batch
        options: dict[str, Any] = {"do_sample": False, "max_new_tokens": max(budgets) + 1, "max_length": None}
        if self.forced_bos_token_id is not None:
            options["forced_bos_token_id"] = self.forced_bos_token_id
        with torch.inference_mode():
            out = model.generate(**enc, **options)  # [B, 1 + new]: the decoder start token, then the new tokens
        self.calls += 1
        eos = self.generation.eos_token_id
        stops = set(eos if isinstance(eos, list) else [eos]) - {None}
        results = []
        for row, budget in zip(out[:, 1:].tolist(), budgets, strict=True):
            row = row[:budget]
            end = next((i for i, t in enumerate(row) if t in stops), None)
            ids = row if end is None else row[:end]
            results.append((self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
                            "length" if end is None else "stop"))
        return results
