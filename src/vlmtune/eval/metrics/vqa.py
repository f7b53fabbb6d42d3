"""VQA accuracy, reproducing the official GT-Vision-Lab evaluation and four other tools that report it.

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

Variants (``vqa_accuracy(..., variant=...)``; ``VQA_VARIANTS`` lists them)
--------------------------------------------------------------------------
Every variant keeps the leave-one-out mean of ``min(1, #matches / 3)`` (by
position: the tools drop one answer dict, and VQA answer dicts carry distinct
``answer_id`` values; VizWiz drops by index). None of them is
``min(#matches / 3, 1)`` without leave-one-out. They differ only in which text
is normalised, when, and how. "official punctuation" below means
``processPunctuation`` as described above; "digit/article" means
``processDigitArticle`` (lower-case, number words, articles, contractions).

``"official"`` (default) -- GT-Vision-Lab/VQA HEAD, as described above.

``"lavis_pre2021"`` -- salesforce/LAVIS ``lavis/common/vqa_tools/vqa_eval.py``
(commit e33ee8b65ab8; same logic at 200ac1725699), which is a Python-3 copy of
the GT-Vision-Lab ``vqaEval.py`` as it was before the 2021 change (e.g.
GT-Vision-Lab/VQA commit 07aecec5a25d). Differences from official:

* The prediction is ALWAYS normalised (strip, official punctuation,
  digit/article), whatever the GT panel looks like: "Yes" scores 1.0 against
  ten "yes".
* The GT answers are NOT stripped, and when they disagree (``len(set(raw)) > 1``)
  they get the official punctuation step ONLY: no lower-casing, no number
  words, no article removal, no contractions. So a "2" prediction does not
  match a human "two", "a dog" (human) does not match "dog" (prediction), and
  "Yes" (human) never matches anything, because the prediction is lower-cased.

``"evalai"`` -- the VQA challenge evaluation run on the EvalAI server,
Cloud-CV/VQA-Evaluation ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``
(commit 9a61d7751246; same logic at 993bc7c55887). Same flow as
``"lavis_pre2021"`` (prediction always normalised; GT unstripped and, when the
panel disagrees, punctuation-only), but ``processPunctuation`` is a different,
regex-based function, applied to the prediction and to the GT:

  1. ``(?<=\\d)(,)+(?=\\d)`` -> "" (a run of commas between digits is deleted;
     nothing else is deleted because of it, unlike the official rule);
  2. a punctuation mark that FOLLOWS a space or a mark, or PRECEDES one, is
     replaced by a space (``puncStrip``);
  3. runs of spaces -> one space;
  4. a mark BETWEEN two ASCII letters ``[a-zA-Z]`` is replaced by a space
     (``puncStrip2``: "t-shirt" -> "t shirt", but "3-4" and "café-crème" stay);
  5. the official ``periodStrip`` (count 32 quirk included).

  A mark touching only letters/digits on one side and the start/end of the
  text on the other is kept: "yes!" stays "yes!" and scores 0 against "yes".
  (Cloud-CV/VQA-Challenge commit 50c6b1e48366 additionally strips leading and
  trailing punctuation runs, ``puncStripBegin``/``puncStripEnd``; that version
  would score "yes!" 1.0. The reference column follows VQA-Evaluation.)

``"vizwiz"`` -- the VizWiz-VQA API, ``vizwiz-vqa/PythonEvaluationTools/
vqaEvaluation/vqaEval.py`` (author Qing Li; no public commit id). Differences
from official:

* The prediction is ALWAYS normalised (strip, official punctuation,
  digit/article).
* The GT answers are NEVER processed: not stripped, not lower-cased, no
  punctuation handling, whether the panel agrees or not. So "t-shirt" (human)
  does not match the normalised prediction "t shirt", "two" (human) does not
  match "2", and a human "Yes" matches nothing.
* Contractions: the copies of the VizWiz file we could read spell most
  expansions with a typographic apostrophe (U+2019: "dont" -> "don’t"), which
  would make a contracted prediction fail against an ASCII "don't" answer. The
  reference column ``vizwiz_api_variant`` scores "dont know" against four
  "don't know" as 100, i.e. it was computed with the ASCII map of the official
  code, and that is what this variant uses.

``"lmms_eval"`` -- EvolvingLMMs-Lab/lmms-eval ``lmms_eval/tasks/vqav2/utils.py``
(``vqav2_process_results``, commit 039307892132) with ``EvalAIAnswerProcessor``
from ``lmms_eval/tasks/_task_utils/vqa_eval_metric.py`` (commit 61e5060b4e86,
itself copied from MMF/pythia ``processors.py``). Differences from official:

* The prediction is ALWAYS pre-processed by ``EvalAIAnswerProcessor.__call__``
  before anything else: lower-case, delete every "," and "?" (no space left),
  ``"'s"`` -> ``" 's"`` ("dog's" -> "dog 's"), strip, newline/tab -> space,
  strip, official punctuation, digit/article.
* GT answers are stripped as in the official code; when they disagree BOTH
  sides get punctuation + digit/article, so the prediction is normalised a
  second time (a second pass removes up to 32 more periods).
  With a unanimous panel the GT stays as typed (case included) while the
  prediction is normalised: "Yes" (ten humans) scores 0 even against "Yes".
* Its punctuation step detects ``digit,digit`` with ``(?<=\\d)(,)+(?=\\d)``,
  so "1,,2" also triggers delete-every-mark (the official regex needs exactly
  one comma). The per-question mean is ``statistics.mean`` (exact), not
  ``sum / len``.

With a single gold answer every variant scores exactly as it scores a unanimous
panel of ten copies of that answer (the tools themselves would return 0.0, the
leave-one-out leaving no answer to match). ``always_normalize`` is defined for
``"official"`` only.

Pure Python; no torch import.
"""

