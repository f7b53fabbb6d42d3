"""Caption tokenizers: the COCO-caption PTB tokenizer (Java or pure Python) and a Unicode word tokenizer.

PTB tokenizer (English). Every published COCO-caption number (BLEU, METEOR, ROUGE-L, CIDEr, SPICE) is
computed on text tokenized by pycocoevalcap's ``PTBTokenizer``
(``pycocoevalcap/tokenizer/ptbtokenizer.py``, pycocoevalcap 1.2, from tylin/coco-caption), whose
docstring is "Do the PTB Tokenization and remove punctuations". It does exactly this:

1. all captions are written to one file, one caption per line, each caption's ``'\\n'`` replaced by ``' '``;
2. ``java -cp stanford-corenlp-3.4.1.jar edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase``
   tokenizes the file (CoreNLP 3.4.1's JFlex lexer ``PTBLexer`` with its default options plus
   ``tokenizeNLs``; tokens of a line joined by ``' '``, every token lower-cased with ``Locale.ENGLISH``);
3. the output is split on ``'\\n'``, zipped with the caption ids, and every token in ``PUNCTUATIONS``
   (``'' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;``) is dropped.

``ptb_tokenize(texts, backend="java")`` runs that official class itself (one JVM start, ~0.4 s).
``backend="python"`` is a pure-Python, JVM-free equivalent that gives the same output: it runs the very
lexer automaton of CoreNLP 3.4.1, i.e. the JFlex DFA tables (character classes, transitions, accepting
states, lookahead automata) are read at run time from the ``stanford-corenlp-3.4.1.jar`` that the
pycocoevalcap wheel installs (no copy of them lives in this repository), and this module re-implements the
JFlex 1.4 scanner loop (longest match, general trailing context) and the lexer's 54 token actions
(pushbacks, ``-LRB-``, LaTeX-style quotes, ``--``, ``...``, ``n't`` splits, NBSP inside fractions and
phone numbers, currency and fraction normalisation, ...). Boundaries are therefore those of the Java
lexer by construction; the tests compare both backends sentence by sentence on a broad hand-written corpus
and 1,500 seeded random lines (over 30,000 random lines, including random BMP and emoji characters, agreed
during development). The class file's SHA-256 is checked, so a different CoreNLP build fails loudly instead of
tokenizing differently. ``backend="auto"`` uses Java when a ``java`` executable is on ``PATH``, else Python
(``resolve_ptb_backend`` says which).

Behaviour of the official tokenizer that is reproduced on purpose (both backends):

* Brackets become ``-lrb-``/``-rrb-``/``-lsb-``/``-rsb-``/``-lcb-``/``-rcb-``; because ``-lowerCase`` runs
  first, they no longer match the upper-case ``-LRB-`` in ``PUNCTUATIONS`` and survive as words.
* Clitics and assimilations are split: "isn't" -> "is n't", "can't" -> "ca n't", "cat's" -> "cat 's",
  "gonna" -> "gon na", "cannot" -> "can not"; "o'clock", "t-shirt", "e-mail", "u.s.", "3.5", "1,000" stay
  whole; "$5" -> "$ 5", "50%" -> "50 %", "dogs'" -> "dogs" (the "'" token is dropped).
* Fractions and phone numbers keep an internal NO-BREAK SPACE ("5 7/8" -> ``'5\\xa07/8'``): one token for
  ROUGE-L (``split(' ')``) but two for BLEU and CIDEr (``str.split()``).
* Characters the lexer does not know (e.g. emoji, i.e. UTF-16 surrogates in Java) are deleted; Java prints
  one "Untokenizable" warning on stderr.
* Only ``'\\n'`` is replaced before tokenizing, but the lexer also starts a new line at ``'\\r'``,
  ``'\\x0b'``, ``'\\x0c'``, ``'\\x85'``, ``'\\u2028'`` and ``'\\u2029'``: such a character shifts every later
  caption to the previous id and the last ones are lost. ``ptb_tokenize`` reproduces this; ``caption_metrics``
  replaces those characters by spaces first (see caption.py).

Unicode tokenizer (other languages). ``unicode_tokenize(text, lang)`` is the tokenizer used for non-English
captions, where PTB's English rules (clitics, abbreviations) do not apply:

1. NFKC normalisation (full-width forms, ligatures, compatibility characters), then ``str.casefold()``;
2. a word is a maximal run of Unicode letters, digits and combining marks (categories L*, N*, M*), so
   "café", "naïve" and "привет" stay whole; an apostrophe (``'`` or ``’``, written as ``'``) between two word
   characters stays inside the word ("l'homme"); every other character (punctuation, symbols, spaces,
   emoji) separates words and is dropped;
3. every Han ideograph, Hiragana, Katakana and Hangul-syllable character is a token of its own: CJK text
   has no spaces, and character-level tokens are the usual practice for BLEU/CIDEr on Chinese and
   Japanese captions (e.g. COCO-CN, STAIR Captions evaluations); Hangul is split the same way for
   consistency.

The rules depend only on the script, so ``lang`` does not change the output today; it is part of the
signature so that callers state the language and language-specific rules can be added without an API change.

Pure Python; no torch import.
"""

from __future__ import annotations

import shutil
import unicodedata
from typing import Literal

from vlmtune.eval.metrics.ptb_lexer import _ptb_tokenizer_output

__all__ = ["PTB_LINE_BREAKS", "PUNCTUATIONS", "ptb_tokenize", "resolve_ptb_backend", "unicode_tokenize"]

# pycocoevalcap/tokenizer/ptbtokenizer.py: tokens dropped after tokenization.
PUNCTUATIONS: tuple[str, ...] = (
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";",
)  # fmt: skip
_PUNCTUATION_SET = frozenset(PUNCTUATIONS)

