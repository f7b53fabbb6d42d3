"""Files written so that no reader ever sees half of one, and files hashed without reading them whole.

Every writer here puts the bytes under a temporary name in the destination's own directory and then renames it over
the destination (a rename within one filesystem is atomic): an exception, a full disk or a killed process midway
leaves the old file (or none), never a partial one, and the temporary is removed when Python sees the failure.
Temporary names carry the process and thread id, so processes (ranks) and threads writing the same file at once do
not collide, and start with "." so directory listings that skip hidden files never pick one up.

The bottom layer, next to config: imports nothing of vlmtune.

    from vlmtune.io import atomic_path, atomic_write_text
    atomic_write_text(run / "metrics.json", json.dumps(metrics) + "\\n")
    with atomic_path(out / "features.safetensors") as tmp:  # any writer that takes a path
        save_file(tensors, str(tmp))
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BLOCK = 1 << 20
"""Bytes read at a time when hashing a file."""


def _temporary(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{threading.get_native_id()}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to `path` for any writer that takes a path (`save_file`, `img.save`, `open`); when the
    block ends without an error it is renamed over `path`, and when the block raises it is removed. The parent
    directory is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        yield tmp
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (flushed to disk before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` as UTF-8 to `path` atomically (flushed to disk before the rename)."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A new directory's path next to `path` (not created: `save_pretrained`, `copytree` and `mkdir` make it) to
    fill; when the block ends without an error it takes `path`'s place — an existing `path` is moved aside first and
    deleted after, so a reader sees the old directory or the new one, whole — and when the block raises it is
    deleted. A directory left by a killed writer under the same name is deleted first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read BLOCK bytes at a time (an image or a weights file of any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()