from __future__ import annotations

import functools
import re
import statistics
from typing import Literal

__all__ = [
    "ARTICLES",
    "CONTRACTIONS",
    "MANUAL_MAP",
    "PUNCTUATION",
    "VQA_VARIANTS",
    "VqaVariant",
    "normalize_answer",
    "vqa_accuracy",
]

VqaVariant = Literal["official", "evalai", "vizwiz", "lavis_pre2021", "lmms_eval"]
VQA_VARIANTS: tuple[VqaVariant, ...] = ("official", "evalai", "vizwiz", "lavis_pre2021", "lmms_eval")

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

# lmms-eval's EvalAIAnswerProcessor and the EvalAI server: one or more commas between two digits.
_COMMA_RUN_BETWEEN_DIGITS = re.compile(r"(?<=\d),+(?=\d)")

# EvalAI server (Cloud-CV/VQA-Evaluation) regex punctuation, over the same 21 marks as PUNCTUATION.
_MARKS = "".join(re.escape(p) for p in PUNCTUATION)
_EVALAI_MARK_NEXT_TO_SPACE_OR_MARK = re.compile(rf"(?<=[ {_MARKS}])[{_MARKS}]|[{_MARKS}](?=[ {_MARKS}])")
_EVALAI_MARK_BETWEEN_LETTERS = re.compile(rf"(?<=[a-zA-Z])[{_MARKS}](?=[a-zA-Z])")
_SPACE_RUN = re.compile(r" +")


def _process_punctuation(text: str, digit_comma_digit: re.Pattern[str] = _COMMA_STRIP) -> str:
    """``processPunctuation`` of vqaEval.py (lmms-eval passes its own ``digit,digit`` detector)."""
    out = text
    has_digit_comma_digit = digit_comma_digit.search(text) is not None
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


@functools.lru_cache(maxsize=1 << 16)
def normalize_answer(text: str) -> str:
    """Official VQA answer normalisation: ``processPunctuation`` then ``processDigitArticle``.

    Lower-cases; removes or spaces out punctuation; strips periods not followed by a digit;
    maps whole-word number words ``none``..``ten`` to digits; drops a/an/the; expands
    contractions ("dont" -> "don't"); collapses whitespace. Example: "Two dogs!" -> "2 dogs".
    Cached: human answers repeat ("yes", "2", "white"), so a 100,000-question set normalises a few thousand strings.
    """
    return _process_digit_article(_process_punctuation(text))


