"""Captioning metrics as published for COCO: BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE, plus chrF.

Reference: pycocoevalcap 1.2 (salaniz/pycocoevalcap, the Python 3 port of tylin/coco-caption), ``eval.py``
``COCOEvalCap.evaluate``: the references (``gts``) and the predictions (``res``) are PTB-tokenized in two
separate ``PTBTokenizer().tokenize`` calls, then scored with ``Bleu(4)``, ``Meteor()``, ``Rouge()``,
``Cider()`` and ``Spice()``; ``caption_metrics`` calls those very scorer classes on the tokenized text, so
corpus and per-image values are the official ones (to the last bit on the stored reference example).
The definitions, as implemented there:

* BLEU-n (Papineni et al., 2002, "BLEU: a method for automatic evaluation of machine translation"):
  geometric mean of clipped n-gram precisions times the brevity penalty ``exp(1 - r/c)`` when ``c < r``,
  with ``r`` the reference length closest to the candidate's ("closest", ``bleu.py``). Corpus BLEU sums the
  statistics of all images; per-image BLEU uses the same formula on one image. Every precision is
  ``(matches + 1e-15) / (guesses + 1e-9)`` (``bleu_scorer.py``), so a missing 4-gram match gives a tiny
  positive BLEU-4 (e.g. 6e-5), not 0, and per-image BLEU-1 of a perfect match is 0.99999999977.
* METEOR 1.5 (Denkowski & Lavie, 2014): ``meteor-1.5.jar -l en -norm`` with exact, stem, WordNet-synonym
  and paraphrase matching; corpus METEOR is Meteor's own aggregate over all images (not the mean of the
  per-image values).
* ROUGE-L (Lin, 2004): F-measure with beta = 1.2 of the LCS precision and recall, each maximised over the
  references separately; corpus ROUGE-L is the mean over images (``rouge.py``, tokens from ``split(" ")``).
* CIDEr (Vedantam et al., 2015, "CIDEr: Consensus-based Image Description Evaluation"): pycocoevalcap's
  ``Cider`` is the CIDEr-D variant: TF-IDF n-gram vectors (n = 1..4), candidate counts clipped by the
  reference's, Gaussian length penalty ``exp(-(l_c - l_r)^2 / (2 * 6^2))`` (sigma = 6), mean over n and
  over references, times 10. The IDF is computed over the references of the samples passed in (not over
  the COCO training set), so scores depend on the evaluation set; with a single sample every IDF is
  ``log(1) - log(1) = 0`` and CIDEr is 0.
* SPICE (Anderson et al., 2016): F-score over scene-graph tuples. It needs the Stanford CoreNLP 3.6.0
  models that pycocoevalcap downloads on first use; without them (or without network) it is reported in
  ``"unavailable"``, never raised. Per-image SPICE is mapped by sorted id (``Spice.compute_score`` returns
  sorted ids; ``COCOEvalCap`` zips them with unsorted ids, which mislabels per-image SPICE there).
* chrF (Popović, 2015) from sacrebleu's ``CHRF()`` (char_order 6, word_order 0, beta 2): character n-gram
  F-score on the raw, untokenized text; corpus chrF aggregates the statistics of all predictions, each
  against all of its references (sacrebleu picks the best-matching one); per-sample chrF is
  ``sentence_score``. Divided by 100 so that it lies in [0, 1] like the others.

Behaviour of the official code that is kept on purpose: ``'\\n'`` inside a caption becomes a space; empty
predictions (or ones that are empty after tokenization, e.g. "...") are scored as the empty string, which
no official scorer rejects (they score ~0; pycocoevalcap does the same); brackets survive tokenization as
``-lrb-``/``-rrb-`` (see tokenize.py).

Deliberate deviations (each reported in ``"notes"`` when it applies):

* Line-break characters other than ``'\\n'`` (``'\\r'``, ``'\\x0b'``, ``'\\x0c'``, ``'\\x85'``, U+2028,
  U+2029) are replaced by spaces before PTB tokenization: the official tokenizer would start a new line at
  them and attach every later caption to the wrong image.
* Other languages (``lang != "en"``) are tokenized with ``unicode_tokenize`` (tokenize.py) for BLEU, METEOR,
  ROUGE-L and CIDEr, and METEOR runs ``meteor-1.5.jar -l <lang> -m "exact stem" -lower`` where Meteor 1.5
  ships a Snowball stemmer for the language (da de es fi fr hu it nl no pt ro ru sv tr), otherwise exact
  matching only (``-l cz`` for Czech, ``-l other`` for the rest); English WordNet synonyms and the English
  paraphrase table are never applied to non-English text. SPICE is English-only.

Variant: ``tokenizer="none"`` feeds the raw strings to the scorers without PTB tokenization, as VLMEvalKit's
``COCO_Caption_Scorer`` did (raw ``ImageCaptionDataset`` predictions and references into ``Bleu(4)``,
``Rouge()``, ``Cider()``); scores differ from the official ones (case and punctuation count). Only for
METEOR, whose jar reads one request per line, are ``'\r'`` and ``'\n'`` replaced by spaces.

Example (CPU, ~1 s without METEOR; English METEOR loads a 60 MB paraphrase table, ~15 s)::

    caption_metrics({"1": "A man riding a red bike."}, {"1": ["A man rides a red bicycle.", "A cyclist."]},
                    metrics=("Bleu", "ROUGE_L", "CIDEr", "chrF"))["corpus"]["Bleu_4"]

Pure Python plus the Java tools pycocoevalcap ships; no torch import.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Literal

from vlmtune.eval.metrics.tokenize import PTB_LINE_BREAKS, ptb_tokenize, resolve_ptb_backend, unicode_tokenize

__all__ = ["ALL_METRICS", "caption_metrics"]

ALL_METRICS: tuple[str, ...] = ("Bleu", "METEOR", "ROUGE_L", "CIDEr", "SPICE", "chrF")
BLEU_KEYS: tuple[str, ...] = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")

Tokenizer = Literal["auto", "java", "python", "unicode", "none"]

# ISO 639-1 -> Meteor 1.5 "-l" code, for languages whose Snowball stemmer meteor-1.5.jar contains
# (checked by running the jar: `-m "exact stem"` works and changes scores for each of these).
METEOR_STEM_LANGUAGES: dict[str, str] = {
    "da": "da", "de": "de", "es": "es", "fi": "fi", "fr": "fr", "hu": "hu", "it": "it", "nl": "nl",
    "no": "no", "nb": "no", "pt": "pt", "ro": "ro", "ru": "ru", "sv": "se", "tr": "tr",
}  # fmt: skip
# Languages Meteor 1.5 knows by name but has no stemmer for: exact matching with their own parameters.
METEOR_EXACT_LANGUAGES: dict[str, str] = {"cs": "cz"}

SPICE_CORENLP_JARS: tuple[str, ...] = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def caption_metrics(
    predictions: dict[str, str],
    references: dict[str, list[str]],
    lang: str = "en",
    tokenizer: Tokenizer = "auto",
    metrics: tuple[str, ...] = ALL_METRICS,
) -> dict[str, Any]:
    """Corpus and per-sample caption metrics of ``predictions`` against ``references`` (same ids).

    Returns ``{"corpus": {name: float}, "per_sample": {id: {name: float}}, "unavailable": {metric: reason},
    "tokenizer": "ptb-java" | "ptb-python" | "unicode" | "none", "notes": [str, ...]}`` where the names are
    ``Bleu_1..Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr``, ``SPICE``, ``chrF`` (those requested in
    ``metrics`` and available). All values are in [0, 1] except CIDEr (0..10).

    ``tokenizer``: "auto" is the official PTB tokenizer for English (Java if a ``java`` executable is on
    PATH, else the identical pure-Python lexer) and ``unicode_tokenize`` for other languages; "java",
    "python" force a PTB backend; "unicode" forces ``unicode_tokenize``; "none" is the VLMEvalKit variant
    (raw strings, no tokenization; module docstring). chrF always uses the raw text.

    Raises ``ValueError`` when the two id sets differ (naming the ids), when there are no samples, when a
    sample has no reference, when every reference is empty after tokenization (CIDEr has no document
    frequencies then), or for an unknown metric or tokenizer.
    """
    ids = _check_inputs(predictions, references)
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(ALL_METRICS)}")
    if tokenizer not in ("auto", "java", "python", "unicode", "none"):
        raise ValueError(f"unknown tokenizer {tokenizer!r}")
    lang_code = _language_code(lang)
    notes: list[str] = []
    unavailable: dict[str, str] = {}
    corpus: dict[str, float] = {}
    per_sample: dict[str, dict[str, float]] = {i: {} for i in ids}
    java = shutil.which("java") is not None

    mode = _tokenizer_mode(tokenizer, lang_code)
    if tokenizer == "auto" and mode == "ptb-python":
        notes.append("tokenizer='auto' found no `java` executable, so the pure-Python PTB lexer is used")
    gts, res = _tokenize(ids, predictions, references, mode, lang_code, notes)
    if not any(ref.strip() for i in ids for ref in gts[i]):
        raise ValueError("every reference is empty after tokenization; there is nothing to score against")
    empty = [i for i in ids if not res[i][0].strip()]
    if empty:
        notes.append(
            f"{len(empty)} prediction(s) empty after tokenization ({_show(empty)}): scored as the empty "
            "string, as pycocoevalcap does (no scorer fails on it; they score ~0)"
        )

    def record(name: str, score: float, scores) -> None:
        corpus[name] = float(score)
        for i, s in zip(ids, scores, strict=True):
            per_sample[i][name] = float(s)

    if "Bleu" in metrics:
        from pycocoevalcap.bleu.bleu import Bleu

        bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
        for name, score, scores in zip(BLEU_KEYS, bleu, bleu_per_image, strict=True):
            record(name, score, scores)
    if "METEOR" in metrics:
        if not java:
            unavailable["METEOR"] = "METEOR runs meteor-1.5.jar and needs a `java` executable on PATH"
        else:
            record("METEOR", *_meteor(gts, res, lang_code, notes))
    if "ROUGE_L" in metrics:
        from pycocoevalcap.rouge.rouge import Rouge

        record("ROUGE_L", *Rouge().compute_score(gts, res))
    if "CIDEr" in metrics:
        from pycocoevalcap.cider.cider import Cider

        record("CIDEr", *Cider().compute_score(gts, res))
        notes.append(
            f"CIDEr is pycocoevalcap's Cider = CIDEr-D (sigma 6, clipping, length penalty, x10) with IDF over "
            f"the references of these {len(ids)} samples"
            + ("; with a single sample every IDF is 0, so CIDEr is 0" if len(ids) == 1 else "")
        )
    if "SPICE" in metrics:
        reason = _spice_unavailable_reason(lang_code, java)
        if reason is None:
            try:
                spice_score, spice_by_sorted_id = _spice(gts, res)
            except Exception as err:  # SPICE must never take the other metrics down with it
                reason = f"SPICE failed: {type(err).__name__}: {err}"
            else:
                corpus["SPICE"] = spice_score
                for i, s in spice_by_sorted_id.items():
                    per_sample[i]["SPICE"] = s
        if reason is not None:
            unavailable["SPICE"] = reason
    if "chrF" in metrics:
        record("chrF", *_chrf(ids, predictions, references))
        notes.append(
            "chrF: sacrebleu CHRF (char_order 6, word_order 0, beta 2) on the raw untokenized text, corpus "
            "statistics over all predictions with all their references, divided by 100 to lie in [0, 1]"
        )
    return {
        "corpus": corpus,
        "per_sample": per_sample,
        "unavailable": unavailable,
        "tokenizer": mode,
        "notes": notes,
    }


# ------------------------------------------------------------------ inputs and tokenization


def _show(ids: list[str], limit: int = 10) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def _check_inputs(predictions: dict[str, str], references: dict[str, list[str]]) -> list[str]:
    """Ids in the order of ``references``, after checking both dicts describe the same samples."""
    missing_refs = [i for i in predictions if i not in references]
    missing_preds = [i for i in references if i not in predictions]
    if missing_refs or missing_preds:
        parts = []
        if missing_refs:
            parts.append(f"predictions without references: {_show(missing_refs)}")
        if missing_preds:
            parts.append(f"references without predictions: {_show(missing_preds)}")
        raise ValueError("predictions and references must have the same ids; " + "; ".join(parts))
    if not references:
        raise ValueError("no samples to score")
    for i, pred in predictions.items():
        if not isinstance(pred, str):
            raise TypeError(f"prediction {i!r} must be a string, got {type(pred).__name__}")
    no_refs = []
    for i, refs in references.items():
        if isinstance(refs, str) or not all(isinstance(r, str) for r in refs):
            raise TypeError(f"references[{i!r}] must be a list of strings")
        if not refs:
            no_refs.append(i)
    if no_refs:
        raise ValueError(f"every sample needs at least one reference; none for {_show(no_refs)}")
    return list(references)


def _language_code(lang: str) -> str:
    """'en', 'en-US', 'EN_gb' -> 'en'."""
    if not isinstance(lang, str) or not lang.strip():
        raise ValueError("lang must be a language code such as 'en', 'ru' or 'zh'")
    return lang.strip().lower().replace("_", "-").split("-")[0]


def _tokenizer_mode(tokenizer: str, lang: str) -> str:
    if tokenizer == "auto":
        return "ptb-" + resolve_ptb_backend("auto") if lang == "en" else "unicode"
    if tokenizer in ("java", "python"):
        return "ptb-" + tokenizer
    return tokenizer  # "unicode" or "none"


def _tokenize(
    ids: list[str], predictions: dict[str, str], references: dict[str, list[str]], mode: str, lang: str, notes: list
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(gts, res) as COCOEvalCap builds them: ``{id: [tokenized refs]}`` and ``{id: [tokenized prediction]}``."""
    raw_gts = {i: list(references[i]) for i in ids}
    raw_res = {i: [predictions[i]] for i in ids}
    if mode == "none":
        notes.append(
            "tokenizer 'none' (VLMEvalKit variant): raw strings go to the scorers untokenized, so case and "
            "punctuation count and scores differ from the official PTB-tokenized ones"
        )
        return raw_gts, raw_res
    if mode == "unicode":
        notes.append(
            f"text tokenized with unicode_tokenize (NFKC, casefold, letter/digit runs, CJK split into characters) "
            f"instead of the English PTB tokenizer, for BLEU/METEOR/ROUGE-L/CIDEr (lang {lang!r})"
        )

        def tok(texts):
            return {i: [" ".join(unicode_tokenize(c, lang)) for c in captions] for i, captions in texts.items()}

        return tok(raw_gts), tok(raw_res)
    backend = mode.removeprefix("ptb-")
    how = "run with Java" if backend == "java" else "run by the pure-Python re-implementation of its lexer"
    notes.append(
        f"tokenizer: pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1 PTBTokenizer -preserveLines -lowerCase, "
        f"then its PUNCTUATIONS removed), {how}"
    )
    if lang != "en":
        notes.append(f"the PTB tokenizer follows English conventions; lang is {lang!r}")
    broken = [i for i in ids if any(ch in c for c in raw_gts[i] + raw_res[i] for ch in PTB_LINE_BREAKS)]
    if broken:
        table = str.maketrans({ch: " " for ch in PTB_LINE_BREAKS})
        raw_gts = {i: [c.translate(table) for c in captions] for i, captions in raw_gts.items()}
        raw_res = {i: [c.translate(table) for c in captions] for i, captions in raw_res.items()}
        notes.append(
            f"line-break characters other than '\\n' (\\r, \\x0b, \\x0c, \\x85, U+2028, U+2029) replaced by spaces "
            f"in {_show(broken)}: the official tokenizer would shift every later caption to the wrong image"
        )
    gts, res = ptb_tokenize(raw_gts, backend), ptb_tokenize(raw_res, backend)
    if any(len(gts.get(i, ())) != len(raw_gts[i]) or len(res.get(i, ())) != 1 for i in ids):
        raise RuntimeError("PTB tokenization lost the caption/id alignment")
    return gts, res


