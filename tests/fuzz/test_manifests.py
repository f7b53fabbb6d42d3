"""Fuzzing manifests: valid records (real PNGs in the dataset directory) interleaved with mutated ones, through every
reader of a manifest: `read_samples`, `load_split` (with and without skip_bad), `vlmtune data check` (in-process
`main`, stdout as strict as a UTF-8 terminal's) and training's preflight (`train.preflight.check_samples`, with the
tiny LLaVA's processor).

Each mutation has a level, the first reader that must name it:
    record   not a Sample (JSON, schema, types, empty answers, image paths and files, duplicate ids, bytes that are
             not UTF-8): every reader names its line; `read_samples`/`load_split` with skip_bad list it, keep the rest
    check    a Sample that `data check` and training refuse (literal image placeholders, texts over max_text_chars,
             lone surrogates in text): read, then named by `data check` and by the preflight by file:line
    neutral  odd but valid (any Unicode, NUL, deep-enough meta, NaN, path spellings, CRLF, blank lines): kept by all
Properties: no reader raises anything but its documented error; every mutated line is named where its level says,
and only those lines; with skip_bad no untouched record is lost.
"""

from __future__ import annotations

import copy
import json
import math
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fuzz.mutate import (
    ANSWER,
    BAD_IMAGE_FILES,
    BAD_PATHS,
    BLANK,
    INVALID_UTF8_BYTES,
    JSON,
    ODD_TEXT,
    PLACEHOLDER_TEXTS,
    SAFE_TEXT,
    SURROGATE,
    TOO_DEEP,
    cli,
    distinct_png,
    dumps,
    huge_text,
    insert_invalid_utf8,
    make_hostile_files,
    nested,
    wrong_type,
)
from hypothesis import given, note
from hypothesis import strategies as st

from vlmtune.data.dataset import MAX_NAMED, load_split
from vlmtune.data.sample import ROLES
from vlmtune.data.store import MANIFEST, BadRecord, read_jsonl, read_samples

TEXT_LIMIT = 1000
"""max_text_chars for `data check` and the preflight (the default, 100,000, only makes the huge texts slower)."""
FIELDS = {"id": ("string",), "messages": ("list",), "images": ("list",), "task": ("string",),
          "answers": ("list", "null"), "references": ("list", "null"), "source": ("string",),
          "split": ("string", "null"), "meta": ("object",),
          "chosen": ("string", "null"), "rejected": ("string", "null")}
"""SampleRecord's fields and the JSON types each takes."""


@dataclass
class Line:
    data: bytes
    level: str
    """good, record, check, neutral or blank."""
    what: str = ""
    id: str | None = None
    links: dict[str, str] = field(default_factory=dict)
    """Symlinks to make in the dataset: relative path -> target."""

    def __repr__(self) -> str:  # hypothesis prints the failing example: a 100,000-bracket line in a few dozen
        data = self.data if len(self.data) <= 300 else self.data[:200] + b"..." + self.data[-60:]
        return f"Line({data!r}, {self.level!r}, {self.what!r}, id={self.id!r}, links={self.links!r})"


@st.composite
def good_record(draw, name: str, image: str) -> dict:
    answer = draw(ANSWER)
    parts = [{"type": "image"}, {"type": "text", "text": draw(SAFE_TEXT)}]
    if draw(st.booleans()):
        parts.reverse()
    messages = [{"role": "system", "content": draw(SAFE_TEXT)}] if draw(st.booleans()) else []
    messages += [{"role": "user", "content": parts},
                 {"role": "assistant", "content": draw(st.sampled_from([answer, [{"type": "text", "text": answer}]]))}]
    record = {"id": name, "images": [image], "messages": messages, "task": "vqa",
              "split": draw(st.sampled_from([None, "train", "val", "test"]))}
    if draw(st.booleans()):
        record["answers"] = [answer, *draw(st.lists(ANSWER, max_size=3))]
    if draw(st.booleans()):
        record["meta"] = {"question_type": draw(SAFE_TEXT), "n": draw(st.integers())}
    return record


