"""VQAv2 (https://visualqa.org/download.html): one questions file and one annotations file per split, COCO images.

    v2_OpenEnded_mscoco_val2014_questions.json
        {"info": {...}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {...}, "data_subtype": "val2014",
         "questions": [{"image_id": 42, "question": "What is on the plate?", "question_id": 42000}, ...]}
    v2_mscoco_val2014_annotations.json
        {"info": {...}, "license": {...}, "data_type": "mscoco", "data_subtype": "val2014",
         "annotations": [{"question_type": "what is on the", "multiple_choice_answer": "pizza",
                          "answers": [{"answer": "pizza", "answer_confidence": "yes", "answer_id": 1}, ... 10 in all],
                          "image_id": 42, "answer_type": "other", "question_id": 42000}, ...]}
    val2014/COCO_val2014_000000000042.jpg

`src` is a questions file (its annotations are found beside it, or in a sibling Annotations/ folder, by the official
name; test2015 / test-dev2015 have none) or a directory holding the files (also in Questions/ and Annotations/
sub-folders). Images are `<folder>/COCO_<folder>_<image_id:012d>.jpg`, where the folder is the data_subtype
(test-dev2015 questions use test2015 images), looked up in `--images` (the folder itself or its parent) or beside the
JSON files.

Each question becomes one VQA Sample, id = str(question_id), in the order of the questions file: the target is the
official multiple_choice_answer, `answers` the ten human answers as given (never normalised), `meta` keeps
question_type, answer_type, image_id, question_id and the answer confidences (answer_id is always 1..10 and is
rewritten). The split comes from data_subtype: train2014 -> train, val2014 -> val, test2015 -> test,
test-dev2015 -> test-dev. Questions without annotations (test splits) end with the question. Many questions share one
image, stored once as images/COCO_<folder>_<image_id:012d>.jpg.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from vlmtune.data.formats.base import (
    BadRecord,
    Format,
    ImageRef,
    Imported,
    Record,
    copy_image,
    image_ref,
    load_json,
    write_json,
)
from vlmtune.data.images import load_image, resolve_inside
from vlmtune.data.sample import Sample, assistant, user

QUESTIONS = "v2_OpenEnded_mscoco_{}_questions.json"
ANNOTATIONS = "v2_mscoco_{}_annotations.json"
_QUESTIONS_RE = re.compile(r"^v2_OpenEnded_mscoco_(?P<sub>.+)_questions\.json$")
_SUBTYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_SPLITS = {"train2014": "train", "val2014": "val", "test2015": "test", "test-dev2015": "test-dev"}
_SUBTYPES = {split: sub for sub, split in _SPLITS.items()}
INFO = {"description": "This is v2.0 of the VQA dataset.", "url": "http://visualqa.org", "version": "2.0",
        "year": 2017, "contributor": "VQA Team", "date_created": "2017-04-26 17:07:13"}
LICENSE = {"url": "http://creativecommons.org/licenses/by/4.0/",
           "name": "Creative Commons Attribution 4.0 International License"}


def split_of(subtype: str) -> str:
    """data_subtype -> split: train2014 -> train, test-dev2015 -> test-dev (other names lose a trailing year)."""
    return _SPLITS.get(subtype) or re.sub(r"\d{4}$", "", subtype) or subtype


def subtype_of(split: str) -> str:
    """split -> data_subtype, the inverse of `split_of`."""
    return _SUBTYPES.get(split, f"{split}2014")


def image_folder(subtype: str) -> str:
    """The COCO image folder of a data_subtype (test-dev2015 questions are about test2015 images)."""
    return "test2015" if subtype == "test-dev2015" else subtype


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _question_files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such file or directory")
    dirs = [d for d in (src, src / "Questions", src / "questions") if d.is_dir()]
    files = sorted((f for d in dirs for f in d.glob(QUESTIONS.format("*"))), key=lambda f: (f.name, str(f)))
    if not files:
        raise FileNotFoundError(f"{src}: no {QUESTIONS.format('<subtype>')} here or in Questions/")
    return files


def _annotations_file(questions: Path, subtype: str) -> Path | None:
    d = questions.parent
    for folder in (d, d / "Annotations", d / "annotations", d.parent / "Annotations", d.parent / "annotations"):
        if (folder / ANNOTATIONS.format(subtype)).is_file():
            return folder / ANNOTATIONS.format(subtype)
    return None


def _image_dir(folder: str, images: Path | None, questions: Path) -> Path:
    if images is not None:
        return images / folder if (images / folder).is_dir() else images
    bases = (questions.parent, questions.parent.parent)
    return next((b / folder for b in bases if (b / folder).is_dir()), questions.parent / folder)


def _load(file: Path, key: str) -> tuple[dict | None, str]:
    """The JSON object in `file` holding a list under `key`, or (None, why not)."""
    try:
        data = load_json(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"malformed JSON: {e}"
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        return None, f"expected a JSON object with a '{key}' list"
    return data, ""


def _question(q, annotations: dict[int, dict] | None, ann_name: str, split: str, folder: str, image_dir: Path,
              where: str) -> tuple[Sample, ImageRef]:
    if not isinstance(q, dict):
        raise ValueError("a question must be a JSON object")
    qid, image_id, text = q.get("question_id"), q.get("image_id"), q.get("question")
    if not _is_int(qid):
        raise ValueError("missing or non-integer 'question_id'")
    if not _is_int(image_id):
        raise ValueError(f"question_id {qid}: missing or non-integer 'image_id'")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"question_id {qid}: missing or empty 'question'")
    name = f"COCO_{folder}_{image_id:012d}.jpg"
    ref = image_ref(image_dir, name, where)
    messages, answers, meta = [user(text)], None, {}
    if annotations is not None:
        ann = annotations.get(qid)
        if ann is None:
            raise ValueError(f"question_id {qid}: no annotation in {ann_name}")
        if ann.get("image_id") != image_id:
            raise ValueError(f"question_id {qid}: image_id {ann.get('image_id')!r} in {ann_name}, {image_id} here")
        raw, mca = ann.get("answers"), ann.get("multiple_choice_answer")
        if not isinstance(mca, str):
            raise ValueError(f"question_id {qid}: missing or non-string 'multiple_choice_answer'")
        if not isinstance(raw, list) or not raw or not all(
                isinstance(a, dict) and isinstance(a.get("answer"), str) for a in raw):
            raise ValueError(f"question_id {qid}: 'answers' must be a non-empty list of {{'answer': str}} objects")
        answers = [a["answer"] for a in raw]
        messages.append(assistant(mca))
        meta = {k: ann[k] for k in ("question_type", "answer_type") if k in ann}
        meta["answer_confidence"] = [a.get("answer_confidence") for a in raw]
    meta.update(image_id=image_id, question_id=qid)
    sample = Sample(id=str(qid), messages=messages, images=[f"images/{name}"], task="vqa", answers=answers,
                    source="vqav2", split=split, meta=meta)
    return sample, ref


def read(src: Path, images: Path | None) -> Iterator[Record]:
    for file in _question_files(Path(src)):
        data, why = _load(file, "questions")
        if data is None:
            yield BadRecord(file, 0, why)
            continue
        m = _QUESTIONS_RE.match(file.name)
        subtype = data.get("data_subtype") or (m and m["sub"])
        if not isinstance(subtype, str) or not _SUBTYPE_RE.match(subtype):
            yield BadRecord(file, 0, f"data_subtype {subtype!r}: expected a name like 'val2014' (the file's "
                                     f"'data_subtype', else the <subtype> of {QUESTIONS.format('<subtype>')})")
            continue
        annotations = None
        ann_file = _annotations_file(file, subtype)
        if ann_file is not None:
            ann_data, why = _load(ann_file, "annotations")
            if ann_data is None:
                yield BadRecord(ann_file, 0, why)
                continue
            annotations = {a["question_id"]: a for a in ann_data["annotations"]
                           if isinstance(a, dict) and _is_int(a.get("question_id"))}
        ann_name = ann_file.name if ann_file else ""
        folder = image_folder(subtype)
        image_dir = _image_dir(folder, images, file)
        split = split_of(subtype)
        for i, q in enumerate(data["questions"]):
            where = f"{file} question {i}"
            try:
                sample, ref = _question(q, annotations, ann_name, split, folder, image_dir, where)
            except ValueError as e:
                yield BadRecord(file, i + 1, f"question {i}: {e}", json.dumps(q, ensure_ascii=False)[:500])
                continue
            yield Imported(sample, [ref], file, i + 1)


# ---------------------------------------------------------------- export

def _answer_type(answer: str) -> str:
    a = answer.strip().lower()
    return "yes/no" if a in ("yes", "no") else "number" if a.isdigit() else "other"


def _put_image(src: Path, dest: Path, rel: str) -> None:
    """VQAv2 image names end in .jpg: JPEGs are copied byte for byte, other images re-encoded as JPEG."""
    if src.suffix.lower() in (".jpg", ".jpeg"):
        copy_image(src, dest, rel)
        return
    out = resolve_inside(dest, rel)
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        load_image(src).save(out, "JPEG", quality=95)


def _free(used: set[int], start: int) -> int:
    while start in used:
        start += 1
    used.add(start)
    return start


def write(items: Iterable[tuple[Sample, list[Path]]], dest: Path) -> dict:
    """The VQAv2 layout: v2_OpenEnded_mscoco_<subtype>_questions.json, v2_mscoco_<subtype>_annotations.json (splits
    with answers) and <folder>/COCO_<folder>_<image_id:012d>.jpg. Samples from other sources get image ids (per image)
    and question ids (image_id * 1000 + n, the VQA convention) that do not clash with the ones given."""
    rows: list[tuple[Sample, Path, str, dict, dict | None]] = []
    image_ids: dict[str, int] = {}  # in-dataset image path -> image_id
    used_images: set[int] = set()
    used_questions: set[int] = set()
    for sample, paths in items:
        if len(paths) != 1:
            raise ValueError(f"sample {sample.id!r}: VQAv2 holds exactly one image per question")
        meta, subtype = sample.meta, subtype_of(sample.split or "all")
        if not _SUBTYPE_RE.match(subtype):
            raise ValueError(f"sample {sample.id!r}: split {sample.split!r} cannot name a VQAv2 file")
        image_id = meta.get("image_id")
        if _is_int(image_id):
            image_ids.setdefault(sample.images[0], image_id)
            used_images.add(image_id)
        qid = meta.get("question_id")
        if not _is_int(qid):
            qid = int(sample.id) if sample.id.isascii() and sample.id.isdigit() else None
        if qid is not None:
            if qid in used_questions:
                raise ValueError(f"sample {sample.id!r}: duplicate question_id {qid}")
            used_questions.add(qid)
        question = {"image_id": None, "question": sample.question, "question_id": qid}
        annotation = None
        if sample.messages[-1]["role"] == "assistant":
            answers = sample.answers or [sample.target]
            conf = meta.get("answer_confidence")
            if not isinstance(conf, list) or len(conf) != len(answers):
                conf = ["yes"] * len(answers)
            annotation = {
                "question_type": meta.get("question_type", "none of the above"),
                "multiple_choice_answer": sample.target,
                "answers": [{"answer": a, "answer_confidence": c, "answer_id": j + 1}
                            for j, (a, c) in enumerate(zip(answers, conf, strict=True))],
                "image_id": None, "answer_type": meta.get("answer_type", _answer_type(sample.target)),
                "question_id": qid}
        rows.append((sample, paths[0], subtype, question, annotation))

    by_subtype: dict[str, tuple[list, list]] = {}
    next_image = 1
    for sample, path, subtype, question, annotation in rows:
        rel = sample.images[0]
        if rel not in image_ids:
            image_ids[rel] = next_image = _free(used_images, next_image)
        image_id = image_ids[rel]
        if question["question_id"] is None:
            question["question_id"] = _free(used_questions, image_id * 1000)
        question["image_id"] = image_id
        questions, annotations = by_subtype.setdefault(subtype, ([], []))
        questions.append(question)
        if annotation is not None:
            annotation.update(image_id=image_id, question_id=question["question_id"])
            annotations.append(annotation)
        folder = image_folder(subtype)
        _put_image(path, dest, f"{folder}/COCO_{folder}_{image_id:012d}.jpg")
    for subtype, (questions, annotations) in by_subtype.items():
        if annotations and len(annotations) != len(questions):
            raise ValueError(f"split {split_of(subtype)!r}: {len(annotations)} of {len(questions)} questions have "
                             "answers; a VQAv2 split has answers for all its questions or for none")
        head = {"info": INFO, "license": LICENSE, "data_type": "mscoco", "data_subtype": subtype}
        write_json(dest / QUESTIONS.format(subtype), {**head, "task_type": "Open-Ended", "questions": questions})
        if annotations:
            write_json(dest / ANNOTATIONS.format(subtype), {**head, "annotations": annotations})
    return {"splits": {split_of(s): len(q) for s, (q, _) in by_subtype.items()}, "images": len(image_ids)}


FORMAT = Format(
    name="vqav2",
    description="VQAv2 questions + annotations JSON files (COCO images)",
    layout="v2_OpenEnded_mscoco_<subtype>_questions.json + v2_mscoco_<subtype>_annotations.json + "
           "<subtype>/COCO_<subtype>_<image_id:012d>.jpg (a questions file or their directory)",
    read=read,
    write=write,
)
