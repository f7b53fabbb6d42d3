"""Image captioning: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D exactly as pycocoevalcap computes them, chrF
(sacrebleu), SPICE reported as unavailable offline. See `metrics.caption` for tokenisation and languages.

Rows: {"id", "prediction", "references": [captions], "meta": {"lang": "ru"}} (lang defaults to the `lang` option,
"en"). Rows in several languages are scored per language (each with its own CIDEr document frequencies); the
top-level values are then the means over languages weighted by rows, and each language's are under "by_lang".
"""

from __future__ import annotations

from vlmtune.eval.metrics.caption import caption_metrics
from vlmtune.eval.tasks.base import Row, Task, gold

METRICS = ("CIDEr", "Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "chrF")


def corpus(rows: list[Row], options: dict) -> tuple[dict, dict]:
    default = options.get("lang", "en")
    by_lang: dict[str, list[Row]] = {}
    for r in rows:
        by_lang.setdefault((r.get("meta") or {}).get("lang") or default, []).append(r)
    per_id, results = {}, {}
    for lang, group in sorted(by_lang.items()):
        res = caption_metrics({r["id"]: r["prediction"] for r in group}, {r["id"]: gold(r) for r in group},
                              lang=lang, tokenizer=options.get("tokenizer", "auto"))
        results[lang] = res
        per_id.update(res["per_sample"])
    n = len(rows)
    out: dict = {m: sum(results[lang]["corpus"][m] * len(by_lang[lang]) for lang in results) / n
                 for m in METRICS if all(m in results[lang]["corpus"] for lang in results)}
    first = next(iter(results.values()))
    out["unavailable"] = first.get("unavailable", {})
    out["notes"] = sorted({note for res in results.values() for note in res.get("notes", [])})
    out["tokenizer"] = {lang: res["tokenizer"] for lang, res in results.items()}
    if len(results) > 1:
        out["by_lang"] = {lang: {"n": len(by_lang[lang]), **res["corpus"]} for lang, res in results.items()}
    return out, per_id


TASK = Task(
    name="caption",
    description="image captioning (COCO, Flickr30k, NoCaps-style; any language)",
    metrics=METRICS,
    primary="CIDEr",
    corpus=corpus,
    breakdown=("source",),
    options={"lang": "en", "tokenizer": "auto"},
)
