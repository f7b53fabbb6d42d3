"""Safe image loading: paths kept inside the dataset root, size and pixel limits, EXIF orientation, modes -> RGB.

Every failure is an `ImageError` whose message names the file, so a bad record can be reported and skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image, ImageOps

MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000
"""Decompression-bomb guard: larger images are refused before their pixels are decoded."""


class ImageError(ValueError):
    pass


def resolve_inside(root: Path, rel: str) -> Path:
    """`root / rel`, refusing absolute paths and paths that escape `root` (`../`, symlinks out)."""
    if not rel or Path(rel).is_absolute():
        raise ImageError(f"image path {rel!r} must be relative to the dataset directory {root}")
    root_real = Path(root).resolve()
    path = (root_real / rel).resolve()
    if not path.is_relative_to(root_real):
        raise ImageError(f"image path {rel!r} escapes the dataset directory {root}")
    return path


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


def load_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES) -> Image.Image:
    """Open, check limits, decode fully (catches truncated files), apply EXIF orientation, convert to RGB."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    if size > max_bytes:
        raise ImageError(f"{path}: {size} bytes exceeds the limit of {max_bytes}")
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                raise ImageError(f"{path}: {img.width}x{img.height} pixels exceeds the limit of {max_pixels} "
                                 "(decompression-bomb guard)")
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own guard, at twice its limit, fires before ours
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageError(f"{path}: {pixels[1] if pixels else 'its'} pixels exceeds the limit of {max_pixels} "
                         "(decompression-bomb guard)") from None
    except Exception as e:  # PIL raises many types for corrupt data (OSError, SyntaxError, ValueError, ...)
        raise ImageError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