# Characters other than "\n" that CoreNLP 3.4.1's lexer treats as a line break (its NEWLINE token).
PTB_LINE_BREAKS: str = "\r\x0b\x0c\x85\u2028\u2029"

PTBBackend = Literal["auto", "java", "python"]


def resolve_ptb_backend(backend: PTBBackend = "auto") -> Literal["java", "python"]:
    """Which PTB backend ``ptb_tokenize(..., backend)`` uses: "auto" is "java" iff ``java`` is on PATH."""
    if backend == "auto":
        return "java" if shutil.which("java") else "python"
    if backend not in ("java", "python"):
        raise ValueError(f"unknown PTB backend {backend!r}; expected 'auto', 'java' or 'python'")
    return backend


def ptb_tokenize(texts: dict[str, list[str]], backend: PTBBackend = "auto") -> dict[str, list[str]]:
    """pycocoevalcap's ``PTBTokenizer().tokenize`` on ``{id: [caption, ...]}``, returning ``{id: [tokenized]}``.

    Each output caption is its lower-cased PTB tokens joined by single spaces, punctuation tokens removed,
    e.g. ``"A T-shirt, isn't it? (yes)"`` -> ``"a t-shirt is n't it -lrb- yes -rrb-"``. Ids keep their order;
    an id with an empty caption list is absent from the output (as in pycocoevalcap).

    ``backend``: "java" runs pycocoevalcap's class (needs ``java``; it writes a temporary file next to the
    CoreNLP jar in site-packages); "python" runs the pure-Python re-implementation of the same lexer (module
    docstring); "auto" picks "java" if available (see ``resolve_ptb_backend``).
    """
    for key, captions in texts.items():
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError(f"texts[{key!r}] must be a list of strings")
    if resolve_ptb_backend(backend) == "java":
        return _ptb_tokenize_java(texts)
    return _ptb_tokenize_python(texts)


def _ptb_tokenize_java(texts: dict[str, list[str]]) -> dict[str, list[str]]:
    if shutil.which("java") is None:
        raise RuntimeError("PTB backend 'java' needs a `java` executable on PATH (or use backend='python')")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({key: [{"caption": c} for c in captions] for key, captions in texts.items()})


def _ptb_tokenize_python(texts: dict[str, list[str]]) -> dict[str, list[str]]:
    # Same bookkeeping as ptbtokenizer.py: one line per caption, zip() with the ids (so extra line breaks
    # shift captions exactly as they do there).
    ids = [key for key, captions in texts.items() for _ in captions]
    document = "\n".join(c.replace("\n", " ") for captions in texts.values() for c in captions)
    out: dict[str, list[str]] = {}
    # strict=False on purpose: zip() truncates there too when line breaks shift the lines.
    for key, line in zip(ids, _ptb_tokenizer_output(document).split("\n"), strict=False):
        words = [w for w in line.rstrip().split(" ") if w not in _PUNCTUATION_SET]
        out.setdefault(key, []).append(" ".join(words))
    return out


# ------------------------------------------------------------------ Unicode tokenizer for other languages


def _is_cjk_char(cp: int) -> bool:
    """Han ideographs (incl. extensions, compatibility), Hiragana, Katakana, Hangul syllables."""
    return (
        0x3040 <= cp <= 0x30FF  # Hiragana, Katakana
        or 0x31F0 <= cp <= 0x31FF  # Katakana phonetic extensions
        or 0x3400 <= cp <= 0x4DBF  # CJK extension A
        or 0x4E00 <= cp <= 0x9FFF  # CJK unified ideographs
        or 0xAC00 <= cp <= 0xD7A3  # Hangul syllables
        or 0xF900 <= cp <= 0xFAFF  # CJK compatibility ideographs
        or 0x20000 <= cp <= 0x3134F  # CJK extensions B-G, compatibility supplement
        or cp in (0x3005, 0x3007)  # 々 iteration mark, 〇 ideographic zero
    )


_APOSTROPHES = frozenset("'\u2019")


def unicode_tokenize(text: str, lang: str) -> list[str]:
    """Words of a non-English caption: NFKC, casefold, letter/digit runs, CJK split into characters.

    ``unicode_tokenize("Кошка спит на ноутбуке.", "ru") == ["кошка", "спит", "на", "ноутбуке"]``;
    ``unicode_tokenize("一只猫在睡觉。", "zh") == ["一", "只", "猫", "在", "睡", "觉"]``;
    ``unicode_tokenize("Un café, l’homme!", "fr") == ["un", "café", "l'homme"]``. See the module docstring.
    """
    if not isinstance(text, str):
        raise TypeError("text must be a string")
    if not isinstance(lang, str) or not lang:
        raise ValueError("lang must be a non-empty language code such as 'ru' or 'zh'")
    chars = unicodedata.normalize("NFKC", text).casefold()
    tokens: list[str] = []
    word: list[str] = []
    for i, ch in enumerate(chars):
        if _is_cjk_char(ord(ch)):
            if word:
                tokens.append("".join(word))
                word = []
            tokens.append(ch)
        elif unicodedata.category(ch)[0] in "LNM":
            word.append(ch)
        elif (
            ch in _APOSTROPHES
            and word
            and i + 1 < len(chars)
            and unicodedata.category(chars[i + 1])[0] in "LNM"
            and not _is_cjk_char(ord(chars[i + 1]))
        ):
            word.append("'")
        elif word:
            tokens.append("".join(word))
            word = []
    if word:
        tokens.append("".join(word))
    return tokens
