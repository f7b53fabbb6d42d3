"""Exact-match accuracy (pure Python, no torch import)."""

from __future__ import annotations

import re

__all__ = ["exact_match", "normalize_exact"]

_WHITESPACE = re.compile(r"\s+")
_TRAILING_PUNCTUATION = ".!?,;:"


def normalize_exact(text: str) -> str:
    """Light normalisation used by :func:`exact_match`.

    Lower-cases, strips surrounding whitespace, strips trailing ``.!?,;:`` characters
    (and any whitespace they leave behind), and collapses runs of internal whitespace to
    one space. Nothing else: articles, number words and inner punctuation are kept.
    """
    text = text.lower().strip()
    text = text.rstrip(_TRAILING_PUNCTUATION + " \t\n\r\f\v").strip()
    return _WHITESPACE.sub(" ", text)


def exact_match(prediction: str, answers: list[str], normalize: bool = True) -> float:
    """1.0 if ``prediction`` equals any of ``answers``, else 0.0.

    With ``normalize=True`` (default) both sides are compared after lower-casing, stripping
    surrounding whitespace and trailing punctuation ``.!?,;:``, and collapsing internal
    whitespace (see :func:`normalize_exact`). With ``normalize=False`` the strings must be
    identical. An empty ``answers`` list scores 0.0.
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a list of strings, not a single string")
    if normalize:
        pred = normalize_exact(prediction)
        return 1.0 if any(normalize_exact(a) == pred for a in answers) else 0.0
    return 1.0 if prediction in answers else 0.0
