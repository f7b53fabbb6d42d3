"""Translate a dataset's text into another language with a seq2seq translation model: `vlmtune data translate`.

The Russian meme captioner translated its Flickr30k and VizWiz captions by hand in a spreadsheet; this does it with
a translation model, keeps the original text in every sample, and costs nothing to run again:

    vlmtune data translate data/vizwiz --to ru --model Helsinki-NLP/opus-mt-en-ru          # -> data/vizwiz-ru
    vlmtune data translate data/flickr30k --to ru --model facebook/nllb-200-distilled-600M --fields references

Models (loaded with AutoModelForSeq2SeqLM + AutoTokenizer, never with remote code):
* Marian (Helsinki-NLP/opus-mt-SRC-TGT): one model per language pair, no language codes; --from/--to are recorded.
  Their tokenizer is sentencepiece-based: `pip install sentencepiece` for real opus-mt checkpoints.
* NLLB (facebook/nllb-200-*): one model, many languages, told which by codes such as "eng_Latn" and "rus_Cyrl":
  the tokenizer's `src_lang` marks the source and `forced_bos_token_id` makes the first generated token the target
  code. Short codes (en, ru, pt, ...) are mapped with `NLLB_CODES`; full codes are accepted as they are. A model is
  treated as NLLB-style when its tokenizer knows the target code (the tokenizer, not the model's name, decides).
* M2M100 (facebook/m2m100_*, "__ru__" language tokens) is refused with a clear error: its tokenizer needs
  sentencepiece and this path is untested; NLLB covers the same languages.

What is translated (`fields`): "prompts" (user and system turns), "answers" (assistant turns and `answers`),
"references" (`references`). Each translated sample keeps its original text in
`meta["original"] = {"lang": "en", "messages": [...], "answers": [...], "references": [...]}`, gets
`meta["lang"] = "ru"` (caption metrics pick their tokenizer from it) and `meta["translation"] = {"model", "key"}`.
Samples whose `meta["lang"]` is another language than --from are copied unchanged (a multilingual dataset).

The output is a new dataset directory (default: DIR-<to> beside DIR) with its own manifest.jsonl and copies of the
images, so `vlmtune train` / `eval` use it like any other; DIR itself is never changed except for its cache.

Batched, cached, resumable:
* the distinct texts are translated once each (VQA answers such as "yes" repeat thousands of times), longest first
  in batches of `batch_size` (little padding), then put back in their places;
* every finished batch is appended to DIR/.cache/translate/<key>.jsonl; the key hashes the model (its name, config,
  generation config, commit or file sizes and times), both languages and the input limit, so another model or
  language pair never reads these rows. An interrupted run continues from the cache, and a finished one re-runs
  without loading the model at all. The manifest is written atomically at the end.
* greedy decoding (or the model's own beam setting), with each text's output budget fixed by its own length, so
  the result does not depend on the batch size or on which texts share a batch.

Never silent about text it cannot translate whole: a text longer than the model's input limit is split at sentence
(then word) boundaries and the pieces translated one by one, with a warning; a translation that reaches its token
budget without ending is reported ("length_limited"); a sample whose text translates to nothing is left out and
listed in OUT/rejected.jsonl; empty source strings stay empty; bad records stop the run naming file and line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlmtune.config import check_model_path
from vlmtune.data.sample import Sample
from vlmtune.data.store import MANIFEST, read_samples, write_jsonl

FIELDS = ("prompts", "answers", "references")
CACHE_DIR = Path(".cache") / "translate"
REJECTED = "rejected.jsonl"

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


# ---------------------------------------------------------------- the cache


class TranslationCache:
    """Translations of one model + language pair: DIR/.cache/translate/<key>.jsonl, one {"text", "translation",
    "finish"} row per distinct source text, appended batch by batch (a torn last line is ignored); <key>.json beside
    it says which model and languages the key stands for."""

    def __init__(self, directory: Path, key: str, stamp: dict):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{key}.jsonl"
        info = directory / f"{key}.json"
        if not info.exists():
            info.write_text(json.dumps(stamp, indent=1, default=str) + "\n", encoding="utf-8")
        self.rows: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.rows[row["text"]] = row
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        if self.path.exists() and not self.path.read_bytes().endswith(b"\n"):
            with open(self.path, "a", encoding="utf-8") as f:  # end a torn line so the next rows stand alone
                f.write("\n")

    def __contains__(self, text: str) -> bool:
        return text in self.rows

    def __getitem__(self, text: str) -> dict:
        return self.rows[text]

    def add(self, rows: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.rows[row["text"]] = row
            f.flush()
            os.fsync(f.fileno())


def translate_missing(translator: Translator, texts: list[str], cache: TranslationCache,
                      progress: bool = False) -> int:
    """Translate the texts not yet in `cache`, longest first in batches, appending each batch to the cache as it
    completes; returns how many were translated."""
    todo = sorted({t for t in texts if t.strip() and t not in cache})
    lengths = dict(zip(todo, translator.n_tokens(todo), strict=True))
    todo.sort(key=lambda t: -lengths[t])  # similar lengths share a batch: little padding
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="translate", file=sys.stderr)
    try:
        for i in range(0, len(todo), translator.batch_size):
            batch = todo[i : i + translator.batch_size]
            done = translator.generate(batch)
            cache.add([{"text": t, "translation": tr, "finish": finish}
                       for t, (tr, finish) in zip(batch, done, strict=True)])
            if bar:
                bar.update(len(batch))
    finally:
        if bar:
            bar.close()
    return len(todo)


# ---------------------------------------------------------------- samples


def map_texts(sample: Sample, fields: tuple[str, ...], fn: Callable[[str, str], str]) -> Sample:
    """The sample with every text of `fields` replaced by fn(text, where); `where` names the sample and the place."""
    def text_of(value, where: str) -> str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: text is {type(value).__name__}, not a string")
        return fn(value, where)

    messages = []
    for i, m in enumerate(sample.messages):
        group = "answers" if m["role"] == "assistant" else "prompts"
        where = f"sample {sample.id!r} message {i}"
        if group not in fields:
            messages.append(m)
        elif isinstance(m["content"], str):
            messages.append({**m, "content": text_of(m["content"], where)})
        else:
            messages.append({**m, "content": [{**part, "text": text_of(part.get("text"), where)}
                                              if part.get("type") == "text" else part for part in m["content"]]})
    lists = {}
    for name in ("answers", "references"):
        values = getattr(sample, name)
        if values is not None and name in fields:
            values = [text_of(v, f"sample {sample.id!r} {name}[{k}]") for k, v in enumerate(values)]
        lists[name] = values
    return dataclasses.replace(sample, messages=messages, **lists)


def texts_of(sample: Sample, fields: tuple[str, ...]) -> list[tuple[str, str]]:
    """Every (text, where) of `fields` in the sample, in order."""
    found: list[tuple[str, str]] = []

    def record(text: str, where: str) -> str:
        found.append((text, where))
        return text

    map_texts(sample, fields, record)
    return found


def _original(sample: Sample, fields: tuple[str, ...], src: str) -> dict:
    original: dict[str, Any] = {"lang": src}
    if {"prompts", "answers"} & set(fields):
        original["messages"] = sample.messages
    for name in ("answers", "references"):
        if name in fields and getattr(sample, name) is not None:
            original[name] = getattr(sample, name)
    return original


def parse_fields(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    fields = tuple(f.strip() for f in (text.split(",") if isinstance(text, str) else text) if f.strip())
    unknown = set(fields) - set(FIELDS)
    if unknown or not fields:
        raise ValueError(f"unknown field(s) {sorted(unknown)} to translate; choose from {', '.join(FIELDS)}")
    return fields


def translate_dataset(root: str | Path, to: str, model: str, src: str = "en", out: str | Path | None = None,
                      fields: tuple[str, ...] | str = FIELDS, batch_size: int = 16, progress: bool = False,
                      translator: Translator | None = None) -> dict:
    """Translate the dataset at `root` into `to` (see the module docstring); returns the summary `vlmtune data
    translate` prints. `translator`: an already loaded one (tests count its calls)."""
    from vlmtune.data.formats.base import copy_image

    root = Path(root)
    fields = parse_fields(fields)
    out = Path(out) if out else root.parent / f"{root.name}-{to}"
    if out.resolve() == root.resolve():
        raise ValueError(f"{out}: the output must be a new directory, not the dataset being translated")
    samples, _ = read_samples(root, check_images=False)  # a bad record raises, naming file and line
    translator = translator or Translator(model, src, to, batch_size)
    cache = TranslationCache(root / CACHE_DIR, translator.key, translator.stamp)

    def ours(s: Sample) -> bool:
        lang = s.meta.get("lang")
        return lang is None or lang in {src, NLLB_CODES.get(src, src)}

    todo = [s for s in samples if ours(s)]
    pieces: dict[str, list[str]] = {}  # each distinct non-empty text -> the pieces it is translated in
    chunked: list[str] = []
    for s in todo:
        texts = texts_of(s, fields)
        for text, where in texts:
            if text.strip() and text not in pieces:
                pieces[text] = translator.pieces(text, where)
        if any(len(pieces.get(text, ())) > 1 for text, _ in texts):
            chunked.append(s.id)
    if chunked:
        print(f"warning: {len(chunked)} sample(s) have text longer than the model's input limit of "
              f"{translator.max_input_tokens} tokens; it was split at sentence/word boundaries and translated in "
              f"pieces: {', '.join(chunked[:10])}{' ...' if len(chunked) > 10 else ''}", file=sys.stderr)
    unique = [p for ps in pieces.values() for p in ps]
    cached_before = sum(1 for p in set(unique) if p in cache)
    new = translate_missing(translator, unique, cache, progress)

    length_limited: set[str] = set()
    empty: dict[str, str] = {}

    def translated(sample_id: str):
        def fn(text: str, where: str) -> str:
            if not text.strip():
                return text
            rows = [cache[p] for p in pieces[text]]
            if any(r["finish"] == "length" for r in rows):
                length_limited.add(sample_id)
            result = " ".join(r["translation"] for r in rows).strip()
            if not result:
                empty.setdefault(sample_id, f"{where}: {text[:60]!r} translated to an empty string")
            return result
        return fn

    stamp = {"model": translator.name, "key": translator.key}
    written, rejected = [], []
    for s in samples:
        if not ours(s):
            written.append(s)
            continue
        new_sample = map_texts(s, fields, translated(s.id))
        if s.id in empty:
            rejected.append({"id": s.id, "error": empty[s.id], "sample": s.to_json()})
            continue
        meta = {**s.meta, "lang": short_lang(to), "original": _original(s, fields, src), "translation": stamp}
        written.append(dataclasses.replace(new_sample, meta=meta))
    if length_limited:
        print(f"warning: {len(length_limited)} sample(s) have a translation that reached its token budget without "
              f"ending (possibly cut short): {', '.join(sorted(length_limited)[:10])}"
              f"{' ...' if len(length_limited) > 10 else ''}", file=sys.stderr)
    if rejected:
        print(f"warning: {len(rejected)} sample(s) translated to empty text, left out and listed in "
              f"{out / REJECTED}", file=sys.stderr)

    out.mkdir(parents=True, exist_ok=True)
    for s in written:
        for rel in s.images:
            copy_image(root / rel, out, rel)
    write_jsonl(out / MANIFEST, (s.to_json() for s in written))
    if rejected:
        write_jsonl(out / REJECTED, rejected)
    elif (out / REJECTED).exists():
        (out / REJECTED).unlink()  # from an earlier run: nothing is rejected now
    return {"out": str(out), "from": src, "to": to, "model": translator.name, "fields": list(fields),
            "samples": len(written), "translated_samples": len(todo) - len(rejected),
            "other_language": len(samples) - len(todo), "texts": len(set(unique)), "cached": cached_before,
            "new_translations": new, "model_calls": translator.calls, "chunked": chunked,
            "length_limited": sorted(length_limited), "rejected": [r["id"] for r in rejected],
            "cache": str(cache.path)}


# ---------------------------------------------------------------- tiny models (tests, the offline docs example)

_TINY_CORPUS = (
    "a dog runs on the grass . two people are sitting on a bench . what colour is the shirt ? yes no one two three "
    "the man wears a red hat . a woman holds a phone . is this a cat ? the bottle is blue . describe the image .",
    "собака бежит по траве . два человека сидят на скамейке . какого цвета рубашка ? да нет один два три "
    "мужчина в красной шляпе . женщина держит телефон . это кошка ? бутылка синяя . опишите изображение .",
)


def save_tiny_translator(path: str | Path, kind: str = "marian", seed: int = 0) -> Path:
    """A random-weight translation model of `kind` ("marian" or "nllb"; ~100k parameters, input limit 64 tokens)
    with a tokenizer trained here, saved so AutoModelForSeq2SeqLM / AutoTokenizer load it offline. Its output is
    noise: it exercises the mechanics (batching, caching, language codes), not translation quality."""
    import torch
    from tokenizers import pre_tokenizers, processors
    from transformers import M2M100Config, M2M100ForConditionalGeneration, MarianConfig, MarianMTModel

    from vlmtune.models.builtin import train_byte_bpe

    path = Path(path)
    lines = list(_TINY_CORPUS) * 20
    small = {"d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
             "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "max_position_embeddings": 32,
             "init_std": 0.1}  # large random weights: the output depends visibly on the input
    torch.manual_seed(seed)
    if kind == "marian":
        from transformers import PreTrainedTokenizerFast

        raw = train_byte_bpe(lines, ["<pad>", "</s>", "<unk>"], 300, add_prefix_space=True)
        raw.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                      model_max_length=32)
        model = MarianMTModel(MarianConfig(vocab_size=len(tok), pad_token_id=0, eos_token_id=1,
                                           decoder_start_token_id=0, forced_eos_token_id=1, **small))
    elif kind == "nllb":
        from transformers import NllbTokenizer

        raw = train_byte_bpe(lines, ["<s>", "<pad>", "</s>", "<unk>"], 300,
                             pre_tokenizer=pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"))
        spec = json.loads(raw.to_str())["model"]
        codes = sorted(set(NLLB_CODES.values()))
        tok = NllbTokenizer(vocab=spec["vocab"], merges=[tuple(m) if isinstance(m, list) else tuple(m.split(" "))
                                                          for m in spec["merges"]],
                            additional_special_tokens=codes, src_lang="eng_Latn", model_max_length=32)
        model = M2M100ForConditionalGeneration(M2M100Config(vocab_size=len(tok), pad_token_id=1, bos_token_id=0,
                                                            eos_token_id=2, decoder_start_token_id=2,
                                                            scale_embedding=True, **small))
    else:
        raise ValueError(f"unknown tiny translator kind {kind!r}; known: marian, nllb")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
