"""ChartQA (https://github.com/vis-nlp/ChartQA, "ChartQA Dataset/"): one folder per split, two JSON lists of questions.

    ChartQA Dataset/train/train_human.json       [{"imgname": "41699051005347.png",
                                                   "query": "What is the value for Ghana?", "label": "48"}, ...]
    ChartQA Dataset/train/train_augmented.json   the machine-generated questions, same fields
    ChartQA Dataset/train/png/41699051005347.png
    ChartQA Dataset/train/tables/41699051005347.csv        the chart's data table ("Entity,Value\\nGhana,48\\n...")
    ChartQA Dataset/train/annotations/41699051005347.json  optional (full release): {"models": [...bboxes...],
                                                                                     "type": "v_bar", ...}
    ChartQA Dataset/val/..., ChartQA Dataset/test/...

`src` is the dataset root (every split folder in it, in name order), one split folder, or one `<split>_<subset>.json`
file; `--images DIR` replaces the split's `png/` folder (one split only). Each question becomes one `chartqa` Sample:
the query, then the label as the target (ChartQA has one answer per question: `answers` stays None; the label must
be a string, as in the release: a number is a bad record, since str() would lose how it was written). The id is
"<split>-<subset>-<index>" (the question's position in its JSON file: many questions share a chart), the image goes to
images/<split>/<imgname> (chart names repeat across splits), and `meta` keeps subset ("human" / "augmented"), imgname,
the data table as its exact CSV text (`table`, when the file exists) and, when an annotation file exists, its exact
JSON text (`annotation`) and its chart type (`chart_type`, for breakdowns). Export writes the same layout back,
tables and annotations from `meta`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from vlmtune.data.formats.base import (
    BadRecord,
    Format,
    Imported,
    Record,
    copy_image,
    image_ref,
    load_json,
    text_value,
    write_json,
)
from vlmtune.data.images import ImageError, resolve_inside
from vlmtune.data.sample import Sample, assistant, user

SUBSETS = ("human", "augmented")


def _question_files(split_dir: Path) -> list[Path]:
    return [f for subset in SUBSETS for f in sorted(split_dir.glob(f"*_{subset}.json"))]


def _sources(src: Path, images: Path | None) -> list[tuple[Path, Path]]:
    """(question file, image folder) pairs, in reading order."""
    if src.is_file():
        return [(src, images or src.parent / "png")]
    if _question_files(src):
        return [(f, images or src / "png") for f in _question_files(src)]
    splits = sorted(d for d in src.iterdir() if d.is_dir() and _question_files(d)) if src.is_dir() else []
    if not splits:
        raise FileNotFoundError(f"{src}: no ChartQA questions (<split>_human.json / <split>_augmented.json) in it or "
                                "in its split folders")
    if images is not None:
        raise ValueError(f"{src}: --images replaces one split's png/ folder; give one split folder with it")
    return [(f, d / "png") for d in splits for f in _question_files(d)]


def _read_text(path: Path, where: str) -> str | None:
    """A table or annotation file's exact text (line ends kept), or None when there is none."""
    try:
        if not path.is_file():
            return None
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: {path} is not UTF-8 ({e})") from None
    except OSError as e:  # a name too long for the file system, a permission: a bad record, not a traceback
        raise ValueError(f"{where}: cannot read {path} ({e.strerror or e})") from None


