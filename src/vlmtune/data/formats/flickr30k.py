"""Flickr30k captions (https://shannon.cs.illinois.edu/DenotationGraph/): five captions per image, in one text file.

    results_20130124.token        1000092795.jpg#0<TAB>Two young guys with shaggy hair look at their hands while ...
                                  1000092795.jpg#1<TAB>Two young , White males are outside near many bushes .
                                  ... #2, #3, #4, then the next image's five lines
    flickr30k-images/1000092795.jpg

or the Kaggle copy of it, "| "-separated with a header (a comment may itself hold commas and quotes: not real CSV):

    flickr30k_images/results.csv  image_name| comment_number| comment
                                  1000092795.jpg| 0| Two young guys with shaggy hair look at their hands while ...
    flickr30k_images/flickr30k_images/1000092795.jpg

`src` is the token file, results.csv (told by suffix, else by the Kaggle header line) or a directory holding one.
Images come from `--images`, else `flickr30k-images/` (or Kaggle's `flickr30k_images/`) beside that file, else the
file's own directory. Both files list an image's captions on consecutive lines; each image becomes one caption Sample:
id = image file stem, prompt "Describe the image.", `references` = its captions in caption-number order, target = the
first. Caption numbers other than 0..n-1 are kept in `meta["caption_numbers"]`. No split (the Karpathy split file is
not read). The file is read line by line; only the current image's lines and the names already seen are held.
Export writes results_20130124.token + flickr30k-images/.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from vlmtune.data.formats.base import BadRecord, Format, Imported, Record, copy_image, image_ref
from vlmtune.data.sample import Sample, assistant, user

TOKEN = "results_20130124.token"
KAGGLE = "results.csv"
KAGGLE_HEADER = ("image_name", "comment_number", "comment")
IMAGE_DIRS = ("flickr30k-images", "flickr30k_images")
PROMPT = "Describe the image."


def _source(src: Path) -> Path:
    if src.is_file():
        return src
    for name in (TOKEN, KAGGLE):
        if (src / name).is_file():
            return src / name
    raise FileNotFoundError(f"{src}: neither a Flickr30k {TOKEN} / {KAGGLE} file nor a directory holding one")


def _image_dir(file: Path, images: Path | None) -> Path:
    if images:
        return images
    return next((file.parent / d for d in IMAGE_DIRS if (file.parent / d).is_dir()), file.parent)


def _lines(file: Path) -> Iterator[tuple[int, str | None]]:
    """(line number, text without its line end), text None for a line that is not UTF-8."""
    with open(file, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield lineno, None
                continue
            yield lineno, line.lstrip("\ufeff") if lineno == 1 else line


def _is_kaggle_header(line: str) -> bool:
    return tuple(p.strip() for p in line.split("|")) == KAGGLE_HEADER


def _parse(line: str, kaggle: bool) -> tuple[str, int, str]:
    """One caption line -> (image name, caption number, caption)."""
    if kaggle:
        parts = line.split("|", 2)
        if len(parts) != 3:
            raise ValueError("expected 'image_name| comment_number| comment'")
        name, number, caption = (p.strip() for p in parts)
    else:
        key, tab, caption = line.partition("\t")
        name, hash_, number = key.rpartition("#")
        if not tab or not hash_:
            raise ValueError("expected '<image>#<number><TAB><caption>'")
        name, caption = name.strip(), caption.strip()
    if not name:
        raise ValueError("missing image name")
    try:
        n = int(number)
    except ValueError:
        raise ValueError(f"{name}: caption number {number.strip()!r} is not an integer") from None
    if not caption:
        raise ValueError(f"{name}#{n}: empty caption")
    return name, n, caption


def _sample(name: str, captions: dict[int, str], base: Path, file: Path, line: int) -> Imported:
    numbers = sorted(captions)
    refs = [captions[n] for n in numbers]
    meta = {} if numbers == list(range(len(numbers))) else {"caption_numbers": numbers}
    sample = Sample(id=Path(name).stem, messages=[user(PROMPT), assistant(refs[0])], images=[f"images/{name}"],
                    task="caption", references=refs, source="flickr30k", split=None, meta=meta)
    return Imported(sample, [image_ref(base, name, f"image {name!r}")], file, line)


def read(src: Path, images: Path | None) -> Iterator[Record]:
    file = _source(Path(src))
    base = _image_dir(file, images)
    kaggle = file.suffix.lower() == ".csv"
    first_line: dict[str, int] = {}  # image name -> line of its first caption (an image's lines must be consecutive)
    name, start, captions = None, 0, {}
    first = True

    def flush() -> Iterator[Record]:
        if name is None or not captions:
            return
        if name in first_line:
            yield BadRecord(file, start, f"{name}: its captions are not on consecutive lines (an earlier group starts "
                            f"at line {first_line[name]})")
            return
        first_line[name] = start
        try:
            yield _sample(name, captions, base, file, start)
        except ValueError as e:
            yield BadRecord(file, start, str(e))

    for lineno, line in _lines(file):
        if line is None:
            yield BadRecord(file, lineno, "line is not UTF-8 text")
            continue
        if not line.strip():
            continue
        if first:
            first = False
            if kaggle or _is_kaggle_header(line):
                if not _is_kaggle_header(line):
                    yield BadRecord(file, lineno, f"expected the header 'image_name| comment_number| comment', got "
                                    f"{line[:200]!r}")
                    return
                kaggle = True
                continue
        try:
            image, number, caption = _parse(line, kaggle)
        except ValueError as e:
            yield BadRecord(file, lineno, str(e), line[:500])
            continue
        if image != name:
            yield from flush()
            name, start, captions = image, lineno, {}
        if number in captions:
            yield BadRecord(file, lineno, f"{image}: caption number {number} given twice", line[:500])
            continue
        captions[number] = caption
    yield from flush()


def _one_line(text: str) -> tuple[str, bool]:
    flat = re.sub(r"[\t\r\n]+", " ", text).strip()
    return flat, flat != text.strip()


def write(items: Iterable[tuple[Sample, list[Path]]], dest: Path) -> dict:
    """The original layout: results_20130124.token (one '<image>#<n><TAB><caption>' line per caption) and
    flickr30k-images/<image>. Tabs and line breaks inside a caption (impossible in this format) become spaces."""
    n_images = n_captions = n_flattened = 0
    with open(dest / TOKEN, "w", encoding="utf-8", newline="\n") as f:
        for sample, paths in items:
            if len(paths) != 1:
                raise ValueError(f"sample {sample.id!r}: Flickr30k holds exactly one image per sample")
            rel = sample.images[0]
            name = rel.removeprefix("images/")
            if re.search(r"[\t\r\n]", name):
                raise ValueError(f"sample {sample.id!r}: image name {name!r} cannot be written to a token file")
            refs = sample.references or [sample.target]
            numbers = sample.meta.get("caption_numbers")
            if not (isinstance(numbers, list) and len(numbers) == len(refs)):
                numbers = list(range(len(refs)))
            for number, caption in zip(numbers, refs, strict=True):
                text, flattened = _one_line(str(caption))
                f.write(f"{name}#{number}\t{text}\n")
                n_flattened += flattened
            copy_image(paths[0], dest, f"flickr30k-images/{name}")
            n_images += 1
            n_captions += len(refs)
    return {"images": n_images, "captions": n_captions, "captions_flattened": n_flattened}


FORMAT = Format(
    name="flickr30k",
    description="Flickr30k results_20130124.token file or results.csv",
    layout="results_20130124.token (<image>#<n><TAB><caption>) + flickr30k-images/, or Kaggle results.csv "
           "(image_name| comment_number| comment); --images DIR otherwise",
    read=read,
    write=write,
)