def _parts(record: dict) -> list[dict]:
    return next(m for m in record["messages"] if m["role"] == "user")["content"]


def _text_part(record: dict) -> dict:
    return next(p for p in _parts(record) if p["type"] == "text")


def _set_answer(record: dict, text) -> None:
    record["messages"][-1]["content"] = [{"type": "text", "text": text}]


def _answer(record: dict) -> str:
    content = record["messages"][-1]["content"]
    return content if isinstance(content, str) else content[0]["text"]


def _insert(draw, text: str, what: str) -> str:
    at = draw(st.integers(0, len(text)))
    return text[:at] + what + text[at:]


# ---------------------------------------------------------------- mutations: (draw, record) -> (level, what, line)


def m_field_type(draw, r):
    name = draw(st.sampled_from(sorted(FIELDS)))
    r[name] = draw(wrong_type(*FIELDS[name]))
    return "record", f"{name} of the wrong type", r


def m_field_missing(draw, r):
    name = draw(st.sampled_from(["id", "messages"]))
    del r[name]
    return "record", f"no {name}", r


def m_empty_id(draw, r):
    r["id"] = ""
    return "record", "empty id", r


def m_extra_key(draw, r):
    where = draw(st.sampled_from(["record", "message", "part"]))
    target, known = {"record": (r, FIELDS), "message": (r["messages"][-1], ("role", "content")),
                     "part": (_text_part(r), ("type", "text"))}[where]
    target[draw(st.text(max_size=8).filter(lambda k: k not in known))] = draw(JSON)
    return "record", f"unknown key in the {where}", r


def m_message_type(draw, r):
    k = draw(st.integers(0, len(r["messages"]) - 1))
    r["messages"][k] = draw(wrong_type("object"))
    return "record", f"messages[{k}] not an object", r


def m_role(draw, r):
    k = draw(st.integers(0, len(r["messages"]) - 1))
    r["messages"][k]["role"] = draw(wrong_type("string") | st.text(max_size=10).filter(lambda t: t not in ROLES))
    return "record", f"messages[{k}].role wrong", r


def m_content_type(draw, r):
    k = draw(st.integers(0, len(r["messages"]) - 1))
    r["messages"][k]["content"] = draw(wrong_type("list", "string"))
    return "record", f"messages[{k}].content wrong", r


def m_part(draw, r):
    parts = _parts(r)
    k = draw(st.integers(0, len(parts) - 1))
    how = draw(st.sampled_from(["type", "kind", "no text", "text type", "text in image"]))
    if how == "type":
        parts[k] = draw(wrong_type("object"))
    elif how == "kind":
        parts[k]["type"] = draw(wrong_type("string") | st.text(max_size=8).filter(lambda t: t not in ("text", "image")))
    elif how == "no text":
        _text_part(r).pop("text")
    elif how == "text type":
        _text_part(r)["text"] = draw(wrong_type("string"))
    else:
        next(p for p in parts if p["type"] == "image")["text"] = draw(SAFE_TEXT)
    return "record", f"content part: {how}", r


def m_slots(draw, r):
    how = draw(st.sampled_from(["slot", "image", "no images"]))
    if how == "slot":
        _parts(r).append({"type": "image"})
    elif how == "image":
        r["images"].append(r["images"][0])
    else:
        r["images"] = []
    return "record", f"image slots and images differ ({how})", r


def m_empty_answer(draw, r):
    blank = draw(BLANK)
    r["messages"][-1]["content"] = draw(st.sampled_from([blank, [{"type": "text", "text": blank}]]))
    r.pop("answers", None)
    return "record", "empty answer", r


def m_empty_entry(draw, r):
    name = draw(st.sampled_from(["answers", "references"]))
    values = draw(st.lists(ANSWER, max_size=3))
    if draw(st.booleans()) or not values:
        values.insert(draw(st.integers(0, len(values))), draw(BLANK | wrong_type("string")))
    else:
        values = []
    r[name] = values
    return "record", f"an empty or non-string entry in {name}", r


