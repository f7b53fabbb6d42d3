"""Document VQA (DocVQA, InfographicVQA, ST-VQA style): ANLS with threshold 0.5 (the RRC evaluation by default;
`anls_variant` for lmms-eval's and Pix2Struct's), and exact match.

Rows: {"id", "prediction", "answers": [acceptable answers]} or {"target": "..."}.
"""

from __future__ import annotations

from vlmtune.eval.metrics.anls import anls
from vlmtune.eval.metrics.exact_match import exact_match
from vlmtune.eval.tasks.base import Row, Task, gold


def per_sample(prediction: str, row: Row, options: dict) -> dict[str, float]:
    answers = gold(row)
    return {"anls": anls(prediction, answers, variant=options.get("anls_variant", "rrc")),
            "exact_match": exact_match(prediction, answers)}


TASK = Task(
    name="docvqa",
    description="document / infographic / scene-text VQA scored with ANLS",
    metrics=("anls", "exact_match"),
    primary="anls",
    per_sample=per_sample,
    breakdown=("question_type", "source"),
    options={"anls_variant": "rrc"},
)
