"""Evaluation metrics: pure functions, one module per metric family, each quoting its official definition.

    vqa.py            VQA accuracy (official GT-Vision-Lab; variants: evalai, vizwiz, lavis_pre2021, lmms_eval)
    answerability.py  VizWiz answerability: average precision and F1 of the "unanswerable" class
    caption.py        BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (pycocoevalcap's scorers), chrF; SPICE reported unavailable
    tokenize.py       PTB tokenisation (Java CoreNLP or its pure-Python equivalent) and a Unicode tokenizer
    ptb_lexer.py      the pure-Python equivalent: CoreNLP 3.4.1's PTB lexer without a JVM
    chartqa.py        relaxed accuracy (Pix2Struct definition)
    table.py          DePlot RMS precision / recall / F1 and RNSS
    anls.py           ANLS (RRC DocVQA; variants: lmms_eval, pix2struct)
    retrieval.py      Recall@K image->text and text->image
    exact_match.py    exact match after light normalisation

`METRICS` holds the per-answer ones, `(prediction, answers) -> float in [0, 1]`; the corpus-level ones (captioning,
answerability, table, retrieval) are called by their task (`eval/tasks/`).
"""

from __future__ import annotations

from collections.abc import Callable

from vlmtune.eval.metrics.anls import anls
from vlmtune.eval.metrics.chartqa import relaxed_accuracy_any
from vlmtune.eval.metrics.exact_match import exact_match
from vlmtune.eval.metrics.vqa import VQA_VARIANTS, normalize_answer, vqa_accuracy

__all__ = ["METRICS", "VQA_VARIANTS", "anls", "exact_match", "normalize_answer", "relaxed_accuracy_any",
           "vqa_accuracy"]

METRICS: dict[str, Callable[[str, list[str]], float]] = {
    "vqa_accuracy": vqa_accuracy,
    "exact_match": exact_match,
    "relaxed_accuracy": relaxed_accuracy_any,
    "anls": anls,
}
