"""Questions from rows: a template per (row, attribute, language), drawn from seed and image path, with its answer
(translated by the templates); yes/no statements; splits by image; the train split's answer balance.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from pathlib import Path

from vlmtune.data.attributes.table import Row
from vlmtune.data.attributes.templates import _PLACEHOLDER, Attribute, Templates, placeholders
from vlmtune.data.sample import Sample, assistant, user


def _hash(seed: int, *parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join([str(seed), *parts]).encode()).digest()[:8], "big")


def _answer(attr: Attribute, lang: str, value: str) -> str:
    return attr.answers[lang][value] if lang in attr.answers else value


def check_translations(tpl: Templates, langs: tuple[str, ...], rows: list[Row]) -> None:
    """Every value of every attribute has an answer in every language, or a ValueError listing all that do not."""
    problems = []
    for attr in tpl.attributes:
        seen: dict[str, list[int]] = defaultdict(list)
        for row in rows:
            if row.cells[attr.column] not in attr.skip_values:
                seen[row.cells[attr.column]].append(row.number)
        for lang in langs:
            if lang not in attr.answers:
                if seen and attr.translate and lang != tpl.values_language:
                    problems.append(f"{attr.name}: no answers.{lang} (the table is in {tpl.values_language}; add a "
                                    "translation of every value, or `translate: false` for language-neutral values)")
                continue
            missing = [v for v in seen if v not in attr.answers[lang]]
            if missing:
                listed = ", ".join(f"{v!r} (row{'s' if len(seen[v]) > 1 else ''} "
                                   f"{', '.join(map(str, seen[v][:5]))}{', ...' if len(seen[v]) > 5 else ''})"
                                   for v in missing)
                problems.append(f"{attr.name}: answers.{lang} has no translation for {listed}")
    if problems:
        raise ValueError(f"{tpl.file}: untranslated values (answers are never silently left in "
                         f"{tpl.values_language}):\n  " + "\n  ".join(problems))


def _fill(template: str, cells: dict[str, str], lang: str, by_column: dict[str, Attribute]) -> str | None:
    """The question with its placeholders filled from a row's `cells`, or None when a referenced cell is empty or a
    skip value. A placeholder whose column is a translated attribute gets the translation."""
    out = []
    for name in placeholders(template):
        value, attr = cells.get(name, ""), by_column.get(name)
        if not value or (attr is not None and value in attr.skip_values):
            return None
        out.append(_answer(attr, lang, value) if attr is not None else value)
    values = iter(out)
    return _PLACEHOLDER.sub(lambda m: m[0][0] if m[1] is None else next(values), template)


def yes_no_type(attr: Attribute) -> str:
    """The question_type of an attribute's yes/no questions (kept apart from its open questions in every breakdown
    and in `balance`)."""
    return f"{attr.name} yes/no"


def column_values(rows: list[Row], attr: Attribute) -> list[str]:
    """The attribute's distinct values in the table (skip values left out), sorted: a false statement's pool."""
    return sorted({r.cells[attr.column] for r in rows} - attr.skip_values)


def build_samples(rows: list[Row], tpl: Templates, langs: tuple[str, ...], seed: int,
                  split_of: dict[str, str]) -> tuple[list[Sample], dict[str, int], dict[str, dict[str, int]]]:
    """One Sample per (row, attribute, language) with a usable template, and for an attribute with `yes_no`
    templates two more: the row's value stated (answer yes) and another value of the column stated (answer no), the
    same template and the same wrong value in every language. Also returns the skipped cells per attribute and the
    (question type, language) pairs left without a question because no template was usable."""
    by_column: dict[str, Attribute] = {}
    for attr in tpl.attributes:
        by_column.setdefault(attr.column, attr)
    values = {a.name: column_values(rows, a) for a in tpl.attributes if a.yes_no}
    samples, skipped = [], {a.name: 0 for a in tpl.attributes}
    no_question: dict[str, dict[str, int]] = defaultdict(dict)

    def add(question_type: str, templates: dict[str, tuple[str, ...]], cells: dict[str, str], pick: int,
            answers: dict[str, str], id: str, row: Row, meta: dict) -> None:
        for lang in langs:
            usable = [q for q in (_fill(t, cells, lang, by_column) for t in templates[lang]) if q is not None]
            if not usable:
                no_question[question_type][lang] = no_question[question_type].get(lang, 0) + 1
                continue
            samples.append(Sample(
                id=f"{id}-{lang}", messages=[user(usable[pick % len(usable)]), assistant(answers[lang])],
                images=[f"images/{row.image}"], task="vqa", answers=None, source="attributes",
                split=split_of[row.image],
                meta={"question_type": question_type, "lang": lang, "row": row.number, **meta}))

    for row in rows:
        stem = Path(row.image).stem
        for attr in tpl.attributes:
            value = row.cells[attr.column]
            if value in attr.skip_values:
                skipped[attr.name] += 1
                continue
            pick = _hash(seed, "template", row.image, attr.name)  # the same for every language of the row
            add(attr.name, attr.questions, row.cells, pick, {lang: _answer(attr, lang, value) for lang in langs},
                f"{stem}-{attr.name}", row, {"value": value})
            others = [v for v in values.get(attr.name, []) if v != value]
            if not others:  # no yes/no templates, or a column with one value: nothing false to state
                continue
            wrong = others[_hash(seed, "false value", row.image, attr.name) % len(others)]
            pick = _hash(seed, "yes/no template", row.image, attr.name)
            for stated, word in ((value, 0), (wrong, 1)):
                add(yes_no_type(attr), attr.yes_no, {**row.cells, attr.column: stated}, pick,
                    {lang: tpl.yes_no_answers[lang][word] for lang in langs},
                    f"{stem}-{attr.name}-{'yes' if word == 0 else 'no'}", row,
                    {"answer_type": "yes/no", "value": value, "stated": stated})
    return samples, skipped, {t: n for t, n in no_question.items() if n}


def assign_splits(rows: list[Row], seed: int, val: float, test: float) -> dict[str, str]:
    """Image path -> "train" / "val" / "test". Images with the same bytes form one group, placed by the hash of
    (seed, its first path in sort order): a point in [0, 1) below `test` is test, below `test + val` val."""
    groups: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        groups[row.sha256].append(row.image)
    split_of = {}
    for paths in groups.values():
        u = _hash(seed, "split", min(paths)) / 2**64
        split = "test" if u < test else "val" if u < test + val else "train"
        split_of.update(dict.fromkeys(paths, split))
    return split_of


def parse_balance(balance: str | None) -> float | None:
    """"cap:K" -> K (>= 1); None -> None."""
    if balance is None:
        return None
    kind, _, k = balance.partition(":")
    try:
        cap = float(k)
    except ValueError:
        cap = float("nan")
    if kind != "cap" or not cap >= 1:
        raise ValueError(f"balance {balance!r}: expected cap:K with K >= 1, e.g. cap:3")
    return cap


def _answer_counts(samples: list[Sample]) -> dict[str, dict[str, dict[str, int]]]:
    counts: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for s in samples:
        counts[s.meta["question_type"]][s.meta["lang"]][s.target] += 1
    return {a: {lang: dict(c.most_common()) for lang, c in by_lang.items()} for a, by_lang in counts.items()}


def balance_train(samples: list[Sample], cap: float, seed: int) -> tuple[list[Sample], dict]:
    """Cap the train split: per (attribute, language), an answer more than `cap` times as frequent as the rarest
    keeps only floor(cap * rarest count) questions, those of the images with the smallest hash of (seed, attribute,
    image) - the same images in every language. Val and test are returned untouched."""
    groups: dict[tuple[str, str, str], list[Sample]] = defaultdict(list)
    for s in samples:
        if s.split == "train":
            groups[s.meta["question_type"], s.meta["lang"], s.target].append(s)
    rarest: dict[tuple[str, str], int] = {}
    for (attr, lang, _), members in groups.items():
        rarest[attr, lang] = min(rarest.get((attr, lang), len(members)), len(members))
    drop: set[str] = set()
    for (attr, lang, _), members in groups.items():
        keep = math.floor(cap * rarest[attr, lang] + 1e-9)
        members = sorted(members, key=lambda s: _hash(seed, "balance", attr, s.images[0]))
        drop.update(s.id for s in members[keep:])
    kept = [s for s in samples if s.id not in drop]
    train = [s for s in samples if s.split == "train"]
    return kept, {"cap": cap, "dropped": len(drop), "train_before": _answer_counts(train),
                  "train_after": _answer_counts([s for s in kept if s.split == "train"])}
