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

The package: `model.py` (Translator: loading, language codes, batched generation), `cache.py` (the translation
cache), `tiny.py` (random tiny translators for tests and the offline docs example); `translate_dataset` here.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlmtune.data.formats.base import copy_image
from vlmtune.data.sample import Sample
from vlmtune.data.store import MANIFEST, read_samples, write_jsonl
from vlmtune.data.translate.cache import CACHE_DIR, TranslationCache, translate_missing
from vlmtune.data.translate.model import NLLB_CODES, Translator, nllb_code, short_lang
from vlmtune.data.translate.tiny import save_tiny_translator

FIELDS = ("prompts", "answers", "references")
REJECTED = "rejected.jsonl"


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


__all__ = ["CACHE_DIR", "FIELDS", "NLLB_CODES", "REJECTED", "TranslationCache", "Translator", "map_texts", "nllb_code",
           "parse_fields", "save_tiny_translator", "short_lang", "texts_of", "translate_dataset", "translate_missing"]