def m_bad_path(draw, r):
    r["images"][0] = draw(st.sampled_from(BAD_PATHS + [f"images/{n}.png" for n in BAD_IMAGE_FILES]))
    return "record", f"image path {r['images'][0]!r}", r


def m_not_utf8(draw, r):
    data = dumps(r).encode()
    return "record", "a byte that is not UTF-8", insert_invalid_utf8(data, draw(st.integers(0, len(data))),
                                                                  draw(st.sampled_from(INVALID_UTF8_BYTES)))


def m_truncated(draw, r):
    text = dumps(r)
    return "record", "truncated JSON", text[:draw(st.integers(1, len(text) - 1))].encode()


def m_not_object(draw, r):
    return "record", "not a JSON object", dumps(draw(wrong_type("object"))).encode()


def m_too_deep(draw, r):
    if draw(st.booleans()):
        n = draw(st.sampled_from([40, 5000, 100_000]))
        line = ("[" * n + "]" * n).encode()
        if draw(st.booleans()):  # and not UTF-8: the line's sample id is looked for before it is refused
            return "record", f"{n} nested lists and a byte that is not UTF-8", insert_invalid_utf8(
                line, draw(st.integers(0, len(line))), draw(st.sampled_from(INVALID_UTF8_BYTES)))
        return "record", f"{n} nested lists", line
    r["meta"] = {"deep": nested(draw(TOO_DEEP))}
    return "record", "meta nested too deeply", r


def m_placeholder(draw, r):
    token = draw(st.sampled_from(PLACEHOLDER_TEXTS))
    if draw(st.booleans()):
        _text_part(r)["text"] = _insert(draw, _text_part(r)["text"], token)
    else:
        _set_answer(r, _insert(draw, _answer(r), token))
    return "check", f"{token} in the text", r


def m_huge_text(draw, r):
    text = draw(huge_text(TEXT_LIMIT))
    where = draw(st.sampled_from(["question", "answer", "answers"]))
    if where == "question":
        _text_part(r)["text"] = text
    elif where == "answer":
        _set_answer(r, text)
    else:
        r["answers"] = [_answer(r), text]
    return "check", f"{len(text)} characters in the {where}", r


def m_surrogate_text(draw, r):
    s = draw(SURROGATE)
    where = draw(st.sampled_from(["question", "answer", "references"]))
    if where == "question":
        _text_part(r)["text"] = _insert(draw, _text_part(r)["text"], s)
    elif where == "answer":
        _set_answer(r, _insert(draw, _answer(r), s))
        r.pop("answers", None)
    else:
        r["references"] = [_answer(r), _insert(draw, "a caption", s)]
    return "check", f"lone surrogate in the {where}", r


def m_odd_text(draw, r):
    _text_part(r)["text"] = draw(ODD_TEXT)
    _set_answer(r, draw(ANSWER))
    r.pop("answers", None)
    return "neutral", "odd but valid text", r


def m_meta(draw, r):
    r["meta"] = {"values": draw(st.dictionaries(st.text(max_size=5), JSON, max_size=4)),
                 "nested": nested(draw(st.integers(0, 25))), "nan": math.nan, "inf": -math.inf, "big": 10**40}
    return "neutral", "meta: any JSON, 25 levels deep, NaN, big numbers", r


def m_surrogate_elsewhere(draw, r):
    name = draw(st.sampled_from(["id", "source", "split", "task"]))
    r[name] = _insert(draw, str(r.get(name) or "x"), draw(SURROGATE))
    return "record" if name == "id" else "neutral", f"lone surrogate in {name}", r  # an id must be valid text


