"""Safe image loading: paths kept inside the dataset root, size and pixel limits, EXIF orientation, modes -> RGB.

Every failure is an `ImageError` whose message names the file, so a bad record can be reported and skipped.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000
"""Decompression-bomb guard: larger images are refused before their pixels are decoded."""


class ImageError(ValueError):
    pass


@functools.lru_cache(maxsize=256)
def _real(root: str) -> str:
    return os.path.realpath(root)


def resolve_inside(root: Path, rel: str) -> Path:
    """`root / rel`, refusing absolute paths and paths that escape `root` (`../`, symlinks out)."""
    if not rel or os.path.isabs(rel):
        raise ImageError(f"image path {rel!r} must be relative to the dataset directory {root}")
    root_real = _real(os.fspath(root))
    path = os.path.realpath(os.path.join(root_real, rel))
    if path != root_real and not path.startswith(root_real.rstrip(os.sep) + os.sep):
        raise ImageError(f"image path {rel!r} escapes the dataset directory {root}")
    return Path(path)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: transparency composited on white, 16-bit scaled to 8-bit, CMYK converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

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


def decode_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES) -> Decoded:
    """Read the file once, check the byte and pixel limits before decoding, decode fully (catches truncated files),
    apply EXIF orientation, convert to RGB. Every failure is an ImageError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    if size > max_bytes:
        raise ImageError(f"{path}: {size} bytes exceeds the limit of {max_bytes}")
    return decode_image_bytes(path.read_bytes(), str(path), max_pixels, max_bytes)


def decode_image_bytes(data: bytes, name: str, max_pixels: int = MAX_IMAGE_PIXELS,
                       max_bytes: int = MAX_IMAGE_BYTES) -> Decoded:
    """`decode_image` for bytes already in memory (an upload, a data: URI); `name` is used in error messages."""
    if len(data) > max_bytes:
        raise ImageError(f"{name}: {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise ImageError(f"{name}: {img.width}x{img.height} pixels exceeds the limit of {max_pixels} "
                                 "(decompression-bomb guard)")
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


def load_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES) -> Image.Image:
    """The RGB image at `path`, checked and oriented (see `decode_image`)."""
    return decode_image(path, max_pixels, max_bytes).image


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
