"""Generated VQA from an attribute table: one row per image, one column per attribute -> one question per
(row, attribute, language), answered by the cell.

    vlmtune data vqa-from-attributes catalogue.xlsx --images photos/ --templates templates.yaml --out data/fashion-vqa

A worked example. The table (`catalogue.csv`; a .xlsx sheet works the same, the delimiter is sniffed among , ; TAB):

    image,top_type,top_colour
    look1.jpg,t-shirt,red
    look2.jpg,,blue
    look3.jpg,sweater,n/a

and the templates (`templates.yaml`; every scalar is read as a string, so `no`, `1` and `0.5` stay text):

    image_column: image                  # default: the first of image / file_name / filename in the header
    languages: [en, pt]                  # the first is the language the cells are written in (or `values_language`)
    attributes:
      top_colour:
        column: top_colour               # default: the attribute name
        questions:
          en: ["What colour is the {top_type}?", "What is the colour of the top?"]
          pt: ["Qual é a cor da parte de cima?"]
        answers:                         # every value must be translated for every other language (or
          pt: {red: vermelho, blue: azul}  #   `translate: false` for language-neutral values such as numbers)
        skip_values: ["n/a", "unknown"]  # cells that mean "no question" (an empty cell always does)
      top_type:
        questions: {en: ["What is the person wearing on top?"], pt: ["O que a pessoa veste em cima?"]}
        answers: {pt: {t-shirt: camiseta, sweater: suéter}}
        yes_no:                          # optional: statements to confirm or deny; {top_type} is the stated value
          en: ["Is the person wearing a {top_type} on top?"]
          pt: ["A pessoa veste {top_type} em cima?"]
    yes_no_answers: {pt: [sim, não]}     # optional: built in (YES_NO) for en, pt, es, fr, de, it, ru

give, for look1.jpg (table row 2):

    look1-top_colour-en  "What colour is the t-shirt?" or "What is the colour of the top?" -> "red"
    look1-top_colour-pt  "Qual é a cor da parte de cima?"                                  -> "vermelho"
    look1-top_type-en    "What is the person wearing on top?"                              -> "t-shirt"
    look1-top_type-pt    "O que a pessoa veste em cima?"                                   -> "camiseta"

    look1-top_type-yes-en  "Is the person wearing a t-shirt on top?"                       -> "yes"
    look1-top_type-no-en   "Is the person wearing a sweater on top?"                       -> "no"
    look1-top_type-yes-pt  "A pessoa veste camiseta em cima?"                              -> "sim"
    look1-top_type-no-pt   "A pessoa veste suéter em cima?"                                -> "não"

each a Sample with task "vqa", source "attributes", the image copied to `out/images/look1.jpg` and
meta {"question_type": "top_colour", "lang": "en", "row": 2, "value": "red"} (a yes/no question has question_type
"top_type yes/no", answer_type "yes/no", and "stated": the value its question states). For look2 only the second
English colour template is usable (its `{top_type}` cell is empty); look3 asks no colour question ("n/a") but still
its type. A placeholder is filled from the same row, translated when its column is a translated attribute.

Rules, each one a bug that hand-made attribute VQA sets had:
* Answers are the cell exactly as written, stripped of surrounding whitespace: never lower-cased or
  number-normalised ("phone", "Phone 2", "0.5" and "one" stay as they are). Translations come from the templates
  only; a value without one is an error listing every such value, never a silent English answer.
* The template of a (row, attribute, language) is a function of seed, the row's image path and the attribute, so
  re-sorting the spreadsheet changes nothing.
* Splits are by image (every question of an image in one split), from seed and image path; identical images (same
  sha256) share a split, so a photo listed twice cannot leak from train into test. A split never moves when rows are
  added, so with a few dozen images the ratios are only approximate (the report gives the counts).
* `balance="cap:K"` thins the train split only: per attribute and language, no answer may be more than K times as
  frequent as the rarest one; val and test keep the natural distribution.
* Yes/no questions, as the original fashion project asked them: for every (row, attribute with `yes_no` templates),
  one question stating the row's value (answer yes) and one stating another value of the same column (answer no),
  so they are balanced exactly, per attribute, language and split. The false value is drawn uniformly from the
  column's other values in the table, a function of seed, image path and attribute: the same in every language, and
  unchanged when the spreadsheet is re-sorted. A column with a single value has nothing false to state and gets
  none (reported). Values are taken as exclusive: "red" is false for a top whose cell says "blue".
* Values seen fewer than `min_count` times in the whole table are reported as too rare to learn, and kept.
* A bad row (empty image cell, missing or unreadable image, a path escaping `images`, a row whose cells do not
  match the header, bytes that are not UTF-8) stops the run naming table file and row, or with `skip_bad` goes to
  `out/rejected.jsonl`. Rows are read as text (images are hashed and copied as streams, never held in memory).

The package, in the order of a run: `templates.py` reads the templates, `table.py` the table's rows, `questions.py`
makes the questions, splits and balance; `generate_vqa` here drives them and writes the dataset.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from vlmtune.data.attributes.questions import (
    assign_splits,
    balance_train,
    build_samples,
    check_translations,
    column_values,
    parse_balance,
    yes_no_type,
)
from vlmtune.data.attributes.table import Row, iter_table, read_rows
from vlmtune.data.attributes.templates import YES_NO, Attribute, Templates, load_templates, placeholders
from vlmtune.data.formats.base import copy_image
from vlmtune.data.sample import Sample
from vlmtune.data.store import MANIFEST, BadRecord, write_jsonl, write_rejected
from vlmtune.io import atomic_write_text

REPORT = "report.json"
REJECTED = "rejected.jsonl"


def _languages(tpl: Templates, langs: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    if langs is None:
        return tpl.languages
    chosen = tuple(lang.strip() for lang in (langs.split(",") if isinstance(langs, str) else langs))
    unknown = [lang for lang in chosen if lang not in tpl.languages]
    if unknown or not chosen:
        raise ValueError(f"languages {unknown or list(chosen)} are not among the templates' {list(tpl.languages)}")
    return chosen


def _rare(rows: list[Row], tpl: Templates, min_count: int) -> tuple[dict, list[dict]]:
    """The whole table's value counts per attribute, and the values seen fewer than `min_count` times."""
    distribution = {}
    for attr in tpl.attributes:
        counts = Counter(r.cells[attr.column] for r in rows if r.cells[attr.column] not in attr.skip_values)
        distribution[attr.name] = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    rare = [{"attribute": a, "value": v, "count": n}
            for a, counts in distribution.items() for v, n in counts.items() if n < min_count]
    return distribution, rare