def m_path_spelling(draw, r):
    rel = r["images"][0]
    spelling = draw(st.sampled_from(["dot", "slashes", "link"]))
    if spelling == "link":
        link = rel.replace(".png", "-link.png")
        r["images"][0] = link
        return "neutral", "a symlink inside the root", (r, {link: Path(rel).name})
    r["images"][0] = {"dot": "./" + rel.replace("/", "/./"), "slashes": rel.replace("/", "//")}[spelling]
    return "neutral", f"path spelt {r['images'][0]!r}", r


def m_crlf(draw, r):
    return "neutral", "CRLF line end", dumps(r).encode() + b"\r"


def m_duplicate_id(draw, r):
    return "record", "duplicate id", r  # the id of an earlier good record is set once the order is known


MUTATIONS = [m_field_type, m_field_missing, m_empty_id, m_extra_key, m_message_type, m_role, m_content_type, m_part,
             m_slots, m_empty_answer, m_empty_entry, m_bad_path, m_not_utf8, m_truncated, m_not_object, m_too_deep,
             m_duplicate_id, m_placeholder, m_huge_text, m_surrogate_text, m_odd_text, m_meta, m_surrogate_elsewhere,
             m_path_spelling, m_crlf]


def _id(data: bytes) -> str | None:
    try:
        record = json.loads(data)
    except (ValueError, RecursionError):  # the mutations make JSON that is malformed or too deep for Python
        return None
    return record.get("id") if isinstance(record, dict) else None


@st.composite
def manifests(draw) -> list[Line]:
    """Good records g0.. and mutated records m0.. (each with its own image, so no two records share one by content)
    and blank lines, in any order."""
    lines = []
    for k in range(draw(st.integers(1, 3))):
        record = draw(good_record(f"g{k}", f"images/g{k}.png"))
        lines.append(Line(dumps(record).encode(), "good", "", record["id"]))
    for j in range(draw(st.integers(1, 4))):
        base = draw(good_record(f"m{j}", f"images/m{j}.png"))
        mutate = draw(st.sampled_from(MUTATIONS))
        level, what, out = mutate(draw, copy.deepcopy(base))
        out, links = out if isinstance(out, tuple) else (out, {})
        data = out if isinstance(out, bytes) else dumps(out).encode()
        lines.append(Line(data, level, f"{mutate.__name__[2:]}: {what}", _id(data), links))
    lines += [Line(draw(st.sampled_from([b"", b"   ", b"\t"])), "blank") for _ in range(draw(st.integers(0, 2)))]
    lines = draw(st.permutations(lines))
    for line in [x for x in lines if x.what.startswith("duplicate_id")]:  # the id of a good record above it
        i = next(k for k, x in enumerate(lines) if x is line)  # (of two lines with one id, the later is named)
        above = [x for x in lines[:i] if x.level == "good"]
        if not above:
            lines.append(lines.pop(i))
            above = [x for x in lines if x.level == "good"]
        record = json.loads(line.data)
        record["id"] = line.id = above[0].id
        line.data = dumps(record).encode()
    return lines


def _write(root: Path, lines: list[Line]) -> dict[str, set[int]]:
    """The dataset on disk; returns level -> its (1-based) line numbers."""
    make_hostile_files(root)
    for k in range(4):
        (root / "images" / f"g{k}.png").write_bytes(distinct_png(k))
        (root / "images" / f"m{k}.png").write_bytes(distinct_png(100 + k))
    for line in lines:
        for link, target in line.links.items():
            (root / link).symlink_to(target)
    (root / MANIFEST).write_bytes(b"".join(line.data + b"\n" for line in lines))
    levels: dict[str, set[int]] = {level: set() for level in ("good", "record", "check", "neutral", "blank")}
    for n, line in enumerate(lines, start=1):
        levels[line.level].add(n)
    for n, line in enumerate(lines, start=1):
        note(f"line {n}: {line.level} {line.what} {line.data[:160]!r}")
    return levels


def _ids(lines: list[Line], numbers: set[int]) -> list[str]:
    return [lines[n - 1].id for n in sorted(numbers)]


