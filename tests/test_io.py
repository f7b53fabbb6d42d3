"""vlmtune.io: a write that fails midway leaves the old file (or none) and no temporary; a hash reads in blocks."""

from __future__ import annotations

import hashlib

import pytest

from vlmtune import io as vio


class Boom(Exception):
    pass


def test_atomic_write_text_replaces_whole(tmp_path):
    path = tmp_path / "sub" / "a.json"
    vio.atomic_write_text(path, "first\n")
    vio.atomic_write_text(path, "ünïcode second\n")
    assert path.read_text(encoding="utf-8") == "ünïcode second\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_write_failing_midway_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    vio.atomic_write_text(path, "old\n")
    real_fsync = vio.os.fsync

    def fail(fd):  # the bytes are already in the temporary file when the write fails
        raise Boom("disk full")

    monkeypatch.setattr(vio.os, "fsync", fail)
    with pytest.raises(Boom):
        vio.atomic_write_text(path, "new and longer\n")
    monkeypatch.setattr(vio.os, "fsync", real_fsync)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_path_failing_writer_leaves_nothing(tmp_path):
    path = tmp_path / "new.bin"
    with pytest.raises(Boom), vio.atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise Boom("killed midway")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_swaps_whole_and_cleans_up_on_error(tmp_path):
    final = tmp_path / "best"
    with vio.atomic_dir(final) as tmp:
        tmp.mkdir()
        (tmp / "w.bin").write_bytes(b"one")
    with pytest.raises(Boom), vio.atomic_dir(final) as tmp:
        tmp.mkdir()
        (tmp / "w.bin").write_bytes(b"tw")
        raise Boom("killed midway")
    assert (final / "w.bin").read_bytes() == b"one"  # the old directory, whole
    with vio.atomic_dir(final) as tmp:
        tmp.mkdir()
        (tmp / "x.bin").write_bytes(b"two")
    assert [p.name for p in final.iterdir()] == ["x.bin"]  # replaced, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["best"]


def test_file_sha256_streams_in_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(vio, "BLOCK", 7)  # several blocks, the last one short
    data = bytes(range(256)) * 3
    (tmp_path / "f").write_bytes(data)
    assert vio.file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
