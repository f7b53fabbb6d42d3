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
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

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



def _edge(size, key: str):
    """One field of an image processor's `size`, `crop_size` or `patch_size` (a dict or transformers' SizeDict)."""
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def resized_size(width: int, height: int, image_processor) -> tuple[int, int]:
    """(width, height) of the largest image `image_processor` makes from a `width` x `height` one, computed from its
    settings without running it, so that a request or record can be refused before the processor allocates it.

    Exact for the resizes that can grow an image: the short side scaled to `size.shortest_edge` (CLIP, LLaVA, GIT;
    capped by `longest_edge`), the square a LLaVA processor pads to first (`do_pad` with `pad_to_square`), Qwen2-VL's
    `smart_resize` within min/max pixels (`size.shortest_edge`/`longest_edge` with a `merge_size`), Gemma 4's resize
    within its soft-token budget, Pix2Struct's patches. For the bounded ones it gives the size the image is fitted
    into: a fixed `height` x `width` (BLIP-2, SigLIP, Gemma 3), `max_height` x `max_width`, the `longest_edge`
    (Idefics3, SmolVLM, rounded up to their `max_image_size` tiles), LLaVA-NeXT's best `image_grid_pinpoints` canvas,
    Mllama's tile canvas. A processor that does not resize gives the input size. Raises ValueError where the
    processor itself would refuse the image (Qwen2-VL beyond an aspect ratio of 200)."""
    if getattr(image_processor, "do_pad", False) and hasattr(image_processor, "pad_to_square"):
        side = max(width, height)  # LLaVA: padded to a square first, then resized
        w, h = _resized(side, side, image_processor)
        return (side, side) if side * side >= w * h else (w, h)
    return _resized(width, height, image_processor)


def _resized(width: int, height: int, ip) -> tuple[int, int]:
    size = getattr(ip, "size", None)
    patch, max_patches = getattr(ip, "patch_size", None), getattr(ip, "max_patches", None)
    if max_patches and _edge(patch, "height"):  # Pix2Struct: as many whole patches as fit max_patches, aspect kept
        ph, pw = _edge(patch, "height"), _edge(patch, "width")
        scale = math.sqrt(max_patches * (ph / height) * (pw / width))
        rows = max(min(int(scale * height / ph), max_patches), 1)
        cols = max(min(int(scale * width / pw), max_patches), 1)
        return cols * pw, rows * ph
    if not getattr(ip, "do_resize", True):
        return width, height
    soft, pool = getattr(ip, "max_soft_tokens", None), getattr(ip, "pooling_kernel_size", None)
    if soft and pool:  # Gemma 4: aspect kept, whole pool x pool patch blocks within max_soft_tokens (upscaled too)
        from transformers.models.gemma4.image_processing_pil_gemma4 import get_aspect_ratio_preserving_size

        h, w = get_aspect_ratio_preserving_size(height, width, patch, soft * pool * pool, pool)
        return w, h
    merge = getattr(ip, "merge_size", None)
    low = getattr(ip, "min_pixels", None) or _edge(size, "shortest_edge")
    high = getattr(ip, "max_pixels", None) or _edge(size, "longest_edge")
    if merge and low and high:  # Qwen2-VL: `size` holds min/max pixels, not edges
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        h, w = smart_resize(height, width, factor=patch * merge, min_pixels=low, max_pixels=high)
        return w, h
    if getattr(ip, "image_grid_pinpoints", None):  # LLaVA-NeXT: resized into the best grid resolution, then padded
        from transformers.image_processing_utils import select_best_resolution

        h, w = select_best_resolution((height, width), ip.image_grid_pinpoints)
        return w, h
    if getattr(ip, "max_image_tiles", None) and _edge(size, "height"):  # Mllama: fitted into a canvas of tiles
        from transformers.models.mllama.image_processing_pil_mllama import get_optimal_tiled_canvas

        h, w = get_optimal_tiled_canvas(height, width, ip.max_image_tiles, _edge(size, "height"))
        return int(w), int(h)
    shortest, longest = _edge(size, "shortest_edge"), _edge(size, "longest_edge")
    if shortest:
        from transformers.image_transforms import get_size_with_aspect_ratio

        h, w = get_size_with_aspect_ratio((height, width), shortest, longest)
        return max(w, 1), max(h, 1)
    if longest:  # Idefics3/SmolVLM: the longest side to `longest_edge`, then whole tiles of max_image_size
        scale = longest / max(width, height)
        w, h = max(1, int(width * scale)), max(1, int(height * scale))
        tile = _edge(getattr(ip, "max_image_size", None), "longest_edge")
        if tile:
            w, h = math.ceil(w / tile) * tile, math.ceil(h / tile) * tile
        return w, h
    if _edge(size, "max_height") and _edge(size, "max_width"):
        scale = min(_edge(size, "max_height") / height, _edge(size, "max_width") / width)
        return max(1, int(width * scale)), max(1, int(height * scale))
    if _edge(size, "height") and _edge(size, "width"):
        return _edge(size, "width"), _edge(size, "height")
    return width, height