# ------------------------------------------------------------------ METEOR, SPICE, chrF


def _meteor(gts: dict, res: dict, lang: str, notes: list) -> tuple[float, list[float]]:
    # Meteor reads one request per line: a line break left in raw text (tokenizer="none") would desync it.
    gts, res = _single_line(gts), _single_line(res)
    if lang == "en":
        return _english_meteor().compute_score(gts, res)
    if lang in METEOR_STEM_LANGUAGES:
        code, modules = METEOR_STEM_LANGUAGES[lang], "exact stem"
        notes.append(
            f"METEOR for {lang!r}: Meteor 1.5 `-l {code} -m 'exact stem' -lower` on the unicode tokens: exact and "
            f"Snowball-stem matching; Meteor 1.5 has no {lang!r} synonym data and pycocoevalcap ships no "
            f"{lang!r} paraphrase table, so those modules are off (English WordNet is never used)"
        )
    else:
        code, modules = METEOR_EXACT_LANGUAGES.get(lang, "other"), "exact"
        notes.append(
            f"METEOR for {lang!r}: exact matching only (Meteor 1.5 `-l {code} -m exact -lower` on the unicode "
            f"tokens); Meteor 1.5 has no {lang!r} stemmer, synonym or paraphrase data (English WordNet is never used)"
        )
    return _meteor_jar(gts, res, ["-l", code, "-m", modules, "-lower"])


