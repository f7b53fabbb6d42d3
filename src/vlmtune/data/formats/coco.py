"""COCO captions (https://cocodataset.org/#download), as the official annotation files or Karpathy's split file.

(a) The official captions file of a split, images in a folder of the same name:

    annotations/captions_val2014.json
        {"info": {...}, "licenses": [...],
         "images": [{"license": 4, "file_name": "COCO_val2014_000000000042.jpg", "coco_url": "http://...",
                     "height": 640, "width": 480, "date_captured": "2013-11-14 11:18:45", "flickr_url": "...",
                     "id": 42}, ...],
         "annotations": [{"image_id": 42, "id": 641, "caption": "A pizza on a white plate."}, ...]}
    val2014/COCO_val2014_000000000042.jpg

(b) Karpathy's split file (caption_datasets.zip), images under the COCO root (`--images`, default: beside it):

    dataset_coco.json
        {"images": [{"filepath": "val2014", "sentids": [641, 642], "filename": "COCO_val2014_000000000042.jpg",
                     "imgid": 0, "split": "test",
                     "sentences": [{"tokens": ["a", "pizza", "on", "a", "white", "plate"],
                                    "raw": "A pizza on a white plate.", "imgid": 0, "sentid": 641}, ...],
                     "cocoid": 42}, ...],
         "dataset": "coco"}

Which of the two a JSON file is comes from its content. `src` is one such file or a directory holding
captions_*.json (also in annotations/) and/or dataset_coco.json, as `write` lays them out. `--images` is the image
folder of a captions file (or the folder holding `<split>2014/`), and the COCO root of a Karpathy file.

Each image becomes one caption Sample (user "Describe the image.", target = its first caption, `references` = all its
captions in file order), id = str(COCO image id). (a) split from the file name (captions_train2014.json -> train),
image at images/<file_name>, `meta` keeps image_id, caption_ids and the image's license, coco_url, height, width,
date_captured and flickr_url. (b) split from "split" with restval -> train, image at images/<filepath>/<filename>,
`meta` keeps karpathy_split (the original split), cocoid, imgid, sentids and tokens. Export writes each sample back in
the layout it came from (karpathy_split in meta: dataset_coco.json), and samples from other sources as (a).
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image

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
from vlmtune.data.sample import Sample, assistant, user

PROMPT = "Describe the image."
KARPATHY = "dataset_coco.json"
_CAPTIONS_RE = re.compile(r"^captions_(?P<split>[A-Za-z0-9_-]+?)(?P<year>\d{4})?\.json$")
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_KARPATHY_SPLITS = {"restval": "train"}
_IMAGE_FIELDS = ("license", "file_name", "coco_url", "height", "width", "date_captured", "flickr_url", "id")
"""An image record's fields, in the official order."""
INFO = {"description": "This is stable 1.0 version of the 2014 MS COCO dataset.", "url": "http://mscoco.org",
        "version": "1.0", "year": 2014, "contributor": "Microsoft COCO group", "date_created": "2015-01-27 09:11:52"}
LICENSES = [
    {"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1,
     "name": "Attribution-NonCommercial-ShareAlike License"},
    {"url": "http://creativecommons.org/licenses/by-nc/2.0/", "id": 2, "name": "Attribution-NonCommercial License"},
    {"url": "http://creativecommons.org/licenses/by-nc-nd/2.0/", "id": 3,
     "name": "Attribution-NonCommercial-NoDerivs License"},
    {"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"},
    {"url": "http://creativecommons.org/licenses/by-sa/2.0/", "id": 5, "name": "Attribution-ShareAlike License"},
    {"url": "http://creativecommons.org/licenses/by-nd/2.0/", "id": 6, "name": "Attribution-NoDerivs License"},
    {"url": "http://flickr.com/commons/usage/", "id": 7, "name": "No known copyright restrictions"},
    {"url": "http://www.usa.gov/copyright.shtml", "id": 8, "name": "United States Government Work"},
]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such file or directory")
    dirs = [d for d in (src, src / "annotations") if d.is_dir()]
    files = sorted((f for d in dirs for f in d.glob("captions_*.json")), key=lambda f: (f.name, str(f)))
    if (src / KARPATHY).is_file():
        files.append(src / KARPATHY)
    if not files:
        raise FileNotFoundError(f"{src}: no captions_<split>2014.json (here or in annotations/) nor {KARPATHY}")
    return files