GEMMA4_SOFT_TOKENS = (70, 140, 280, 560, 1120)
"""The soft-token budgets (`max_soft_tokens`) Gemma 4's image processor accepts; it refuses any other."""


def limit_pixels(image_processor, max_pixels: int, family: str = "the model") -> str:
    """Make `image_processor` (in place) resize each image to at most `max_pixels` pixels, in the unit its resize
    works in (see `ModelCfg.max_pixels`); returns what was set, in words. Raises ValueError, naming `family`, for a
    processor that resizes every image to one size, or for a limit below its smallest unit (one merged patch, one
    tile, one grid resolution)."""
    ip, size = image_processor, getattr(image_processor, "size", None)
    patch, max_patches = getattr(ip, "patch_size", None), getattr(ip, "max_patches", None)

    def too_small(unit: str, least: int):
        raise ValueError(f"model.max_pixels {max_pixels}: below {family}'s smallest {unit} ({least} pixels)")

    if max_patches and _edge(patch, "height"):  # Pix2Struct
        unit = _edge(patch, "height") * _edge(patch, "width")
        if max_pixels < unit:
            too_small("patch", unit)
        ip.max_patches = min(max_patches, max_pixels // unit)
        return f"max_patches {ip.max_patches}"
    soft, pool = getattr(ip, "max_soft_tokens", None), getattr(ip, "pooling_kernel_size", None)
    if soft and pool:  # Gemma 4: the largest soft-token budget the processor allows whose images fit
        unit = (patch * pool) ** 2  # pixels per soft token
        budgets = [t for t in GEMMA4_SOFT_TOKENS if t <= soft and t * unit <= max_pixels]
        if not budgets:
            too_small("soft-token budget", GEMMA4_SOFT_TOKENS[0] * unit)
        ip.max_soft_tokens = max(budgets)
        return f"max_soft_tokens {ip.max_soft_tokens} (at most {ip.max_soft_tokens} image tokens per image)"
    merge = getattr(ip, "merge_size", None)
    low = getattr(ip, "min_pixels", None) or _edge(size, "shortest_edge")
    high = getattr(ip, "max_pixels", None) or _edge(size, "longest_edge")
    if merge and low and high:  # Qwen2-VL: `size` holds min/max pixels
        unit = (patch * merge) ** 2
        if max_pixels < unit:
            too_small("image token", unit)
        new = min(high, max_pixels)
        for obj, key in ((ip, "max_pixels"), (size, "longest_edge")):
            _set(obj, key, new)
        if low > new:
            for obj, key in ((ip, "min_pixels"), (size, "shortest_edge")):
                _set(obj, key, new)
        return f"max_pixels {new} (at most {new // unit} image tokens per image)"
    if getattr(ip, "image_grid_pinpoints", None):  # LLaVA-NeXT
        kept = [g for g in ip.image_grid_pinpoints if g[0] * g[1] <= max_pixels]
        if not kept:
            too_small("grid resolution", min(g[0] * g[1] for g in ip.image_grid_pinpoints))
        ip.image_grid_pinpoints = kept
        return f"image_grid_pinpoints {kept}"
    if getattr(ip, "max_image_tiles", None) and _edge(size, "height"):  # Mllama
        unit = _edge(size, "height") * _edge(size, "width")
        if max_pixels < unit:
            too_small("tile", unit)
        ip.max_image_tiles = min(ip.max_image_tiles, max_pixels // unit)
        return f"max_image_tiles {ip.max_image_tiles}"
    tile = _edge(getattr(ip, "max_image_size", None), "longest_edge")
    if _edge(size, "longest_edge") and not _edge(size, "shortest_edge") and tile:  # Idefics3/SmolVLM
        if max_pixels < tile * tile:
            too_small("tile", tile * tile)
        _set(size, "longest_edge", min(_edge(size, "longest_edge"), int(math.sqrt(max_pixels)) // tile * tile))
        return f"longest_edge {_edge(size, 'longest_edge')}"
    raise ValueError(f"model.max_pixels does not apply to {family}: its image processor "
                     f"({type(ip).__name__}) gives every image the same number of image tokens")


def _set(obj, key: str, value) -> None:
    if isinstance(obj, dict):
        obj[key] = value
    elif obj is not None and getattr(obj, key, None) is not None:
        setattr(obj, key, value)


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
