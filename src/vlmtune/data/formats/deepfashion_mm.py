"""DeepFashion-MultiModal (https://github.com/yumingj/DeepFashion-MultiModal): one JSON object of captions, one image
folder.

    captions.json     {"MEN-Denim-id_00000080-01_7_additional.jpg": "The lower clothing is of long length. The
                       fabric is cotton and it has plain patterns. ...", ...}
    images/MEN-Denim-id_00000080-01_7_additional.jpg

`src` is the captions file (any name: a train/test split someone made, `train_captions.json`, reads the same) or a
directory holding `captions.json`. Images are looked up in `--images`, else in `images/` beside the JSON file, else
beside it. Each entry becomes one caption Sample: prompt "Describe the image.", target and `references` = the caption
(stripped of surrounding whitespace), image `images/<key>`, id the key's file stem (a stem an earlier entry already
used gives `<stem>-<entry>`). The dataset has no official split: `split` is None (`vlmtune data split` assigns one,
never one photo in two splits).

Records are numbered by their position in the object, 1-based: `captions.json:7` is the 7th entry, and the message
names its key. A caption that is not a string (null, a number, a list) is a bad record, never str() of it; so is a key
given twice (json.loads would keep the last silently; here the first is imported and each repeat is named). The JSON
is parsed once (`store.load_json`: depth-limited); records are then yielded one by one and the driver copies and
checks each image as it goes, so an import is resumable and never holds the images in memory.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

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
from vlmtune.data.sample import Sample, assistant, user

CAPTIONS = "captions.json"
IMAGES = "images"
PROMPT = "Describe the image."


def _source(src: Path) -> Path:
    if src.is_file():
        return src
    if (src / CAPTIONS).is_file():
        return src / CAPTIONS
    raise FileNotFoundError(f"{src}: neither a DeepFashion-MultiModal captions JSON file nor a directory holding "
                            f"{CAPTIONS}")


def _image_dir(file: Path, images: Path | None) -> Path:
    if images:
        return images
    return file.parent / IMAGES if (file.parent / IMAGES).is_dir() else file.parent


def _pairs(file: Path) -> list[tuple[str, object]] | BadRecord:
    """The top-level object's (key, value) pairs in file order, repeated keys included, or a BadRecord (line 0: the
    whole file) when the file is not such an object."""
    top: list = []

    def keep(pairs):
        top[:] = [pairs]  # objects close innermost first, so the last one kept is the top level's
        return dict(pairs)

    try:
        value = load_json(file.read_text(encoding="utf-8"), object_pairs_hook=keep)
    except UnicodeDecodeError as e:
        return BadRecord(file, 0, f"not UTF-8 text: {e}")
    except json.JSONDecodeError as e:
        return BadRecord(file, 0, f"malformed JSON: {e}")
    if not isinstance(value, dict):
        return BadRecord(file, 0, 'expected a JSON object {"<image>.jpg": "<caption>", ...}, got '
                                  f"{type(value).__name__ if value is not None else 'null'}")
    return top[0]


def _sample(key: str, value: object, base: Path, file: Path, n: int, used: set[str]) -> Imported:
    if not key.strip():
        raise ValueError("empty image name")
    caption = text_value(value, f"{key}: caption").strip()
    if not caption:
        raise ValueError(f"{key}: empty caption")
    ref = image_ref(base, key, f"image {key!r}")
    rel = posixpath.normpath(key)
    stem = PurePosixPath(rel).stem
    sid = stem if stem not in used else f"{stem}-{n}"
    used.add(sid)
    sample = Sample(id=sid, messages=[user(PROMPT), assistant(caption)], images=[f"images/{rel}"], task="caption",
                    references=[caption], source="deepfashion_mm", split=None, meta={})
    return Imported(sample, [ref], file, n)


def read(src: Path, images: Path | None) -> Iterator[Record]:
    file = _source(Path(src))
    base = _image_dir(file, images)
    pairs = _pairs(file)
    if isinstance(pairs, BadRecord):
        yield pairs
        return
    first: dict[str, int] = {}  # key -> its entry number
    used: set[str] = set()
    for n, (key, value) in enumerate(pairs, start=1):
        raw = json.dumps({key: value}, ensure_ascii=False)[:500]
        if key in first:
            yield BadRecord(file, n, f"entry {n}: image {key!r} given twice (first at entry {first[key]}, which is "
                                     "the one imported)", raw)
            continue
        first[key] = n
        try:
            yield _sample(key, value, base, file, n, used)
        except ValueError as e:
            yield BadRecord(file, n, f"entry {n}: {e}", raw)


def write(items: Iterable[tuple[Sample, list[Path]]], dest: Path) -> dict:
    """The original layout: captions.json ({image name: caption}, in dataset order) and images/<name>. The object
    holds one caption per image: a sample's other references are not written (counted in the result), and a second
    sample of the same image is refused."""
    captions: dict[str, str] = {}
    dropped = 0
    for sample, paths in items:
        if len(paths) != 1:
            raise ValueError(f"sample {sample.id!r}: DeepFashion-MultiModal holds exactly one image per caption")
        if sample.messages[-1]["role"] != "assistant":
            raise ValueError(f"sample {sample.id!r}: no caption (the last turn is not the assistant's)")
        rel = sample.images[0].removeprefix("images/")
        if rel in captions:
            raise ValueError(f"sample {sample.id!r}: image {rel!r} already has a caption ({CAPTIONS} holds one per "
                             "image)")
        captions[rel] = sample.target
        dropped += len(sample.references or [sample.target]) - 1
        copy_image(paths[0], dest, f"{IMAGES}/{rel}")
    write_json(dest / CAPTIONS, captions)
    return {"images": len(captions), "references_not_written": dropped}


FORMAT = Format(
    name="deepfashion_mm",
    description="DeepFashion-MultiModal captions.json ({image: caption}) + images/",
    layout='captions.json ({"<image>.jpg": "<caption>", ...}) + images/<image>.jpg, or a captions JSON file with '
           "--images DIR",
    read=read,
    write=write,
)