def _preflight(samples, root: Path, predictor, run_dir: Path, skip_bad: bool) -> list:
    """`check_samples` of a training state holding only what it reads: one source, no val split, no probes."""
    from vlmtune.config import DataCfg, TrainCfg
    from vlmtune.data.images import DecodedImages
    from vlmtune.train.preflight import check_samples

    source = types.SimpleNamespace(name="fuzz", samples=list(samples))
    state = types.SimpleNamespace(
        mixture=types.SimpleNamespace(sources=[source]), roots=[root], val=[], data_root=root, probes=[],
        cfg=types.SimpleNamespace(data=DataCfg(path=str(root), max_length=4096, max_text_chars=TEXT_LIMIT,
                                               skip_bad=skip_bad), train=TrainCfg()),
        run_dir=run_dir, accelerator=types.SimpleNamespace(is_main_process=True, print=lambda *a, **k: None),
        images=DecodedImages(0), family=predictor.family, loaded=predictor.loaded)
    check_samples(state)
    return source.samples


@given(lines=manifests())
def test_every_bad_line_is_named_and_no_good_record_is_lost(lines, tmp_path_factory, llava):
    root = tmp_path_factory.mktemp("manifest")
    levels = _write(root, lines)
    manifest = root / MANIFEST
    record_bad, check_bad = levels["record"], levels["check"]
    kept = levels["good"] | levels["check"] | levels["neutral"]

    # read_samples: with skip_bad every record-level line is named and every other record kept, in order
    samples, bad = read_samples(root, skip_bad=True)
    assert [s.id for s in samples] == _ids(lines, kept)
    assert [b.line for b in bad] == sorted(record_bad)
    assert all(b.file == str(manifest) and str(b).startswith(f"{manifest}:{b.line}: ") for b in bad)
    if record_bad:
        with pytest.raises(BadRecord) as stop:
            read_samples(root)
        assert stop.value.line == min(record_bad)

    # load_split: rejected.jsonl lists them with file and line; without skip_bad one error names them all
    rejected = root.parent / f"{root.name}-rejected.jsonl"
    assert [s.id for s in load_split(root, None, skip_bad=True, rejected_path=rejected)] == _ids(lines, kept)
    listed = read_jsonl(rejected) if rejected.exists() else []
    assert [(r["file"], r["line"]) for r in listed] == [(str(manifest), n) for n in sorted(record_bad)]
    if record_bad:
        with pytest.raises(BadRecord) as stop:
            load_split(root, None, skip_bad=False)
        first, *rest = sorted(record_bad)
        assert str(stop.value).startswith(f"{manifest}:{first}: ")
        assert f"on line(s) {', '.join(map(str, rest[:MAX_NAMED]))}" in str(stop.value) or not rest

    # data check: exit status 1 and an error on every record- or check-level line, and on no other line
    report = root.parent / f"{root.name}-report.json"
    rc, _, err = cli(["data", "check", str(root), "--out", str(report), "--max-text-chars", str(TEXT_LIMIT)])
    assert rc == (1 if record_bad | check_bad else 0), err
    errors = json.loads(report.read_text())["errors"]
    assert {e["line"] for found in errors.values() for e in found} == record_bad | check_bad, errors

    # training's preflight: the check-level samples are named by file:line, skipped with skip_bad
    run_dir = tmp_path_factory.mktemp("run")
    if check_bad:
        with pytest.raises(ValueError) as stop:
            _preflight(samples, root, llava.value, run_dir, skip_bad=False)
        for n in check_bad:
            assert f"{manifest}:{n}: sample {lines[n - 1].id!r}" in str(stop.value)
    passed = _preflight(samples, root, llava.value, run_dir, skip_bad=True)
    assert [s.id for s in passed] == _ids(lines, levels["good"] | levels["neutral"])
    skipped = run_dir / "rejected.jsonl"
    skipped = read_jsonl(skipped) if skipped.exists() else []
    assert sorted(r["line"] for r in skipped) == sorted(check_bad)