_METEOR_EN = None


def _english_meteor():
    """pycocoevalcap's Meteor (-l en -norm: exact, stem, synonym, paraphrase), started once per process: loading
    its 60 MB paraphrase table takes ~13 s, so evaluation during training pays it once, not at every eval."""
    global _METEOR_EN
    if _METEOR_EN is None or _METEOR_EN.meteor_p.poll() is not None:
        from pycocoevalcap.meteor.meteor import Meteor

        _METEOR_EN = Meteor()
    return _METEOR_EN


def _single_line(texts: dict[str, list[str]]) -> dict[str, list[str]]:
    return {i: [c.replace("\r", " ").replace("\n", " ") for c in captions] for i, captions in texts.items()}


def _meteor_jar(gts: dict, res: dict, options: list[str]) -> tuple[float, list[float]]:
    """pycocoevalcap's Meteor stdio protocol with other command-line options (its class hard-codes -l en)."""
    from pycocoevalcap.meteor import meteor as pycoco_meteor

    cmd = ["java", "-jar", "-Xmx2G", pycoco_meteor.METEOR_JAR, "-", "-", "-stdio", *options]
    cwd = Path(pycoco_meteor.__file__).resolve().parent
    with subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
        try:

            def ask(line: str) -> str:
                p.stdin.write((line + "\n").encode())
                p.stdin.flush()
                answer = p.stdout.readline().decode().strip()
                if not answer:
                    raise RuntimeError(f"meteor-1.5.jar {' '.join(options)} failed: {p.stderr.read().decode()[-2000:]}")
                return answer

            stats = []
            for i in gts:
                hypothesis = res[i][0].replace("|||", "").replace("  ", " ")
                stats.append(ask(" ||| ".join(["SCORE", " ||| ".join(gts[i]), hypothesis])))
            scores = [float(ask("EVAL ||| " + " ||| ".join(stats)))]
            scores += [float(p.stdout.readline().decode().strip()) for _ in range(len(stats))]
        finally:
            p.kill()
    return scores[-1], scores[:-1]


