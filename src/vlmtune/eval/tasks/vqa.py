"""Visual question answering: VQA accuracy (official GT-Vision-Lab by default, `vqa_variant` for the VizWiz API,
EvalAI, LAVIS and lmms-eval behaviours), exact match, per question/answer type, and VizWiz answerability.

Rows: {"id", "prediction", "answers": [the human answers], "meta": {"question_type", "answer_type", "answerable"}}.
Answerability (average precision, F1) is reported when rows carry meta "answerable" (VizWiz): the prediction's
answerable score is 0 when the model answered "unanswerable" (see `metrics.answerability.answerable_score`).
"""

from __future__ import annotations

from vlmtune.eval.metrics.answerability import answerability_metrics, answerable_score
from vlmtune.eval.metrics.exact_match import exact_match
from vlmtune.eval.metrics.vqa import vqa_accuracy
from vlmtune.eval.tasks.base import Row, Task, gold


def per_sample(prediction: str, row: Row, options: dict) -> dict[str, float]:
    answers = gold(row)
    return {"vqa_accuracy": vqa_accuracy(prediction, answers, variant=options.get("vqa_variant", "official")),
            "exact_match": exact_match(prediction, answers)}


def corpus(rows: list[Row], options: dict) -> tuple[dict, dict]:
    labelled = [r for r in rows if (r.get("meta") or {}).get("answerable") is not None]
    if not labelled:
        return {}, {}

    scores = [answerable_score(r["prediction"]) for r in labelled]
    m = answerability_metrics(scores, [int(r["meta"]["answerable"]) for r in labelled])
    return {f"answerability_{k}": v for k, v in m.items() if k != "n"}, {}


TASK = Task(
    name="vqa",
    description="visual question answering (VQAv2, VizWiz, GQA-style short answers)",
    metrics=("vqa_accuracy", "exact_match", "answerability_average_precision", "answerability_f1"),
    primary="vqa_accuracy",
    per_sample=per_sample,
    corpus=corpus,
    breakdown=("question_type", "answer_type", "source", "lang"),
    options={"vqa_variant": "official"},
    submission=True,
)