def _write(out: Path, rows: list[Row], samples: list[Sample], bad: list[BadRecord], report: dict,
           progress: bool) -> None:
    """Images first (copied once; a re-run after a crash skips those already there), the manifest last."""
    for row in tqdm(rows, desc="copy images", unit=" images", disable=not progress):
        copy_image(row.source, out, f"images/{row.image}")
    if bad:
        write_rejected(out / REJECTED, bad)
    elif (out / REJECTED).exists():
        (out / REJECTED).unlink()  # left by an earlier, interrupted run
    atomic_write_text(out / REPORT, json.dumps(report, ensure_ascii=False, indent=1) + "\n")
    write_jsonl(out / MANIFEST, (s.to_json() for s in samples))


def generate_vqa(table: str | Path, images: str | Path, templates: str | Path, out: str | Path,
                 langs: str | list[str] | None = None, balance: str | None = None, min_count: int = 20,
                 seed: int = 0, val: float = 0.1, test: float = 0.1, skip_bad: bool = False, progress: bool = True,
                 sheet: str | None = None) -> dict:
    """Write the VQA dataset generated from `table` (.csv or .xlsx; `sheet`: default the first) to the new dataset
    directory `out`, and return the report (also written to `out/report.json`). See the module docstring."""
    table, images, out = Path(table), Path(images), Path(out)
    tpl = load_templates(templates)
    langs = _languages(tpl, langs)
    cap = parse_balance(balance)
    if not (0 <= val and 0 <= test and val + test < 1):
        raise ValueError(f"val={val}, test={test}: each must be >= 0 and together < 1")
    if (out / MANIFEST).exists():
        raise FileExistsError(f"{out}: already holds a dataset ({MANIFEST}); generate into a new directory")
    if not images.is_dir():
        raise FileNotFoundError(f"{images}: no such images directory")
    rows, bad = read_rows(table, images, tpl, sheet, skip_bad, progress)
    check_translations(tpl, langs, rows)
    split_of = assign_splits(rows, seed, val, test)
    samples, skipped, no_question = build_samples(rows, tpl, langs, seed, split_of)
    if not samples:
        raise ValueError(f"{table}: no questions generated ({len(rows)} usable row(s), {len(bad)} bad)")
    balanced = None
    if cap is not None:
        samples, balanced = balance_train(samples, cap, seed)
    distribution, rare = _rare(rows, tpl, min_count)
    if rare:
        print(f"warning: {len(rare)} value(s) too rare to learn (< {min_count} rows; kept): "
              + ", ".join(f"{r['attribute']}={r['value']!r} ({r['count']})" for r in rare), file=sys.stderr)
    split_images = Counter(split_of.values())
    for split, ratio in (("val", val), ("test", test)):
        if ratio > 0 and not split_images[split]:
            print(f"warning: no image fell into the {split} split ({len(rows)} images, ratio {ratio})", file=sys.stderr)
    one_value = [a.name for a in tpl.attributes if a.yes_no and len(column_values(rows, a)) < 2]
    if one_value:
        print(f"warning: no yes/no questions for {', '.join(one_value)}: the column has a single value, so there is "
              "nothing false to state", file=sys.stderr)
    questions: dict[str, Counter] = {t: Counter() for a in tpl.attributes
                                     for t in (a.name, *([yes_no_type(a)] if a.yes_no else []))}
    for s in samples:
        questions[s.meta["question_type"]][s.meta["lang"]] += 1
    report = {
        "table": str(table), "out": str(out), "languages": list(langs), "samples": len(samples), "images": len(rows),
        "splits": dict(sorted(Counter(s.split for s in samples).items())),
        "split_images": dict(sorted(split_images.items())),
        "questions_per_attribute": {a: dict(c) for a, c in questions.items()},
        "distribution": distribution, "balanced": balanced, "rare": rare, "skipped_cells": skipped,
        "no_question": no_question, "yes_no_single_value": one_value, "rejected": len(bad),
    }
    out.mkdir(parents=True, exist_ok=True)
    _write(out, rows, samples, bad, report, progress)
    if bad:
        print(f"{out}: {len(bad)} bad row(s) skipped, listed in {out / REJECTED}", file=sys.stderr)
    return report


__all__ = ["YES_NO", "Attribute", "Row", "Templates", "assign_splits", "balance_train", "build_samples",
           "check_translations", "column_values", "generate_vqa", "iter_table", "load_templates", "parse_balance",
           "placeholders", "read_rows", "yes_no_type"]
