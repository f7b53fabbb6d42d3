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
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from vlmtune.data.images import ImageError, resolve_inside
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.store import MANIFEST, BadRecord, atomic_write_text, write_jsonl, write_rejected

IMAGE_COLUMNS = ("image", "file_name", "filename")
"""Image column names tried in this order when the templates name none."""
DELIMITERS = (",", ";", "\t")
REPORT = "report.json"
REJECTED = "rejected.jsonl"
YES_NO = {"en": ("yes", "no"), "pt": ("sim", "não"), "es": ("sí", "no"), "fr": ("oui", "non"), "de": ("ja", "nein"),
          "it": ("sì", "no"), "ru": ("да", "нет")}
"""The answers of the yes/no questions per language, unless the templates' `yes_no_answers` give them."""

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")  # {{ and }} are literal braces
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of undecodable bytes


# ---------------------------------------------------------------- templates


@dataclass(frozen=True)
class Attribute:
    name: str
    column: str
    questions: dict[str, tuple[str, ...]]
    """Language -> question templates; `{column}` placeholders are filled from the same row."""
    answers: dict[str, dict[str, str]]
    """Language -> {cell value: answer in that language}."""
    skip_values: frozenset[str]
    translate: bool
    """False: the values are language-neutral (numbers, brand names) and are the answer in every language."""
    yes_no: dict[str, tuple[str, ...]]
    """Language -> yes/no question templates stating a value: `{column}` (this attribute's own) is filled with the
    row's value (answer yes) and with another value of the column (answer no). Empty: no yes/no questions."""


@dataclass(frozen=True)
class Templates:
    file: Path
    image_column: str | None
    languages: tuple[str, ...]
    values_language: str
    """The language the table's cells are written in: the only one (with `translate: false`) needing no answers."""
    attributes: tuple[Attribute, ...]
    yes_no_answers: dict[str, tuple[str, str]]
    """Language -> (yes, no) answer words, for every language when some attribute has yes/no templates."""


