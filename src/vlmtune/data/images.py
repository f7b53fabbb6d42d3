"""Safe image loading: paths kept inside the dataset root, size and pixel limits, EXIF orientation, modes -> RGB.

Every failure is an `ImageError` whose message names the file, so a bad record can be reported and skipped. Only
regular files are opened: a path naming a FIFO (which would block the reader forever), a directory or a device is
refused from its `stat`, before any `open`. Limits, all checked before a pixel is decoded:

    MAX_IMAGE_BYTES    64 MiB        the file's size
    MAX_IMAGE_PIXELS   50,000,000    width x height from the header (decompression-bomb guard)
    MAX_ASPECT_RATIO   50            long side / short side from the header: processors scale the short side up,
                                     so a 1x100000 PNG of 471 bytes would cost ~4 GB after their resize
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from vlmtune.data.resize import resized_size
from vlmtune.data.sample import Sample

MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000
"""Decompression-bomb guard: larger images are refused before their pixels are decoded."""
MAX_ASPECT_RATIO = 50.0
"""Longest side / shortest side. Processors scale the short side up (CLIP's `shortest_edge`), so a 1x100000 PNG of
471 bytes would become a 336 x 33,600,000 image: the pixel limit alone cannot see it."""
MAX_RESIZED_PIXELS = 40_000_000
"""Pixels of the largest image a model's processor makes from one input (`resized_size`)."""


class ImageError(ValueError):
    pass


@functools.lru_cache(maxsize=256)
def _real(root: str) -> str:
    return os.path.realpath(root)


def resolve_inside(root: Path, rel: str) -> Path:
    """`root / rel`, refusing absolute paths, paths that escape `root` (`../`, symlinks out) and paths that are not
    text: a NUL (no file system takes it) or an undecodable byte (a lone surrogate once read from JSON)."""
    if not rel or os.path.isabs(rel):
        raise ImageError(f"image path {rel!r} must be relative to the dataset directory {root}")
    if "\x00" in rel:
        raise ImageError(f"image path {rel!r} contains a NUL character")
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ImageError(f"image path {rel!r} is not valid UTF-8 text ({rel[e.start]!r} at character {e.start + 1}: "
                         "an undecodable byte or a lone surrogate)") from None
    root_real = _real(os.fspath(root))
    path = os.path.realpath(os.path.join(root_real, rel))
    if path != root_real and not path.startswith(root_real.rstrip(os.sep) + os.sep):
        raise ImageError(f"image path {rel!r} escapes the dataset directory {root}")
    return Path(path)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: transparency composited on white, 16-bit scaled to 8-bit, CMYK converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        peak = a.max() if a.size and a.max() > 255 else 255.0
        img = Image.fromarray((a * (255.0 / peak)).clip(0, 255).astype("uint8"), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        base = Image.new("RGB", img.size, (255, 255, 255))
        base.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return base
    return img.convert("RGB")


@dataclass
class Decoded:
    """One image as read from disk: the RGB image vlmtune uses and what the file was before conversion."""

    image: Image.Image
    mode: str
    """The file's Pillow mode (CMYK, I;16, P, RGBA, ...) before conversion to RGB."""
    orientation: int
    """The EXIF orientation tag (1: upright; the image is already rotated accordingly)."""
    transparent_palette: bool
    sha256: str
    """Of the file's bytes (the same image under two names has the same digest)."""


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def check_image_file(path: Path) -> os.stat_result:
    """`path`'s stat, if it is a regular file; an ImageError saying what it is otherwise. Never opens the path."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except (OSError, ValueError) as e:  # permission, a name too long, a loop of symlinks, ...
        raise ImageError(f"{path}: cannot stat the image file ({getattr(e, 'strerror', None) or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a file")
        raise ImageError(f"{path}: not a regular file ({kind}); only regular files are read as images")
    return st


def read_image_file(path: Path, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of the regular file at `path`, refused (ImageError) when larger than `max_bytes`. The file type is
    checked from `stat` before the open, and again on the open descriptor: a file swapped for a FIFO in between is
    refused too, and O_NONBLOCK makes that open return at once instead of waiting for a writer."""
    size = check_image_file(path).st_size
    if size > max_bytes:
        raise ImageError(f"{path}: {size} bytes exceeds the limit of {max_bytes}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ImageError(f"{path}: cannot open the image file ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageError(f"{path}: not a regular file (replaced while being read); only regular files are read "
                             "as images")
        data = f.read(max_bytes + 1)  # a file growing after the stat is still bounded
    if len(data) > max_bytes:
        raise ImageError(f"{path}: more than {max_bytes} bytes, the limit")
    return data


def check_image_cost(width: int, height: int, name: str, max_pixels: int = MAX_IMAGE_PIXELS,
                     max_aspect: float = MAX_ASPECT_RATIO, image_processor=None,
                     max_resized_pixels: int = MAX_RESIZED_PIXELS) -> None:
    """Refuse (ImageError naming `name` and the numbers) an image too costly to decode or to feed a processor,
    from its size alone (the header's, before any pixel is decoded): more than `max_pixels` pixels, then the shape
    limits of `check_image_shape` (aspect ratio; with `image_processor`, the pixels after its resize)."""
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} pixels exceeds the limit of {max_pixels} "
                         "(decompression-bomb guard)")
    check_image_shape(width, height, name, image_processor, max_aspect, max_resized_pixels)


def decode_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES,
                 max_aspect: float = MAX_ASPECT_RATIO) -> Decoded:
    """Read the file once (a regular file only, see `read_image_file`), check the byte, pixel and aspect-ratio
    limits before decoding, decode fully (catches truncated files), apply EXIF orientation, convert to RGB. Every
    failure is an ImageError naming the file."""
    path = Path(path)
    return decode_image_bytes(read_image_file(path, max_bytes), str(path), max_pixels, max_bytes, max_aspect)