def _sample(row: dict, split: str, subset: str, i: int, file: Path, png: Path) -> Imported:
    if not isinstance(row, dict):
        raise ValueError("a record must be a JSON object")
    imgname, query, label = row.get("imgname"), row.get("query"), row.get("label")
    if not isinstance(imgname, str) or not imgname:
        raise ValueError("missing 'imgname'")
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"{imgname}: missing or empty 'query'")
    if label is None:
        raise ValueError(f"{imgname}: missing 'label' (a string)")
    label = text_value(label, f"{imgname}: 'label'")
    where = f"{file} record {i}"
    ref = image_ref(png, imgname, where)
    split_dir = file.parent
    meta: dict = {"subset": subset, "imgname": imgname}
    stem = Path(imgname).with_suffix("")
    try:
        table = _read_text(resolve_inside(split_dir / "tables", f"{stem}.csv"), where)
        annotation = _read_text(resolve_inside(split_dir / "annotations", f"{stem}.json"), where)
    except ImageError as e:
        raise ValueError(f"{where}: {e}") from None
    if table is not None:
        meta["table"] = table
    if annotation is not None:
        try:
            parsed = load_json(annotation)
        except json.JSONDecodeError as e:
            raise ValueError(f"{imgname}: malformed annotation annotations/{stem}.json: {e}") from None
        if isinstance(parsed, dict) and isinstance(parsed.get("type"), str):
            meta["chart_type"] = parsed["type"]
        meta["annotation"] = annotation
    sample = Sample(id=f"{split}-{subset}-{i}", messages=[user(query), assistant(label)],
                    images=[f"images/{split}/{imgname}"], task="chartqa", source="chartqa", split=split, meta=meta)
    return Imported(sample, [ref], file, i + 1)


def read(src: Path, images: Path | None) -> Iterator[Record]:
    for file, png in _sources(Path(src), Path(images) if images else None):
        split, _, subset = file.stem.rpartition("_")
        if subset not in SUBSETS or not split:
            yield BadRecord(file, 0, "expected a file named <split>_human.json or <split>_augmented.json")
            continue
        try:
            rows = load_json(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            yield BadRecord(file, 0, f"malformed JSON: {e}")
            continue
        if not isinstance(rows, list):
            yield BadRecord(file, 0, "expected a JSON list of questions")
            continue
        for i, row in enumerate(rows):
            try:
                yield _sample(row, split, subset, i, file, png)
            except ValueError as e:
                yield BadRecord(file, i + 1, f"record {i}: {e}", json.dumps(row, ensure_ascii=False)[:500])


def _write_once(path: Path, text: str, written: dict[Path, str], sample_id: str) -> None:
    """Write a chart's table / annotation the first time it is met; the same chart must not bring another text."""
    if path in written:
        if written[path] != text:
            raise ValueError(f"sample {sample_id!r}: {path} was already written with a different text")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    written[path] = text


def write(items: Iterable[tuple[Sample, list[Path]]], dest: Path) -> dict:
    """The ChartQA layout: <split>/<split>_<subset>.json, png/, tables/ and annotations/ from meta (split "" -> "all",
    a sample without a ChartQA subset -> "human"). Ids are positions in the files: an export of a filtered dataset
    renumbers them."""
    by_file: dict[tuple[str, str], list[dict]] = {}
    written: dict[Path, str] = {}
    for sample, paths in items:
        if len(paths) != 1:
            raise ValueError(f"sample {sample.id!r}: ChartQA holds exactly one chart image per question")
        split = sample.split or "all"
        subset = sample.meta.get("subset") if sample.meta.get("subset") in SUBSETS else "human"
        imgname = sample.meta.get("imgname") or Path(sample.images[0]).name
        copy_image(paths[0], dest, f"{split}/png/{imgname}")
        stem = Path(imgname).with_suffix("")
        for key, folder, suffix in (("table", "tables", ".csv"), ("annotation", "annotations", ".json")):
            if isinstance(sample.meta.get(key), str):
                _write_once(resolve_inside(dest / split / folder, f"{stem}{suffix}"), sample.meta[key], written,
                            sample.id)
        by_file.setdefault((split, subset), []).append(
            {"imgname": imgname, "query": sample.question, "label": sample.target})
    for (split, subset), rows in by_file.items():
        write_json(dest / split / f"{split}_{subset}.json", rows)
    splits: dict[str, int] = {}
    for (split, _), rows in by_file.items():
        splits[split] = splits.get(split, 0) + len(rows)
    return {"splits": splits, "tables": sum(p.suffix == ".csv" for p in written)}


FORMAT = Format(
    name="chartqa",
    description="ChartQA split directory (<split>_human.json / <split>_augmented.json, png/, tables/)",
    layout="ChartQA Dataset/<split>/<split>_{human,augmented}.json + png/ + tables/ (+ annotations/), or one split",
    read=read,
    write=write,
)
