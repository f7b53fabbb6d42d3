"""Fuzzing the importers: a copy of a format's fixture (tests/fixtures/formats) with some of its records mutated
(values of any type anywhere in the record, keys removed or added, hostile text, image paths escaping the source,
absolute, to a directory, a FIFO or a corrupt file, whole records replaced; for line formats also bytes that are not
UTF-8, truncated lines and JSON nested too deeply), imported with `vlmtune data import ... --skip-bad` (in-process).

Properties: never a traceback; exit status 0; every untouched record is imported exactly as from the pristine
fixture; every record is either imported or listed in rejected.jsonl under its file and record number, and only
mutated records are listed. And an annotation file broken as a whole (not UTF-8, truncated, nested too deeply, not
the expected JSON shape) is named, file and line 0, with exit status 2 and no traceback.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from fuzz.mutate import (
    BAD_IMAGE_FILES,
    BAD_PATHS,
    INVALID_UTF8_BYTES,
    JSON,
    ODD_TEXT,
    SURROGATE,
    TOO_DEEP,
    Quiet,
    cli,
    dumps,
    huge_text,
    insert_invalid_utf8,
    make_hostile_files,
    nested,
    wrong_type,
)
from helpers import FORMAT_FIXTURES
from hypothesis import given, note
from hypothesis import strategies as st

from vlmtune.data.store import MANIFEST, read_jsonl


@dataclass(frozen=True)
class Source:
    """One format's fixture, seen as a list of records to mutate."""

    fmt: str
    fixture: str
    """Directory under tests/fixtures/formats copied for each example."""
    file: str
    """The annotation file whose records are mutated, relative to the copy."""
    arg: str = ""
    """What `data import` is given, relative to the copy (default: `file`)."""
    images: str | None = None
    """--images, relative to the copy."""
    key: str | None = None
    """The record list inside a JSON file (None: the file is the list); "lines" for JSON lines, "tsv" for a TSV."""
    image: tuple = ()
    """Where a record names its image (a path of keys), for the image-path mutation."""
    base: str = "."
    """The directory its image paths are relative to, where the hostile files (`make_hostile_files`) are put."""
    others: str = "\0"
    """Rejections that name another list of the same file (COCO: captions whose image is gone), not a record."""


SOURCES = {
    "vizwiz": Source("vizwiz", "vizwiz", "Annotations/train.json", images="train", image=("image",), base="train"),
    "vqav2": Source("vqav2", "vqav2", "v2_OpenEnded_mscoco_train2014_questions.json", key="questions",
                    image=("image_id",)),
    "coco-captions": Source("coco", "coco", "annotations/captions_train2014.json", key="images",
                            image=("file_name",), base="train2014", others="annotation "),
    "coco-karpathy": Source("coco", "coco", "karpathy/dataset_coco.json", images=".", key="images",
                            image=("filename",)),
    "llava": Source("llava", "llava", "llava_v1_5_mix665k.json", image=("image",)),
    "sharegpt": Source("sharegpt", "sharegpt", "train.jsonl", key="lines", image=("images", 0)),
    "sharegpt-pairs": Source("sharegpt", "sharegpt_dpo", "llamafactory_rlhf_v.jsonl", key="lines",
                             image=("images", 0)),
    "rlhf_v": Source("rlhf_v", "rlhf_v", "rlaif_v.jsonl", key="lines", image=("image",)),
    "openai": Source("openai", "openai", "train.jsonl", key="lines",
                     image=("messages", 1, "content", 0, "image_url", "url")),
    "chartqa": Source("chartqa", "chartqa/ChartQA Dataset/train", "train_human.json", image=("imgname",),
                      base="png"),
    "imagefolder": Source("imagefolder", "imagefolder/vqa/train", "metadata.jsonl", arg=".", key="lines",
                          image=("file_name",)),
    "cc3m": Source("cc3m", "cc3m", "cc3m.tsv", key="tsv"),
}
"""The importers of text annotations (llava's JSON-lines reader is sharegpt's; flickr30k groups five lines into one
sample, vlfeedback makes several pairs of one line or none, and hf reads parquet: not here)."""

def _copy(source: Source, dest: Path) -> Path:
    shutil.copytree(FORMAT_FIXTURES / source.fixture, dest)
    return dest


def _import(source: Source, root: Path, out: Path, skip_bad: bool = True) -> tuple[int, str]:
    argv = ["data", "import", source.fmt, str(root / (source.arg or source.file)), "--out", str(out)]
    argv += ["--images", str(root / source.images)] if source.images else []
    rc, _, err = cli(argv + (["--skip-bad"] if skip_bad else []))
    return rc, err


