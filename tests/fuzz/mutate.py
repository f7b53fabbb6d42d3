"""Strategies shared by the fuzz tests: JSON values of every type, values of the wrong type, deep nesting, hostile
text (huge, control characters, lone surrogates, placeholders), invalid UTF-8, and image files and paths that no
reader should accept (corrupt, truncated, thin, escaping the root, a directory, a FIFO)."""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

from hypothesis import strategies as st
from PIL import Image

from vlmtune.data.lint import PLACEHOLDERS
from vlmtune.data.store import MAX_JSON_DEPTH

SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(
    max_size=8)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                           max_size=3), max_leaves=6)
"""Any JSON value, a few levels deep at most."""

JSON_TYPES = {"object": dict, "list": list, "string": str, "null": type(None), "boolean": bool, "number": (int, float)}


def json_type(value) -> str:
    if isinstance(value, bool):  # before int: True is an int to Python, a boolean to JSON
        return "boolean"
    return next(name for name, kind in JSON_TYPES.items() if isinstance(value, kind))


def wrong_type(*allowed: str) -> st.SearchStrategy:
    """A JSON value whose type is none of `allowed` ("object", "list", "string", "null", "boolean", "number")."""
    return JSON.filter(lambda v: json_type(v) not in allowed)


def nested(depth: int, leaf=1):
    """`leaf` inside `depth` levels of alternating lists and objects."""
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


TOO_DEEP = st.integers(MAX_JSON_DEPTH + 1, MAX_JSON_DEPTH + 200)
"""A nesting depth every reader must refuse (store.MAX_JSON_DEPTH), with room above it."""

PLACEHOLDER_TEXTS = ["<image>", "<|image_pad|>", "<start_of_image>", "<image_soft_token>", "<|image|>",
                     "<fake_token_around_image>"]
assert all(PLACEHOLDERS.fullmatch(p) for p in PLACEHOLDER_TEXTS)

ODD_CHARS = ["\x00", "\x1b", "\u200f", "\u202e", "\ufeff", "\u0301", "é", "ж", "日本", "🙂", "\r", "\t", "\\", '"']
SAFE_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=30).filter(
    lambda t: not PLACEHOLDERS.search(t))
"""Unicode text that every reader keeps: no lone surrogate, no image placeholder (control characters and NUL
included)."""
ODD_TEXT = st.lists(st.sampled_from(ODD_CHARS) | SAFE_TEXT, min_size=1, max_size=6).map("".join)
ANSWER = (SAFE_TEXT | ODD_TEXT).filter(str.strip)
"""A non-empty answer: text that is not only whitespace."""
BLANK = st.text(st.sampled_from(" \t\n\r\u00a0\u2003\u3000"), max_size=4)
"""An answer that is only whitespace (or nothing): an empty answer to every reader."""
SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
"""A lone surrogate: what JSON's "\\udc80" escape gives Python, and no tokenizer can encode."""


def huge_text(limit: int) -> st.SearchStrategy:
    """A text over `limit` characters, up to 2 MiB."""
    return st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "日", "🙂", " a"]),
                     st.sampled_from([limit + 1, 10 * limit, 2**20]))


def insert_invalid_utf8(data: bytes, at: int, byte: int) -> bytes:
    """`data` with `byte` (one that never occurs in UTF-8) put at offset `at` (clamped)."""
    assert byte in INVALID_UTF8_BYTES
    at = min(at, len(data))
    return data[:at] + bytes([byte]) + data[at:]


INVALID_UTF8_BYTES = [0xC0, 0xC1, *range(0xF5, 0x100)]
"""Bytes that occur in no UTF-8 text, wherever they stand."""


class Quiet:
    """A fixture value hypothesis names in a few words when it prints a failing example (a model's repr, or a
    dict of every fixture's samples, is pages)."""

    def __init__(self, name: str, value):
        self.name, self.value = name, value

    def __repr__(self) -> str:
        return f"<{self.name}>"


# ---------------------------------------------------------------- images and paths


def png(size=(8, 8), color=(255, 0, 0), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def distinct_png(k: int) -> bytes:
    """A small PNG whose bytes differ for each `k` (so no two records share an image by content)."""
    return png(color=(k % 256, (k // 256) % 256, 97))


def _noise_png() -> bytes:
    buf = io.BytesIO()
    Image.frombytes("L", (32, 32), random.Random(0).randbytes(32 * 32)).save(buf, format="PNG")
    return buf.getvalue()


TRUNCATED_PNG = _noise_png()[:600]
"""A PNG cut in the middle of its pixel data (a solid colour's data is so short that a cut misses it)."""
BAD_IMAGE_FILES = {
    "corrupt": b"\x89PNG\r\n\x1a\n" + b"not an image at all" * 3,
    "truncated": TRUNCATED_PNG,
    "empty": b"",
    "text": b"hello, I am a text file\n",
    "thin": png((1, 60)),  # aspect ratio 60:1, over images.MAX_ASPECT_RATIO = 50
}
"""Files that are not usable images, by name."""

BAD_PATHS = ["../outside.png", "../../../../etc/hostname", "/etc/hostname", "", "images", "images/",
             "images/missing.png", "a\x00b.png", "images/\udcff.png", "images/fifo.png", "images/link-out.png",
             "images/dir.png", ".", "images/" + "x" * 300 + ".png"]
"""Image paths relative to a dataset root that must be refused: escaping it, absolute, empty, a directory, missing,
a NUL, a lone surrogate (an undecodable byte), a FIFO, a symlink leading out (see `make_hostile_files`), a name too
long for the file system."""


def make_hostile_files(root: Path) -> None:
    """The files `BAD_PATHS` and `BAD_IMAGE_FILES` name, under `root` (a fresh directory)."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    (images / "dir.png").mkdir()
    os.mkfifo(images / "fifo.png")
    outside = root.parent / f"{root.name}-outside.png"
    outside.write_bytes(png())
    (images / "link-out.png").symlink_to(outside)
    (root.parent / "outside.png").write_bytes(png())
    for name, data in BAD_IMAGE_FILES.items():
        (images / f"{name}.png").write_bytes(data)


def dumps(value) -> str:
    """One JSON line as vlmtune writes it: non-ASCII kept, unless a lone surrogate needs its \\u escape (the only
    way to write one in valid UTF-8)."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value)
    return text


def cli(argv: list[str]) -> tuple[int, str, str]:
    """`vlmtune.cli.main(argv)` in-process -> (exit status, stdout, stderr). stdout is as strict as a UTF-8
    terminal's (a lone surrogate printed there raises, where pytest's capture would print a replacement character);
    stderr uses backslashreplace, as Python's own stderr does. An exception main lets out is a traceback."""
    import contextlib

    from vlmtune.cli import main

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace", write_through=True)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.buffer.getvalue().decode(), err.buffer.getvalue().decode()
