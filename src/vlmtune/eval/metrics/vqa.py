"""VQA accuracy, reproducing the official GT-Vision-Lab evaluation.

Reference: GT-Vision-Lab/VQA, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``
(HEAD, commit a013f0043c1e, 2021-03-11). The official definition is

    "Acc(ans) = min(#humans that said ans / 3, 1)"

averaged over all 10 choose 9 subsets of the 10 human answers: for each of the
10 ground-truth answers, that answer is left out, the prediction is scored
``min(1, #matches among the other 9 / 3)``, and the 10 scores are averaged.
So an answer given by 1, 2, 3 or >=4 of 10 humans scores 0.3, 0.6, 0.9 or 1.0.

Behaviour of the official code that this module reproduces on purpose
(the defaults, so that numbers are comparable with published VQA scores):

* The prediction and every ground-truth answer first get only
  ``.replace('\\n', ' ').replace('\\t', ' ').strip()``.
* Punctuation / digit / article normalisation (``processPunctuation`` followed by
  ``processDigitArticle``) is applied to BOTH the prediction and the GT answers
  ONLY when the GT answers are not all identical (``len(set(gtAnswers)) > 1``,
  computed after the strip step). With a unanimous panel the comparison is an
  exact, case-sensitive string match: "Yes" scores 0 against ten "yes".
* ``processPunctuation`` decides between deleting a punctuation mark and
  replacing it with a space by looking at the ORIGINAL text, and if the text
  contains any ``digit,digit`` every listed mark is deleted (not only commas).
* ``periodStrip`` is ``(?!<=\\d)(\\.)(?!\\d)``: the ``(?!<=\\d)`` is a lookahead
  for the literal ``<=`` (a typo for the lookbehind ``(?<!\\d)``), so in effect a
  period is removed unless a digit follows it ("3.5" survives, "5." loses it).
  The official call ``periodStrip.sub("", text, re.UNICODE)`` passes
  ``re.UNICODE`` (== 32) as the *count* argument, so at most 32 periods are removed.
* ``processDigitArticle`` lower-cases, maps whole words ``none``..``ten`` to digits,
  drops the articles a/an/the, then applies the contractions map word by word.
  Contraction keys that contain capitals ("Im", "Ive", ...) can never match
  after lower-casing; ``"somebody'd"`` is mapped to ``"somebodyd"``. Both as in
  the official map.
* In the official code the leave-one-out removes one answer dict (answers carry
  distinct ``answer_id`` values), so duplicates of the left-out string still
  count; here that is leave-one-out by position.

Single gold answer (custom datasets): the leave-one-out is undefined for one
answer, so ``vqa_accuracy`` treats it as the official code treats a unanimous
panel of identical answers: no punctuation/digit/article normalisation, and the
score is 1.0 if the stripped prediction equals the stripped answer, else 0.0.
Pass ``always_normalize=True`` to normalise both sides regardless (not official).

Pure Python; no torch import.
"""

from __future__ import annotations

import re

__all__ = ["ARTICLES", "CONTRACTIONS", "MANUAL_MAP", "PUNCTUATION", "normalize_answer", "vqa_accuracy"]

# Contractions map of vqaEval.py (keys are what humans typed without the apostrophe).
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've",
    "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip

# Number words to digits (whole words only).
MANUAL_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# Official order matters only for readability: each mark is handled independently.
# Note: no apostrophe, no colon and no period here (periods are handled by _PERIOD_STRIP).
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip

# Kept verbatim, typo included: "(?!<=\d)" is a lookahead for the literal "<=", not a lookbehind.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
# vqaEval.py calls periodStrip.sub("", text, re.UNICODE): the flag lands in `count`.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


def _process_punctuation(text: str) -> str:
    """``processPunctuation`` of vqaEval.py."""
    out = text
    has_digit_comma_digit = _COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        # The tests look at the input text, not at the partially processed one.
        if (p + " " in text or " " + p in text) or has_digit_comma_digit:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    """``processDigitArticle`` of vqaEval.py."""
    words = []
    for word in text.lower().split():
        word = MANUAL_MAP.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def _clean_whitespace(text: str) -> str:
    """The only processing the official code always applies (to prediction and GT answers)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """Official VQA answer normalisation: ``processPunctuation`` then ``processDigitArticle``.

    Lower-cases; removes or spaces out punctuation; strips periods not followed by a digit;
    maps whole-word number words ``none``..``ten`` to digits; drops a/an/the; expands
    contractions ("dont" -> "don't"); collapses whitespace. Example: "Two dogs!" -> "2 dogs".
    """
    return _process_digit_article(_process_punctuation(text))


def vqa_accuracy(prediction: str, answers: list[str], *, always_normalize: bool = False) -> float:
    """VQA accuracy of ``prediction`` against the human ``answers``, in [0, 1] (not percent).

    With two or more answers: the official leave-one-out mean of ``min(1, #matches / 3)``,
    with the official (quirky) normalisation described in the module docstring, i.e. answers
    and prediction are normalised only when the answers are not all identical.

    With exactly one answer: scored as the official code scores a unanimous panel of identical
    answers, i.e. 1.0 if the prediction equals the answer after newline/tab replacement and
    ``strip()`` (no case folding or other normalisation), else 0.0.

    ``always_normalize=True`` (NOT the official behaviour) normalises both sides in every case.

    Raises ``ValueError`` if ``answers`` is empty.
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a list of strings, not a single string")
    if len(answers) == 0:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")

    pred = _clean_whitespace(prediction)
    gts = [_clean_whitespace(a) for a in answers]
    if always_normalize or len(set(gts)) > 1:
        pred = normalize_answer(pred)
        gts = [normalize_answer(a) for a in gts]

    if len(gts) == 1:
        return 1.0 if gts[0] == pred else 0.0

    matches = [gt == pred for gt in gts]
    total_matches = sum(matches)
    scores = [min(1.0, (total_matches - left_out) / 3) for left_out in matches]
    return sum(scores) / len(scores)