def _content(row: dict) -> str:
    """A sample as imported, less its id (some formats derive it from the records before it)."""
    return json.dumps({k: v for k, v in row.items() if k != "id"}, sort_keys=True, ensure_ascii=False)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Quiet:
    """Per source: how many records its file holds, and record number -> the sample imported from it."""
    from vlmtune.data.formats import get_format

    found = {}
    for name, source in SOURCES.items():
        root = _copy(source, tmp_path_factory.mktemp(name) / "src")
        images = root / source.images if source.images else None
        file = (root / source.file).resolve()
        samples = {r.line: _content(r.sample.to_json()) for r in get_format(source.fmt).read(root / (source.arg or
                   source.file), images) if Path(r.file).resolve() == file}
        found[name] = (len(_records(source, root / source.file)[0]), samples)
    return Quiet("the samples of each pristine fixture", found)


# ---------------------------------------------------------------- records in and out of their file


def _records(source: Source, file: Path) -> tuple[list, object]:
    """(the records, the parsed file) of a source's annotation file."""
    if source.key == "tsv":
        return file.read_bytes().split(b"\n")[1:-1], None  # the header, and the empty string after the last "\n"
    if source.key == "lines":
        return file.read_bytes().split(b"\n")[:-1], None
    doc = json.loads(file.read_text(encoding="utf-8"))
    return (doc if source.key is None else doc[source.key]), doc


def _write_records(source: Source, file: Path, records: list, doc) -> None:
    if source.key in ("tsv", "lines"):
        head = file.read_bytes().split(b"\n")[:1] if source.key == "tsv" else []
        file.write_bytes(b"".join(x + b"\n" for x in head + [r if isinstance(r, bytes) else dumps(r).encode()
                                                              for r in records]))
        return
    if source.key is not None:
        doc[source.key] = records
    file.write_text(dumps(doc if source.key is not None else records), encoding="utf-8")


