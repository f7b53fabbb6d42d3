"""The corpus of bad inputs (tests/fixtures/bad_inputs): every fault is reported with file and record, and with
--skip-bad every good record is kept and every bad one is in rejected.jsonl: nothing lost, nothing dropped silently.

    r1, r2, r13       good
    r3  corrupt.jpg   truncated JPEG            r4  corrupt.png   PNG with a broken data chunk
    r5  empty.png     zero-byte file            r6  huge.png      20000x20000 PNG header (decompression bomb)
    r7  cmyk.jpg      CMYK JPEG: kept, RGB      r8  rotated.jpg   EXIF orientation 6: kept, rotated to 30x40
    r9  ../ path      escapes the root          line 10           broken JSON
    r11 empty answer                            r12 two image slots, one image
"""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import REPO, import_format

from vlmtune.cli import main
from vlmtune.data.dataset import load_split
from vlmtune.data.images import load_image
from vlmtune.data.store import BadRecord, read_samples

CORPUS = REPO / "tests" / "fixtures" / "bad_inputs"
GOOD = ["r1", "r2", "r7", "r8", "r13"]
BAD = {  # manifest line -> what its error must say
    3: "corrupt.jpg: cannot decode image",
    4: "corrupt.png: cannot decode image",
    5: "empty.png: cannot decode image",
    6: "huge.png: 400000000 pixels exceeds the limit of 50000000 (decompression-bomb guard)",
    9: "escapes the dataset directory",
    10: "malformed JSON",
    11: "empty answer",
    12: "2 image slot(s) in messages but 1 image(s)",
}


def _by_line(records):
    return {r["line"]: r["error"] for r in records}


def test_training_data_loading_keeps_the_good_and_lists_the_bad(tmp_path):
    with pytest.raises(BadRecord, match=r"manifest.jsonl:3: sample 'r3': .*corrupt.jpg: cannot decode image"):
        read_samples(CORPUS)
    samples = load_split(CORPUS, None, skip_bad=True, rejected_path=tmp_path / "rejected.jsonl")
    assert [s.id for s in samples] == GOOD
    rejected = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    errors = _by_line(rejected)
    assert set(errors) == set(BAD) and all(r["file"].endswith("manifest.jsonl") for r in rejected)
    for line, text in BAD.items():
        assert text in errors[line], (line, errors[line])
    assert len(samples) + len(rejected) == 13  # nothing lost
    assert load_image(CORPUS / "images/cmyk.jpg").mode == "RGB"
    assert load_image(CORPUS / "images/rotated.jpg").size == (30, 40)


def test_data_check_reports_every_fault_with_its_line(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["data", "check", str(CORPUS), "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    found = {e["line"]: e["message"] for kind in report["errors"].values() for e in kind}
    assert set(found) == set(BAD)
    for line, text in BAD.items():
        assert text in found[line], (line, found[line])
    warned = {w["sample"] for kind in report["warnings"].values() for w in kind}
    assert warned == {"r7", "r8"}
    assert report["samples"] == 9  # parsed records (the image faults are found after parsing)


def test_import_with_skip_bad_keeps_every_good_record(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(CORPUS, src)
    with pytest.raises(BadRecord, match=r"sharegpt.jsonl:3: .*corrupt.jpg: cannot decode image"):
        import_format("sharegpt", src / "sharegpt.jsonl", tmp_path / "stop")
    samples = import_format("sharegpt", src / "sharegpt.jsonl", tmp_path / "d", skip_bad=True)
    assert [s.id for s in samples] == GOOD
    rejected = [json.loads(line) for line in (tmp_path / "d" / "rejected.jsonl").read_text().splitlines()]
    errors = _by_line(rejected)
    assert set(errors) == set(BAD) and all(r["file"].endswith("sharegpt.jsonl") for r in rejected)
    assert "corrupt.jpg" in errors[3] and "empty.png" in errors[5] and BAD[6] in errors[6]
    assert "malformed" in errors[10].lower() or "json" in errors[10].lower()
    assert "empty assistant answer" in errors[11] and "placeholder" in errors[12]
    assert len(samples) + len(rejected) == 13
    kept = {p.name for p in (tmp_path / "d" / "images").iterdir()}
    assert kept == {"good1.jpg", "good2.png", "cmyk.jpg", "rotated.jpg"}  # rejected images are not kept
