"""CC3M-style TSV: caption + image per row, every other column kept in meta, ids from image stems (collisions get the
row's line), streamed row by row, and written back as the same TSV."""

from __future__ import annotations

import json
import os
import shutil
import threading

import pytest
from helpers import FORMAT_FIXTURES, assert_round_trip, import_format

from vlmtune.data.formats.base import Imported
from vlmtune.data.formats.cc3m import read
from vlmtune.data.store import BadRecord

FIX = FORMAT_FIXTURES / "cc3m"
TSV = FIX / "cc3m.tsv"


def test_import_tsv(tmp_path):
    samples = import_format("cc3m", TSV, tmp_path / "d")
    assert [s.id for s in samples] == ["000000000", "000000001", "000000002", "000000003"]
    assert samples[0].to_json() == {
        "id": "000000000",
        "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]},
                     {"role": "assistant", "content": [{"type": "text", "text": "a very typical bus station"}]}],
        "images": ["images/00000/000000000.jpg"],
        "task": "caption",
        "references": ["a very typical bus station"],
        "source": "cc3m",
        "meta": {"item_url": "http://lh6.ggpht.com/-IvRtNLNcG8o/TpFyrudaT6I/AAAAAAAAM6o/_11MuAAKalQ/IMG_3422.JPG"
                             "?imgmax=800"},
    }
    assert samples[3].target == 'interior of a "café" in the old town , with a crème brûlée on the table'
    assert all(s.split is None for s in samples)
    assert (tmp_path / "d" / "images" / "00000" / "000000002.jpg").read_bytes() == (
        FIX / "00000" / "000000002.jpg").read_bytes()


def test_directory_and_images_option(tmp_path):
    assert len(import_format("cc3m", FIX, tmp_path / "dir")) == 4  # every *.tsv in the directory
    src = tmp_path / "tsv"
    src.mkdir()
    shutil.copy(TSV, src / "train.tsv")
    assert len(import_format("cc3m", src / "train.tsv", tmp_path / "d", images=FIX)) == 4
    with pytest.raises(BadRecord, match=r"train.tsv:2: sample '000000000': .*000000000.jpg: image file not found"):
        import_format("cc3m", src / "train.tsv", tmp_path / "missing")  # without --images: beside the TSV


def test_round_trip_writes_the_same_tsv(tmp_path):
    assert len(assert_round_trip("cc3m", TSV, tmp_path)) == 4
    assert (tmp_path / "exported" / "cc3m.tsv").read_bytes() == TSV.read_bytes()
    assert (tmp_path / "exported" / "00000" / "000000003.jpg").is_file()
    assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == ["00000", "cc3m.tsv"]  # no temporary file


def test_extra_columns_split_and_colliding_stems(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIX, src)
    (src / "00001").mkdir()
    shutil.copy(FIX / "00000" / "000000001.jpg", src / "00001" / "000000000.jpg")
    (src / "cc3m.tsv").write_text(
        "caption\timage\titem_url\twidth\tsplit\n"
        "a bus station\t00000/000000000.jpg\thttp://a.example/1.jpg\t24\ttrain\n"
        "\n"
        "the same stem in another shard\t00001/000000000.jpg\thttp://a.example/2.jpg\t\tval\n"
        "  no split here  \t./00000/000000002.jpg\thttp://a.example/3.jpg\t18\t\n", encoding="utf-8")
    samples = assert_round_trip("cc3m", src / "cc3m.tsv", tmp_path)
    assert [s.id for s in samples] == ["000000000", "000000000-4", "000000002"]
    assert [s.split for s in samples] == ["train", "val", None]
    assert samples[0].meta == {"item_url": "http://a.example/1.jpg", "width": "24"}
    assert samples[1].meta == {"item_url": "http://a.example/2.jpg"}  # empty cells left out
    assert samples[1].images == ["images/00001/000000000.jpg"] and samples[2].images == ["images/00000/000000002.jpg"]
    assert samples[2].target == "no split here" and samples[2].references == ["no split here"]
    exported = (tmp_path / "exported" / "cc3m.tsv").read_text(encoding="utf-8").splitlines()
    assert exported[0] == "caption\timage\titem_url\twidth\tsplit\tid"
    assert exported[2] == "the same stem in another shard\t00001/000000000.jpg\thttp://a.example/2.jpg\t\tval\t000000000-4"


def test_bad_rows_are_named_and_skipped(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIX, src)
    with open(src / "cc3m.tsv", "ab") as f:
        f.write(b"a row with two fields\t00000/000000009.jpg\n"  # line 6
                b"  \t00000/000000001.jpg\thttp://a.example/x.jpg\n"  # 7: empty caption
                b"a missing image\t00000/000000099.jpg\thttp://a.example/y.jpg\n"  # 8
                b"escaping\t../../etc/passwd\thttp://a.example/z.jpg\n"  # 9
                b"latin-1 caf\xe9\t00000/000000001.jpg\thttp://a.example/w.jpg\n")  # 10
    with pytest.raises(BadRecord, match=r"cc3m.tsv:6: expected 3 tab-separated fields \(caption, image, item_url\), "
                                        r"got 2"):
        import_format("cc3m", src, tmp_path / "stop")
    samples = import_format("cc3m", src, tmp_path / "skip", skip_bad=True)
    assert len(samples) == 4
    rejected = [json.loads(line) for line in (tmp_path / "skip" / "rejected.jsonl").read_text().splitlines()]
    errors = {r["line"]: r["error"] for r in rejected}
    assert sorted(errors) == [6, 7, 8, 9, 10]
    assert "00000/000000001.jpg: empty caption" in errors[7]
    assert "00000/000000099.jpg: image file not found" in errors[8]
    assert "escapes" in errors[9] and "not UTF-8" in errors[10]


def test_header_is_required(tmp_path):
    (tmp_path / "Train_GCC-training.tsv").write_text("a very typical bus station\thttp://lh6.ggpht.com/x.jpg\n")
    with pytest.raises(BadRecord, match=r"Train_GCC-training.tsv:1: expected a header row naming at least the "
                                        r"'caption' and 'image' columns"):
        import_format("cc3m", tmp_path / "Train_GCC-training.tsv", tmp_path / "out")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a FIFO")
def test_rows_are_streamed(tmp_path):
    """The first row comes out before the rest of the TSV exists: a FIFO whose writer waits for it (5 s at most)."""
    fifo = tmp_path / "src" / "stream.tsv"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    got_first, waited = threading.Event(), []

    def writer():
        with open(fifo, "w", encoding="utf-8") as f:
            f.write("caption\timage\titem_url\nfirst row\ta.jpg\thttp://a.example/a.jpg\n")
            f.flush()
            waited.append(got_first.wait(5))
            f.write("second row\tb.jpg\thttp://a.example/b.jpg\n")

    threading.Thread(target=writer, daemon=True).start()
    records = read(fifo.parent, None)  # the directory: its *.tsv
    first = next(records)
    got_first.set()
    rest = list(records)
    assert waited == [True], "the first row was not yielded until the whole file had been read"
    assert isinstance(first, Imported) and first.sample.target == "first row"
    assert [r.sample.id for r in rest] == ["b"]