def _strings(value, where: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{where}: expected a string or a list of strings, got {value!r}")
    return values


def _mapping(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping, got {value!r}")
    return value


def _check_keys(d: dict, known: set[str], where: str) -> None:
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")


def placeholders(template: str) -> list[str]:
    """The column names a question template refers to, e.g. "What colour is the {top_type}?" -> ["top_type"]."""
    return [m[1] for m in _PLACEHOLDER.finditer(template) if m[1] is not None]


def _check_template(template: str, where: str) -> None:
    if not template.strip():
        raise ValueError(f"{where}: empty question")
    if any(not name.strip() for name in placeholders(template)):
        raise ValueError(f"{where}: empty placeholder {{}} in {template!r}")
    if re.search(r"[{}]", _PLACEHOLDER.sub("", template)):
        raise ValueError(f"{where}: unmatched brace in {template!r} (write {{{{ or }}}} for a literal brace)")


def _attribute(name: str, spec, languages: tuple[str, ...], where: str) -> Attribute:
    spec = _mapping(spec, where)
    _check_keys(spec, {"column", "questions", "answers", "skip_values", "translate", "yes_no"}, where)
    questions = {lang: tuple(_strings(q, f"{where}.questions.{lang}"))
                 for lang, q in _mapping(spec.get("questions"), f"{where}.questions").items()}
    yes_no = {lang: tuple(_strings(q, f"{where}.yes_no.{lang}"))
              for lang, q in _mapping(spec.get("yes_no", {}), f"{where}.yes_no").items()}
    column = str(spec.get("column", name)).strip()
    answers = {lang: {str(k).strip(): str(v).strip() for k, v in _mapping(m, f"{where}.answers.{lang}").items()}
               for lang, m in _mapping(spec.get("answers", {}), f"{where}.answers").items()}
    for lang in set(questions) | set(answers) | set(yes_no):
        if lang not in languages:
            raise ValueError(f"{where}: language {lang!r} is not in languages {list(languages)}")
    missing = [lang for lang in languages if not questions.get(lang)]
    if missing:
        raise ValueError(f"{where}: no questions for language(s) {missing}")
    missing = [lang for lang in languages if yes_no and not yes_no.get(lang)]
    if missing:
        raise ValueError(f"{where}: no yes_no questions for language(s) {missing}")
    for lang, qs in questions.items():
        for q in qs:
            _check_template(q, f"{where}.questions.{lang}")
    for lang, qs in yes_no.items():
        for q in qs:
            _check_template(q, f"{where}.yes_no.{lang}")
            if column not in placeholders(q):
                raise ValueError(f"{where}.yes_no.{lang}: {q!r} does not contain {{{column}}}, the place of the "
                                 "stated value (the row's value: yes; another value of the column: no)")
    for lang, m in answers.items():
        empty = [k for k, v in m.items() if not v]
        if empty:
            raise ValueError(f"{where}.answers.{lang}: empty translation for {empty}")
    translate = str(spec.get("translate", "true")).lower()
    if translate not in ("true", "false"):
        raise ValueError(f"{where}.translate: expected true or false, got {spec['translate']!r}")
    if translate == "false" and answers:
        raise ValueError(f"{where}: `translate: false` and `answers` contradict each other")
    skip = {s.strip() for s in _strings(spec.get("skip_values", []), f"{where}.skip_values")} | {""}
    return Attribute(name, column, questions, answers, frozenset(skip), translate == "true", yes_no)


def _yes_no_answers(doc: dict, languages: tuple[str, ...], where: str) -> dict[str, tuple[str, str]]:
    """(yes, no) per language: the templates' `yes_no_answers`, else YES_NO."""
    given = _mapping(doc.get("yes_no_answers", {}), f"{where}: yes_no_answers")
    out = {}
    for lang in languages:
        words = tuple(w.strip() for w in _strings(given[lang], f"{where}: yes_no_answers.{lang}")) \
            if lang in given else YES_NO.get(lang)
        if words is None:
            raise ValueError(f"{where}: no yes/no answers for language {lang!r}: add yes_no_answers: "
                             f"{{{lang}: [<yes>, <no>]}} (built in: {sorted(YES_NO)})")
        if len(words) != 2 or not all(words) or words[0] == words[1]:
            raise ValueError(f"{where}: yes_no_answers.{lang}: expected two different words [<yes>, <no>], got "
                             f"{list(words)}")
        out[lang] = words
    unknown = set(given) - set(languages)
    if unknown:
        raise ValueError(f"{where}: yes_no_answers: language(s) {sorted(unknown)} not in languages {list(languages)}")
    return out


def load_templates(path: str | Path) -> Templates:
    """Read and check a templates YAML file (format in the module docstring). Every scalar is read as a string
    (YAML's BaseLoader), so answer keys such as `no`, `yes`, `1` or `0.5` are never turned into booleans or numbers."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    doc = _mapping(doc, str(path))
    _check_keys(doc, {"image_column", "languages", "values_language", "attributes", "yes_no_answers"}, str(path))
    if "languages" not in doc:
        raise ValueError(f"{path}: `languages` is required (e.g. languages: [en, pt])")
    languages = tuple(_strings(doc["languages"], f"{path}: languages"))
    if not languages or len(set(languages)) != len(languages):
        raise ValueError(f"{path}: languages must be a non-empty list without repeats, got {list(languages)}")
    values_language = doc.get("values_language", languages[0])
    if values_language not in languages:
        raise ValueError(f"{path}: values_language {values_language!r} is not in languages {list(languages)}")
    attrs = _mapping(doc.get("attributes"), f"{path}: attributes")
    if not attrs:
        raise ValueError(f"{path}: no attributes")
    attributes = tuple(_attribute(name, spec, languages, f"{path}: attributes.{name}") for name, spec in attrs.items())
    yes_no = _yes_no_answers(doc, languages, str(path)) if any(a.yes_no for a in attributes) else {}
    image_column = doc.get("image_column")
    return Templates(path, image_column.strip() if image_column else None, languages, values_language, attributes,
                     yes_no)


# ---------------------------------------------------------------- tables


def _cell_text(value) -> str:
    """An .xlsx cell as the text the spreadsheet shows (numbers as Python writes them: 0.5 -> "0.5", 2 -> "2")."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == datetime.min.time() else value.isoformat(sep=" ")
    return str(value)


def _sniff_delimiter(header_line: str) -> str:
    """The delimiter among , ; TAB that occurs most often in the header row (ties: the earlier in DELIMITERS)."""
    counts = [header_line.count(d) for d in DELIMITERS]
    return DELIMITERS[counts.index(max(counts))]


def _iter_csv(path: Path) -> Iterator[tuple[int, list[str]] | BadRecord]:
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        first = f.readline()
        reader = csv.reader(itertools.chain([first], f), delimiter=_sniff_delimiter(first))
        number = 0
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                number += 1
                yield BadRecord(path, number, f"row {number}: unreadable ({e})")
                continue
            number += 1
            if any(_NOT_UTF8.search(c) for c in cells):
                yield BadRecord(path, number, f"row {number}: not valid UTF-8 (save the table as UTF-8 CSV)")
            else:
                yield number, cells


def _iter_xlsx(path: Path, sheet: str | None) -> Iterator[tuple[int, list[str]] | BadRecord]:
    import openpyxl

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises zipfile, KeyError, XML errors... for a file that is not a workbook
        raise ValueError(f"{path}: cannot open as .xlsx ({type(e).__name__}: {e})") from None
    try:
        if sheet is not None and sheet not in wb.sheetnames:
            raise ValueError(f"{path}: no sheet {sheet!r}; sheets: {wb.sheetnames}")
        ws = wb[sheet] if sheet is not None else wb.worksheets[0]
        for number, values in enumerate(ws.iter_rows(values_only=True), start=1):  # read_only starts at row 1
            yield number, [_cell_text(v) for v in values]
    finally:
        wb.close()


def iter_table(path: str | Path, sheet: str | None = None) -> Iterator[tuple[int, list[str]] | BadRecord]:
    """Every row of a .csv or .xlsx table, header included, as (row number, cells as text) - the numbers a
    spreadsheet shows, row 1 first - or a BadRecord for a row that cannot be read."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        return _iter_xlsx(path, sheet)
    if suffix in (".csv", ".tsv", ".txt"):
        if sheet is not None:
            raise ValueError(f"{path}: `sheet` applies to .xlsx tables only")
        return _iter_csv(path)
    raise ValueError(f"{path}: unsupported table type {path.suffix!r} (use .csv or .xlsx)")


@dataclass
class Row:
    number: int
    """The table row (1-based, the header is row 1 when it is the first row)."""
    cells: dict[str, str]
    """Column -> cell text stripped of surrounding whitespace."""
    image: str
    """The image path relative to the images directory (posix)."""
    source: Path
    sha256: str


def _header(cells: list[str], table: Path, tpl: Templates) -> tuple[list[str], str]:
    """The column names and the image column, checking that every column the templates use exists."""
    names = [c.strip() for c in cells]
    while names and not names[-1]:
        names.pop()
    dup = sorted(n for n, k in Counter(names).items() if n and k > 1)
    if dup:
        raise ValueError(f"{table}: repeated column name(s) {dup} in the header row")
    image_column = tpl.image_column or next((c for c in IMAGE_COLUMNS if c in names), None)
    if image_column is None or image_column not in names:
        raise ValueError(f"{table}: no image column {tpl.image_column or ' / '.join(IMAGE_COLUMNS)!r} in the "
                         f"header {names} (set image_column in {tpl.file})")
    needed = {a.column: f"attributes.{a.name}.column" for a in tpl.attributes}
    for a in tpl.attributes:
        for key, templates in (("questions", a.questions), ("yes_no", a.yes_no)):
            for lang, questions in templates.items():
                for q in questions:
                    for name in placeholders(q):
                        needed.setdefault(name, f"attributes.{a.name}.{key}.{lang} {q!r}")
    missing = {c: used for c, used in needed.items() if c not in names}
    if missing:
        raise ValueError(f"{tpl.file}: column(s) not in the header of {table}: "
                         + "; ".join(f"{c!r} (used by {u})" for c, u in missing.items()) + f". Columns: {names}")
    return names, image_column


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _row(number: int, cells: list[str], names: list[str], image_column: str, images: Path) -> Row:
    """One data row -> Row, or ValueError saying what is wrong with it."""
    if len(cells) < len(names) or any(c.strip() for c in cells[len(names):]):
        raise ValueError(f"{len(cells)} cells but the header has {len(names)} columns (an unquoted delimiter "
                         "inside a value, or a cut row?)")
    row = {name: cell.strip() for name, cell in zip(names, cells[:len(names)], strict=True) if name}
    rel = row[image_column]
    if not rel:
        raise ValueError(f"empty image cell ({image_column!r})")
    path = resolve_inside(images, rel)  # ImageError (a ValueError) for absolute or escaping paths
    if not path.is_file() and "\\" in rel:  # a catalogue typed on Windows: photos\look1.jpg
        rel = rel.replace("\\", "/")
        path = resolve_inside(images, rel)
    if not path.is_file():
        raise ImageError(f"image {rel!r} not found in {images}")
    from vlmtune.data.formats.base import check_image

    check_image(path)
    # the path as written, normalised ("./a//b.png" -> "a/b.png"), not resolved: a symlink keeps its own name
    return Row(number, row, Path(os.path.normpath(rel)).as_posix(), path, _sha256(path))


def read_rows(table: Path, images: Path, tpl: Templates, sheet: str | None, skip_bad: bool,
              progress: bool) -> tuple[list[Row], list[BadRecord]]:
    """Pass 1: the table's valid rows (text only; images hashed as streams) and its bad ones."""
    from tqdm import tqdm

    rows: list[Row] = []
    bad: list[BadRecord] = []
    header: tuple[list[str], str] | None = None
    stems: dict[str, int] = {}
    for rec in tqdm(iter_table(table, sheet), desc="read table", unit=" rows", disable=not progress):
        if isinstance(rec, tuple) and not any(c.strip() for c in rec[1]):
            continue  # blank rows (a spreadsheet's formatted-but-empty rows, blank CSV lines)
        if header is None:
            if isinstance(rec, BadRecord):
                raise ValueError(f"{table}: the header row is unreadable ({rec.reason})")
            header = _header(rec[1], table, tpl)
            continue
        if isinstance(rec, tuple):
            number, cells = rec
            try:
                row = _row(number, cells, *header, images)
                stem = Path(row.image).stem
                if stem in stems:
                    raise ValueError(f"image {row.image!r}: the name {stem!r} is already used by row {stems[stem]} "
                                     "(sample ids are <image stem>-<attribute>-<lang>)")
                stems[stem] = number
                rows.append(row)
                continue
            except (ValueError, OSError) as e:  # ImageError is a ValueError; OSError: an unreadable image file
                rec = BadRecord(table, number, f"row {number}: {e}", json.dumps(cells, ensure_ascii=False))
        if not skip_bad:
            raise BadRecord(rec.file, rec.line, rec.reason + " (--skip-bad skips bad rows)", rec.raw)
        bad.append(rec)
    if header is None:
        raise ValueError(f"{table}: empty table (no header row)")
    return rows, bad


# ---------------------------------------------------------------- questions, splits, balance


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


# ---------------------------------------------------------------- the driver


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
    from tqdm import tqdm

    from vlmtune.data.formats.base import copy_image

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
