"""The question templates of `vlmtune data vqa-from-attributes` (the format: data/attributes/__init__.py):
`load_templates` reads and checks the YAML into `Templates`, one `Attribute` per column asked about.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

YES_NO = {"en": ("yes", "no"), "pt": ("sim", "não"), "es": ("sí", "no"), "fr": ("oui", "non"), "de": ("ja", "nein"),
          "it": ("sì", "no"), "ru": ("да", "нет")}
"""The answers of the yes/no questions per language, unless the templates' `yes_no_answers` give them."""

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")  # {{ and }} are literal braces


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