def _kind(data) -> str:
    """"captions", "karpathy", or why it is neither."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        return "expected a JSON object with an 'images' list (COCO captions or Karpathy's dataset_coco.json)"
    if isinstance(data.get("annotations"), list):
        first = data["annotations"][0] if data["annotations"] else {}
        if isinstance(first, dict) and "caption" not in first and ("category_id" in first or "bbox" in first):
            return "a COCO instances/keypoints file, not captions (captions_<split>2014.json)"
        return "captions"
    first = data["images"][0] if data["images"] else {}
    if "dataset" in data or (isinstance(first, dict) and "sentences" in first):
        return "karpathy"
    return "neither COCO captions ('annotations' list) nor Karpathy's split file ('sentences' per image)"


def read(src: Path, images: Path | None) -> Iterator[Record]:
    for file in _files(Path(src)):
        try:
            data = load_json(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            yield BadRecord(file, 0, f"malformed JSON: {e}")
            continue
        kind = _kind(data)
        if kind == "captions":
            yield from _read_captions(file, data, images)
        elif kind == "karpathy":
            yield from _read_karpathy(file, data, images)
        else:
            yield BadRecord(file, 0, kind)


# ---------------------------------------------------------------- (a) captions_<split>2014.json

def _image_dir(folder: str | None, images: Path | None, file: Path) -> Path:
    if images is not None:
        return images / folder if folder and (images / folder).is_dir() else images
    if folder is None:
        return file.parent
    return next((b / folder for b in (file.parent, file.parent.parent) if (b / folder).is_dir()), file.parent / folder)


def _caption_sample(img, by_image: dict[int, list[dict]], split: str | None, image_dir: Path,
                    where: str) -> tuple[Sample, ImageRef]:
    if not isinstance(img, dict):
        raise ValueError("an image must be a JSON object")
    image_id, name = img.get("id"), img.get("file_name")
    if not _is_int(image_id):
        raise ValueError("missing or non-integer 'id'")
    if not isinstance(name, str) or not name:
        raise ValueError(f"image id {image_id}: missing 'file_name'")
    ref = image_ref(image_dir, name, where)
    anns = by_image.get(image_id, [])
    if not anns:
        raise ValueError(f"image id {image_id}: no captions")
    for a in anns:
        if not _is_int(a.get("id")) or not isinstance(a.get("caption"), str):
            raise ValueError(f"image id {image_id}: a caption needs an integer 'id' and a string 'caption', got "
                             f"{json.dumps(a, ensure_ascii=False)[:200]}")
    captions = [a["caption"] for a in anns]
    meta = {"image_id": image_id, "caption_ids": [a["id"] for a in anns],
            **{k: img[k] for k in _IMAGE_FIELDS if k in img and k not in ("id", "file_name")}}
    sample = Sample(id=str(image_id), messages=[user(PROMPT), assistant(captions[0])], images=[f"images/{name}"],
                    task="caption", references=captions, source="coco", split=split, meta=meta)
    return sample, ref


def _read_captions(file: Path, data: dict, images: Path | None) -> Iterator[Record]:
    m = _CAPTIONS_RE.match(file.name)
    split = m["split"] if m else None
    image_dir = _image_dir(f"{m['split']}{m['year'] or ''}" if m else None, images, file)
    by_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        if isinstance(a, dict) and _is_int(a.get("image_id")):
            by_image.setdefault(a["image_id"], []).append(a)
    known = {img["id"] for img in data["images"] if isinstance(img, dict) and _is_int(img.get("id"))}
    for i, img in enumerate(data["images"]):
        try:
            sample, ref = _caption_sample(img, by_image, split, image_dir, f"{file} image {i}")
        except ValueError as e:
            yield BadRecord(file, i + 1, f"image {i}: {e}", json.dumps(img, ensure_ascii=False)[:500])
            continue
        yield Imported(sample, [ref], file, i + 1)
    for j, a in enumerate(data["annotations"]):  # captions no image claims
        if not (isinstance(a, dict) and _is_int(a.get("image_id")) and a["image_id"] in known):
            what = f"image_id {a.get('image_id')!r} names no image" if isinstance(a, dict) else "not a JSON object"
            yield BadRecord(file, j + 1, f"annotation {j}: {what}", json.dumps(a, ensure_ascii=False)[:500])


# ---------------------------------------------------------------- (b) Karpathy's dataset_coco.json

def _karpathy_sample(row, root: Path, where: str) -> tuple[Sample, ImageRef]:
    if not isinstance(row, dict):
        raise ValueError("an image must be a JSON object")
    cocoid, filepath, filename, split, sents = (row.get(k) for k in ("cocoid", "filepath", "filename", "split",
                                                                     "sentences"))
    if not _is_int(cocoid):
        raise ValueError("missing or non-integer 'cocoid'")
    if not isinstance(filename, str) or not filename or not isinstance(filepath, str):
        raise ValueError(f"cocoid {cocoid}: missing 'filepath' or 'filename'")
    if not isinstance(split, str) or not split:
        raise ValueError(f"cocoid {cocoid}: missing 'split'")
    if not isinstance(sents, list) or not sents or not all(
            isinstance(s, dict) and isinstance(s.get("raw"), str) for s in sents):
        raise ValueError(f"cocoid {cocoid}: 'sentences' must be a non-empty list of {{'raw': str}} objects")
    rel = f"{filepath}/{filename}" if filepath else filename
    ref = image_ref(root, rel, where)
    captions = [s["raw"] for s in sents]
    meta = {"karpathy_split": split, "cocoid": cocoid}
    if "imgid" in row:
        meta["imgid"] = row["imgid"]
    for key, name in (("sentid", "sentids"), ("tokens", "tokens")):
        if all(key in s for s in sents):
            meta[name] = [s[key] for s in sents]
    sample = Sample(id=str(cocoid), messages=[user(PROMPT), assistant(captions[0])], images=[f"images/{rel}"],
                    task="caption", references=captions, source="coco", split=_KARPATHY_SPLITS.get(split, split),
                    meta=meta)
    return sample, ref


def _read_karpathy(file: Path, data: dict, images: Path | None) -> Iterator[Record]:
    root = images or file.parent
    for i, row in enumerate(data["images"]):
        try:
            sample, ref = _karpathy_sample(row, root, f"{file} image {i}")
        except ValueError as e:
            yield BadRecord(file, i + 1, f"image {i}: {e}", json.dumps(row, ensure_ascii=False)[:500])
            continue
        yield Imported(sample, [ref], file, i + 1)


# ---------------------------------------------------------------- export

class _Ids:
    """Integer ids: the given ones are kept, missing ones (None) are assigned at the end without clashing."""

    def __init__(self, start: int):
        self.used: set[int] = set()
        self.next = start

    def given(self, value) -> int | None:
        if _is_int(value):
            self.used.add(value)
            return value
        return None

    def fill(self, value: int | None) -> int:
        if value is not None:
            return value
        while self.next in self.used:
            self.next += 1
        self.used.add(self.next)
        return self.next


def _tokens(raw: str) -> list[str]:
    """Karpathy-style tokens (lower case, punctuation dropped), for captions that come without them."""
    return re.findall(r"\w+(?:'\w+)?", raw.lower())


def _inner(rel: str) -> str:
    return rel.removeprefix("images/")


def _per_caption(value, n: int) -> list:
    """A meta list with one entry per caption, or as many Nones (to be filled in)."""
    return list(value) if isinstance(value, list) and len(value) == n else [None] * n


def write(items: Iterable[tuple[Sample, list[Path]]], dest: Path) -> dict:
    """Karpathy samples -> dataset_coco.json + <filepath>/<filename>; every other sample -> COCO captions:
    annotations/captions_<split>2014.json + <split>2014/<file_name> (split "" -> "all"; samples sharing an image share
    its record). Samples from other sources get image and caption ids that do not clash with the ones given."""
    image_ids, caption_ids, imgids, sentids = _Ids(1), _Ids(1), _Ids(0), _Ids(1)
    karpathy: list[dict] = []
    splits: dict[str, tuple[dict[str, dict], list[tuple[dict, dict]]]] = {}  # split -> (images by name, captions)
    counts: dict[str, int] = {}
    for sample, paths in items:
        if len(paths) != 1:
            raise ValueError(f"sample {sample.id!r}: a COCO caption record holds exactly one image")
        if sample.messages[-1]["role"] != "assistant":
            raise ValueError(f"sample {sample.id!r}: no caption (the conversation ends with the prompt)")
        captions, meta, inner = sample.references or [sample.target], sample.meta, _inner(sample.images[0])
        counts[sample.split or ""] = counts.get(sample.split or "", 0) + 1
        if "karpathy_split" in meta:
            ksplit = meta["karpathy_split"]
            if sample.split is not None and _KARPATHY_SPLITS.get(ksplit, ksplit) != sample.split:
                ksplit = sample.split
            tokens = _per_caption(meta.get("tokens"), len(captions))
            karpathy.append({
                "filepath": posixpath.dirname(inner), "sentids": [sentids.given(s) for s in
                                                                  _per_caption(meta.get("sentids"), len(captions))],
                "filename": posixpath.basename(inner), "imgid": imgids.given(meta.get("imgid")), "split": ksplit,
                "sentences": [{"tokens": t if t is not None else _tokens(c), "raw": c}
                              for c, t in zip(captions, tokens, strict=True)],
                "cocoid": image_ids.given(meta.get("cocoid", meta.get("image_id")))})
            copy_image(paths[0], dest, inner)
            continue
        split = sample.split or "all"
        if not _SPLIT_RE.match(split):
            raise ValueError(f"sample {sample.id!r}: split {split!r} cannot name a COCO captions file")
        by_name, anns = splits.setdefault(split, ({}, []))
        if inner not in by_name:
            fields = {k: meta[k] for k in _IMAGE_FIELDS if k in meta and k not in ("id", "file_name")}
            if "caption_ids" not in meta and not {"height", "width"} <= set(fields):
                with Image.open(paths[0]) as im:
                    fields["width"], fields["height"] = im.size
            fields.update(file_name=inner, id=image_ids.given(meta.get("image_id", meta.get("cocoid"))))
            by_name[inner] = {k: fields[k] for k in _IMAGE_FIELDS if k in fields}
            copy_image(paths[0], dest, f"{split}2014/{inner}")
        for cid, caption in zip(_per_caption(meta.get("caption_ids"), len(captions)), captions, strict=True):
            anns.append((by_name[inner], {"image_id": None, "id": caption_ids.given(cid), "caption": caption}))

    for split, (by_name, anns) in splits.items():
        for img in by_name.values():
            img["id"] = image_ids.fill(img["id"])
        annotations = []
        for img, ann in anns:
            ann.update(image_id=img["id"], id=caption_ids.fill(ann["id"]))
            annotations.append(ann)
        write_json(dest / "annotations" / f"captions_{split}2014.json",
                   {"info": INFO, "images": list(by_name.values()), "licenses": LICENSES, "annotations": annotations})
    if karpathy:
        for entry in karpathy:
            entry["imgid"] = imgids.fill(entry["imgid"])
            entry["cocoid"] = image_ids.fill(entry["cocoid"])
            entry["sentids"] = [sentids.fill(s) for s in entry["sentids"]]
            for s, sid in zip(entry["sentences"], entry["sentids"], strict=True):
                s.update(imgid=entry["imgid"], sentid=sid)
        write_json(dest / KARPATHY, {"images": karpathy, "dataset": "coco"})
    return {"splits": counts, "karpathy": len(karpathy)}


FORMAT = Format(
    name="coco",
    description="COCO captions annotations JSON, or Karpathy-split dataset_coco.json",
    layout="annotations/captions_<split>2014.json + <split>2014/*.jpg, or dataset_coco.json with --images COCO_ROOT "
           "(<filepath>/<filename>)",
    read=read,
    write=write,
)