def _paths(value, prefix=()):
    """Every path of keys/indices inside `value` (the empty path: the value itself)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _set(record, path: tuple, value):
    if not path:
        return value
    target = record
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return record


def _has(record, path: tuple) -> bool:
    try:
        for k in path:
            record = record[k]
    except (KeyError, IndexError, TypeError):
        return False
    return True


HOSTILE = (JSON | ODD_TEXT | huge_text(1000) | st.builds(lambda a, s: a + s, ODD_TEXT, SURROGATE)
           | st.sampled_from(["", " ", "<image>", "<image>\n<image>", "../x.png", "/etc/hostname", None, True, 0]))
"""Values put anywhere in a record."""


@st.composite
def mutation(draw, source: Source, record, lines: bool):
    """A mutated copy of one record (bytes for a line that is no longer JSON), and what was done."""
    if source.key == "tsv":
        cells = record.decode().split("\t")
        how = draw(st.sampled_from(["cell", "cells", "image", "utf8"]))
        if how == "cell":
            cells[draw(st.integers(0, len(cells) - 1))] = draw(ODD_TEXT | st.sampled_from(["", "<image>"]))
        elif how == "cells":
            cells = cells[:draw(st.integers(0, len(cells) - 1))] + draw(st.lists(ODD_TEXT, max_size=2))
        elif how == "image":
            cells[1] = draw(st.sampled_from(BAD_PATHS + [f"images/{n}.png" for n in BAD_IMAGE_FILES]))
        data = "\t".join(cells).replace("\n", " ").encode("utf-8", "surrogateescape")
        if how == "utf8":
            data = insert_invalid_utf8(data, draw(st.integers(0, len(data))), draw(st.sampled_from(INVALID_UTF8_BYTES)))
        return data if data.strip() else b"-", how  # a blank line is no record (the reader skips it)
    record = json.loads(record) if lines else copy.deepcopy(record)
    kinds = ["replace", "delete", "extra", "record"] + (["image"] if _has(record, source.image) else [])
    how = draw(st.sampled_from(kinds + (["utf8", "truncate", "deep"] if lines else [])))
    if how == "replace":
        path = draw(st.sampled_from(list(_paths(record))[1:]))
        record = _set(record, path, draw(HOSTILE))
        how = f"{'.'.join(map(str, path))} replaced"
    elif how == "delete":
        path = draw(st.sampled_from([p for p in _paths(record) if p and isinstance(p[-1], str)]))
        del _get(record, path[:-1])[path[-1]]
        how = f"{'.'.join(map(str, path))} deleted"
    elif how == "extra":
        record[draw(st.text(max_size=6).filter(lambda k: k not in record))] = draw(HOSTILE)
    elif how == "record":
        record = draw(wrong_type("object"))
    elif how == "image":
        bad = draw(st.sampled_from(BAD_PATHS + [f"images/{n}.png" for n in BAD_IMAGE_FILES]))
        record = _set(record, source.image, draw(st.integers()) if source.image == ("image_id",) else bad)
    elif how == "deep":
        record = {**record, "deep": nested(draw(TOO_DEEP))}
    if how in ("utf8", "truncate"):
        data = dumps(record).encode()
        at = draw(st.integers(1, len(data) - 1))
        return (insert_invalid_utf8(data, at, draw(st.sampled_from(INVALID_UTF8_BYTES))) if how == "utf8"
                else data[:at]), how
    return record, how


def _get(record, path: tuple):
    for k in path:
        record = record[k]
    return record


@st.composite
def mutated_sources(draw):
    """(source name, {record index: (mutated record, what)})."""
    name = draw(st.sampled_from(sorted(SOURCES)))
    source = SOURCES[name]
    records, _ = _records(source, FORMAT_FIXTURES / source.fixture / source.file)
    chosen = draw(st.sets(st.integers(0, len(records) - 1), min_size=1, max_size=len(records) - 1))
    lines = source.key == "lines"
    return name, {i: draw(mutation(source, records[i], lines)) for i in sorted(chosen)}


@given(case=mutated_sources())
def test_import_with_skip_bad_keeps_every_good_record_and_names_every_bad_one(case, pristine, tmp_path_factory):
    name, mutations = case
    source = SOURCES[name]
    root = _copy(source, tmp_path_factory.mktemp("import") / "src")
    make_hostile_files(root / source.base)
    file = root / source.file
    records, doc = _records(source, file)
    for i, (record, how) in mutations.items():
        records[i] = record
        note(f"record {i + 1}: {how}: {str(record)[:300]}")
    _write_records(source, file, records, doc)
    offset = 1 if source.key == "tsv" else 0  # a TSV's record numbers are its line numbers, after the header
    mutated = {i + 1 + offset for i in mutations}

    out = root.parent / "out"
    rc, err = _import(source, root, out)
    assert rc == 0, err
    imported = Counter(_content(r) for r in read_jsonl(out / MANIFEST))
    rejected = read_jsonl(out / "rejected.jsonl") if (out / "rejected.jsonl").exists() else []
    named = [r for r in rejected if not r["error"].startswith(source.others)]
    assert all(Path(r["file"]).resolve() == file.resolve() for r in rejected), rejected
    assert {r["line"] for r in named} <= mutated, named
    n_records, pristine_samples = pristine.value[name]
    untouched = Counter(s for line, s in pristine_samples.items() if line not in mutated)
    assert not untouched - imported, "untouched records lost"
    assert sum(imported.values()) + len(named) == n_records, (imported, named)


@st.composite
def broken_files(draw):
    name = draw(st.sampled_from(sorted(n for n, s in SOURCES.items() if s.key not in ("lines", "tsv"))))
    data = (FORMAT_FIXTURES / SOURCES[name].fixture / SOURCES[name].file).read_bytes()
    how = draw(st.sampled_from(["utf8", "truncate", "deep", "shape"]))
    if how == "utf8":
        data = insert_invalid_utf8(data, draw(st.integers(0, len(data))), draw(st.sampled_from(INVALID_UTF8_BYTES)))
    elif how == "truncate":
        data = data[:draw(st.integers(0, len(data) - 2))]
    elif how == "deep":
        depth = draw(st.sampled_from([draw(TOO_DEEP), 100_000]))
        data = b"[" * depth + data + b"]" * depth
    elif SOURCES[name].key is None:  # the file is the record list
        data = dumps(draw(wrong_type("list"))).encode()
    else:  # the list is not a list, or the file not an object
        key = SOURCES[name].key
        data = dumps(draw(st.builds(lambda v: {**json.loads(data), key: v}, wrong_type("list"))
                          | wrong_type("object"))).encode()
    return name, how, data


@given(case=broken_files())
def test_a_broken_annotation_file_is_named_never_a_traceback(case, tmp_path_factory):
    name, how, data = case
    source = SOURCES[name]
    root = _copy(source, tmp_path_factory.mktemp("broken") / "src")
    file = root / source.file
    file.write_bytes(data)
    for skip_bad in (False, True):
        rc, err = _import(source, root, root.parent / f"out-{skip_bad}", skip_bad)
        assert rc == 2 and str(file) in err, err
    rejected = read_jsonl(root.parent / "out-True" / "rejected.jsonl")
    assert [(r["file"], r["line"]) for r in rejected] == [(str(file), 0)], rejected