def decode_image_bytes(data: bytes, name: str, max_pixels: int = MAX_IMAGE_PIXELS,
                       max_bytes: int = MAX_IMAGE_BYTES, max_aspect: float = MAX_ASPECT_RATIO) -> Decoded:
    """`decode_image` for bytes already in memory (an upload, a data: URI); `name` is used in error messages."""
    if len(data) > max_bytes:
        raise ImageError(f"{name}: {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only: the size is known, no pixel decoded
            check_image_cost(img.width, img.height, name, max_pixels, max_aspect)
            mode, transparent = img.mode, img.mode == "P" and "transparency" in img.info
            img.load()
            orientation = img.getexif().get(0x0112, 1)  # after load: a PNG may keep its EXIF after the pixels
            rgb = to_rgb(ImageOps.exif_transpose(img))
    except ImageError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own guard, at twice its limit, fires before ours
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageError(f"{name}: {pixels[1] if pixels else 'its'} pixels exceeds the limit of {max_pixels} "
                         "(decompression-bomb guard)") from None
    except Exception as e:  # PIL raises many types for corrupt data (OSError, SyntaxError, ValueError, ...)
        raise ImageError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from None
    return Decoded(rgb, mode, orientation or 1, transparent, hashlib.sha256(data).hexdigest())


def load_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES,
               max_aspect: float = MAX_ASPECT_RATIO) -> Image.Image:
    """The RGB image at `path`, checked and oriented (see `decode_image`)."""
    return decode_image(path, max_pixels, max_bytes, max_aspect).image


def load_images(root: Path, sample: Sample) -> list[Image.Image]:
    """A sample's images, in order, from its dataset directory `root` (each path kept inside it, see
    `resolve_inside`), checked and oriented (`load_image`): what a model is given for the sample."""
    return [load_image(resolve_inside(root, rel)) for rel in sample.images]


class DecodedImages:
    """Decoded training images kept in memory across epochs, up to `budget` bytes (RGB pixels), so a run whose
    vision tower is trained (no feature cache) does not re-read and re-decode every image every epoch.

    Images are kept in the order they are first seen until the budget is full, and never dropped: with epochs that
    visit every image once, keeping a fixed part of the set gives that part's hits every epoch, where dropping the
    least recently used would give none once the set is larger than the budget."""

    def __init__(self, budget: int):
        self.budget = budget
        self.used = 0
        self.images: dict[str, Image.Image] = {}
        self.hits = self.misses = 0

    def load(self, path: Path) -> Image.Image:
        key = str(path)
        image = self.images.get(key)
        if image is not None:
            self.hits += 1
            return image
        self.misses += 1
        image = load_image(path)
        size = image.width * image.height * len(image.getbands())
        if self.used + size <= self.budget:
            self.images[key] = image
            self.used += size
        return image


# ---------------------------------------------------------------- shape limits, before a processor runs


def check_image_shape(width: int, height: int, name: str, image_processor=None,
                      max_aspect_ratio: float = MAX_ASPECT_RATIO, max_resized_pixels: int = MAX_RESIZED_PIXELS) -> None:
    """Refuse (ImageError naming `name`, with the numbers) an image thinner than `max_aspect_ratio`:1, or one that
    `image_processor` would resize or pad to more than `max_resized_pixels` (see `resized_size`); nothing runs the
    processor. Call it with the size of the image as the processor will see it (after EXIF orientation)."""
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > max_aspect_ratio:
        raise ImageError(f"{name}: {width}x{height} pixels has an aspect ratio of {ratio:.1f}:1, over the limit of "
                         f"{max_aspect_ratio:g}:1 (image processors scale the short side up)")
    if image_processor is None:
        return
    try:
        w, h = resized_size(width, height, image_processor)
    except ValueError as e:
        raise ImageError(f"{name}: the model's image processor refuses a {width}x{height} image ({e})") from None
    if w * h > max_resized_pixels:
        raise ImageError(f"{name}: {width}x{height} pixels becomes {w}x{h} = {w * h} pixels in the model's image "
                         f"processor, over the limit of {max_resized_pixels}")