def _evalai_process_punctuation(text: str) -> str:
    """Regex ``processPunctuation`` of the EvalAI server's vqaEval.py (see the module docstring)."""
    out = _COMMA_RUN_BETWEEN_DIGITS.sub("", text)
    out = _EVALAI_MARK_NEXT_TO_SPACE_OR_MARK.sub(" ", out)
    out = _SPACE_RUN.sub(" ", out)
    out = _EVALAI_MARK_BETWEEN_LETTERS.sub(" ", out)
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _lmms_eval_process(text: str) -> str:
    """``EvalAIAnswerProcessor.__call__`` of lmms-eval: its ``word_tokenize``, then the usual steps."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return _lmms_eval_normalize(_clean_whitespace(text))


def _lmms_eval_normalize(text: str) -> str:
    """lmms-eval ``process_punctuation`` then ``process_digit_article``."""
    return _process_digit_article(_process_punctuation(text, _COMMA_RUN_BETWEEN_DIGITS))


# Each returns (prediction, GT answers) as the tool compares them.
def _prepare_official(prediction: str, answers: list[str], always_normalize: bool) -> tuple[str, list[str]]:
    pred = _clean_whitespace(prediction)
    gts = [_clean_whitespace(a) for a in answers]
    if always_normalize or len(set(gts)) > 1:
        pred = normalize_answer(pred)
        gts = [normalize_answer(a) for a in gts]
    return pred, gts


def _prepare_lavis_pre2021(prediction: str, answers: list[str]) -> tuple[str, list[str]]:
    pred = normalize_answer(_clean_whitespace(prediction))
    gts = [_process_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)
    return pred, gts


def _prepare_evalai(prediction: str, answers: list[str]) -> tuple[str, list[str]]:
    pred = _process_digit_article(_evalai_process_punctuation(_clean_whitespace(prediction)))
    gts = [_evalai_process_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)
    return pred, gts


def _prepare_vizwiz(prediction: str, answers: list[str]) -> tuple[str, list[str]]:
    return normalize_answer(_clean_whitespace(prediction)), list(answers)


def _prepare_lmms_eval(prediction: str, answers: list[str]) -> tuple[str, list[str]]:
    pred = _lmms_eval_process(prediction)
    gts = [_clean_whitespace(a) for a in answers]
    if len(set(gts)) > 1:
        gts = [_lmms_eval_normalize(a) for a in gts]
        pred = _lmms_eval_normalize(pred)  # second pass over the already processed prediction
    return pred, gts


_PREPARE = {
    "evalai": _prepare_evalai,
    "vizwiz": _prepare_vizwiz,
    "lavis_pre2021": _prepare_lavis_pre2021,
    "lmms_eval": _prepare_lmms_eval,
}


def vqa_accuracy(
    prediction: str,
    answers: list[str],
    *,
    variant: VqaVariant = "official",
    always_normalize: bool = False,
) -> float:
    """VQA accuracy of ``prediction`` against the human ``answers``, in [0, 1] (not percent).

    With two or more answers: the leave-one-out mean of ``min(1, #matches / 3)``. With the default
    ``variant="official"`` the normalisation is the official (quirky) one described in the module
    docstring, i.e. answers and prediction are normalised only when the answers are not all identical.
    The other ``variant`` values (``VQA_VARIANTS``) reproduce the EvalAI server, the VizWiz API,
    LAVIS (pre-2021 official code) and lmms-eval; the module docstring lists how each one differs.

    With exactly one answer: scored as the chosen variant scores a unanimous panel of identical
    answers; for ``"official"`` that is 1.0 if the prediction equals the answer after newline/tab
    replacement and ``strip()`` (no case folding or other normalisation), else 0.0.

    ``always_normalize=True`` (NOT the official behaviour; ``"official"`` only) normalises both
    sides in every case.

    Raises ``ValueError`` if ``answers`` is empty, if ``variant`` is unknown, or if
    ``always_normalize`` is combined with another variant.
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a list of strings, not a single string")
    if len(answers) == 0:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    if variant == "official":
        pred, gts = _prepare_official(prediction, list(answers), always_normalize)
    elif variant in _PREPARE:
        if always_normalize:
            raise ValueError(f"always_normalize is defined for variant='official' only, not {variant!r}")
        pred, gts = _PREPARE[variant](prediction, list(answers))
    else:
        raise ValueError(f"unknown VQA accuracy variant {variant!r}; expected one of {VQA_VARIANTS}")

    if len(gts) == 1:
        return 1.0 if gts[0] == pred else 0.0

    matches = [gt == pred for gt in gts]
    total_matches = sum(matches)
    scores = [min(1.0, (total_matches - left_out) / 3) for left_out in matches]
    if variant == "lmms_eval":
        return float(statistics.mean(scores))
    return sum(scores) / len(scores)