def _spice_lib_dir() -> Path:
    from pycocoevalcap.spice import spice

    return Path(spice.__file__).resolve().parent / "lib"


def _spice_unavailable_reason(lang: str, java: bool) -> str | None:
    if lang != "en":
        return f"SPICE parses English scene graphs only; lang is {lang!r}"
    if not java:
        return "SPICE runs spice-1.0.jar and needs a `java` executable on PATH"
    lib = _spice_lib_dir()
    missing = [name for name in SPICE_CORENLP_JARS if not (lib / name).is_file()]
    if missing:
        return (
            f"SPICE needs the Stanford CoreNLP 3.6.0 models ({', '.join(missing)} missing in {lib}); pycocoevalcap "
            "downloads them from nlp.stanford.edu on first use, which is not attempted here (no network). Run "
            "`python -m pycocoevalcap.spice.get_stanford_models` once where there is network access"
        )
    return None


def _spice(gts: dict, res: dict) -> tuple[float, dict[str, float]]:
    from pycocoevalcap.spice.spice import Spice

    score, scores = Spice().compute_score(gts, res)
    return float(score), {i: float(s["All"]["f"]) for i, s in zip(sorted(gts), scores, strict=True)}


def _chrf(ids: list[str], predictions: dict[str, str], references: dict[str, list[str]]):
    from sacrebleu.metrics import CHRF

    hypotheses = [predictions[i] for i in ids]
    n_streams = max(len(references[i]) for i in ids)
    # sacrebleu wants one stream per reference position; None pads samples with fewer references.
    streams = [[references[i][k] if k < len(references[i]) else None for i in ids] for k in range(n_streams)]
    corpus = CHRF().corpus_score(hypotheses, streams).score / 100
    return corpus, [CHRF().sentence_score(predictions[i], references[i]).score / 100 for i in ids]
