"""DeepFashion-MultiModal: captions.json ({image: caption}) + images/ -> one caption Sample per entry; bad entries
(non-string, empty or repeated captions, missing or escaping images) named by file, entry number and key; resumable
through the import driver; written back as the same layout."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import FORMAT_FIXTURES, assert_round_trip, import_format

from vlmtune.cli import main
from vlmtune.data.store import MAX_JSON_DEPTH, BadRecord

FIX = FORMAT_FIXTURES / "deepfashion_mm"
CAPTIONS = FIX / "captions.json"
NAMES = ["MEN-Denim-id_00000080-01_7_additional.jpg", "MEN-Jackets_Vests-id_00000071-01_4_full.jpg",
         "WOMEN-Blouses_Shirts-id_00000001-02_1_front.jpg", "WOMEN-Dresses-id_00000002-02_1_front.jpg"]


def _copy(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIX, src)
    return src


def _write(src, text: str) -> None:
    (src / "captions.json").write_text(text, encoding="utf-8")


def _rejected(out) -> dict[int, str]:
    return {r["line"]: r["error"] for r in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}


def test_import_captions_json(tmp_path):
    samples = import_format("deepfashion_mm", FIX, tmp_path / "d")  # the directory: its captions.json + images/
    assert [s.id for s in samples] == [n.removesuffix(".jpg") for n in NAMES]
    assert samples[0].to_json() == {
        "id": "MEN-Denim-id_00000080-01_7_additional",
        "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]},
                     {"role": "assistant", "content": [{"type": "text", "text": (
                         "The lower clothing is of long length. The fabric is denim and it has solid color patterns. "
                         "This gentleman wears a short-sleeve T-shirt with pure color patterns.")}]}],
        "images": ["images/MEN-Denim-id_00000080-01_7_additional.jpg"],
        "task": "caption",
        "references": ["The lower clothing is of long length. The fabric is denim and it has solid color patterns. "
                       "This gentleman wears a short-sleeve T-shirt with pure color patterns."],
        "source": "deepfashion_mm",
    }
    assert samples[1].target.endswith("is of long length.")  # the source's trailing space is stripped
    assert samples[3].target.endswith("naïve café style.")  # UTF-8 as written
    assert all(s.split is None for s in samples)
    for name in NAMES:
        assert (tmp_path / "d" / "images" / name).read_bytes() == (FIX / "images" / name).read_bytes()


def test_a_captions_file_with_another_name_and_images_elsewhere(tmp_path):
    split = tmp_path / "splits"
    split.mkdir()
    shutil.copy(CAPTIONS, split / "train_captions.json")
    assert len(import_format("deepfashion_mm", split / "train_captions.json", tmp_path / "d",
                             images=FIX / "images")) == 4
    with pytest.raises(BadRecord, match=rf"train_captions.json:1: sample '{NAMES[0][:-4]}': .*image file not found"):
        import_format("deepfashion_mm", split / "train_captions.json", tmp_path / "missing")  # beside it: none
    with pytest.raises(FileNotFoundError, match="nor a directory holding captions.json"):
        import_format("deepfashion_mm", split, tmp_path / "nothing")


def test_round_trip_writes_the_same_layout(tmp_path):
    samples = assert_round_trip("deepfashion_mm", FIX, tmp_path)
    assert len(samples) == 4
    exported = tmp_path / "exported"
    assert sorted(p.name for p in exported.iterdir()) == ["captions.json", "images"]
    written = json.loads((exported / "captions.json").read_text(encoding="utf-8"))
    assert list(written) == NAMES and written[NAMES[2]] == samples[2].target
    assert (exported / "images" / NAMES[3]).read_bytes() == (FIX / "images" / NAMES[3]).read_bytes()


def test_bad_entries_are_named_by_entry_and_key_and_skipped(tmp_path):
    src = _copy(tmp_path)
    good = json.loads(CAPTIONS.read_text(encoding="utf-8"))
    # entries 1-4 the fixture's; then 5: null, 6: a number, 7: a list, 8: an object, 9: blank, 10: no such image,
    # 11: escaping the image folder, 12: an empty key, 13: entry 2's key again (json.loads would keep this one)
    text = json.dumps(good, ensure_ascii=False)[:-1] + (
        f', "{NAMES[0]}x": null, "b.jpg": 3, "c.jpg": ["a", "list"], "d.jpg": {{"text": "x"}}, "e.jpg": "   ",'
        f' "missing.jpg": "a caption", "../../etc/passwd": "a caption", "": "a caption",'
        f' "{NAMES[1]}": "the same photo again"}}')
    _write(src, text)
    with pytest.raises(BadRecord) as e:
        import_format("deepfashion_mm", src, tmp_path / "stop")
    assert f"captions.json:5: entry 5: {NAMES[0]}x: caption must be a string, got null None" in str(e.value)
    assert "--skip-bad" in str(e.value)

    samples = import_format("deepfashion_mm", src, tmp_path / "skip", skip_bad=True)
    assert [s.id for s in samples] == [n.removesuffix(".jpg") for n in NAMES]  # no good entry lost
    assert samples[1].target.startswith("The person is wearing")  # the first of the repeated key's captions
    errors = _rejected(tmp_path / "skip")
    assert sorted(errors) == list(range(5, 14))
    assert "b.jpg: caption must be a string, got number 3" in errors[6]
    assert "c.jpg: caption must be a string, got list" in errors[7]
    assert "d.jpg: caption must be a string, got object" in errors[8]
    assert "e.jpg: empty caption" in errors[9]
    assert "missing.jpg: image file not found" in errors[10]
    assert "escapes" in errors[11] and "empty image name" in errors[12]
    assert errors[13] == (f"entry 13: image {NAMES[1]!r} given twice (first at entry 2, which is the one imported)")
    assert not (tmp_path / "skip" / "images" / "missing.jpg").exists()


@pytest.mark.parametrize("text, error", [
    ('[{"image": "a.jpg", "caption": "x"}]', 'expected a JSON object {"<image>.jpg": "<caption>", ...}, got list'),
    ('{"a.jpg": "unterminated', "malformed JSON: Unterminated string"),
    ('{"a.jpg": ' + "[" * (MAX_JSON_DEPTH + 5) + "]" * (MAX_JSON_DEPTH + 5) + "}", "malformed JSON: nested deeper"),
    ('{"a.jpg": ' + "[" * 100_000 + "]" * 100_000 + "}", "malformed JSON: nested deeper"),  # a RecursionError inside
])
def test_a_file_that_is_not_a_captions_object_is_named(tmp_path, text, error):
    src = _copy(tmp_path)
    _write(src, text)
    with pytest.raises(BadRecord) as e:
        import_format("deepfashion_mm", src, tmp_path / "out")
    assert f"captions.json:0: {error}" in str(e.value)


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    src = _copy(tmp_path)
    (src / "captions.json").write_bytes('{"a.jpg": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(BadRecord, match=r"captions.json:0: not UTF-8 text"):
        import_format("deepfashion_mm", src, tmp_path / "out")


def test_image_paths_in_subfolders_and_colliding_stems(tmp_path):
    src = _copy(tmp_path)
    for sub in ("men", "women"):
        (src / "images" / sub).mkdir()
    shutil.copy(FIX / "images" / NAMES[0], src / "images" / "men" / "look.jpg")
    shutil.copy(FIX / "images" / NAMES[2], src / "images" / "women" / "look.jpg")
    _write(src, json.dumps({"men/look.jpg": "a man in denim", "./women//look.jpg": "a woman in a tank top"}))
    samples = assert_round_trip("deepfashion_mm", src, tmp_path)
    assert [(s.id, s.images) for s in samples] == [("look", ["images/men/look.jpg"]),
                                                   ("look-2", ["images/women/look.jpg"])]


def test_a_stopped_import_resumes_with_skip_bad_from_where_it_stopped(tmp_path):
    src = _copy(tmp_path)
    good = json.loads(CAPTIONS.read_text(encoding="utf-8"))
    _write(src, json.dumps({**dict(list(good.items())[:2]), "gone.jpg": "no image", **dict(list(good.items())[2:])},
                           ensure_ascii=False))
    out = tmp_path / "out"
    with pytest.raises(BadRecord, match=r"captions.json:3: sample 'gone': .*image file not found"):
        import_format("deepfashion_mm", src, out)
    assert json.loads((out / ".import-state.json").read_text())["records"] == 2  # entries 1-2 written and kept
    samples = import_format("deepfashion_mm", src, out, skip_bad=True)
    assert [s.id for s in samples] == [n.removesuffix(".jpg") for n in NAMES]
    assert list(_rejected(out)) == [3]


def test_the_cli_imports_and_names_a_bad_entry_without_a_traceback(tmp_path, capsys):
    assert main(["data", "import", "deepfashion_mm", str(FIX), "--out", str(tmp_path / "d")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["samples"] == 4
    src = _copy(tmp_path)
    _write(src, json.dumps({NAMES[0]: None}))
    assert main(["data", "import", "deepfashion_mm", str(src), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert f"captions.json:1: entry 1: {NAMES[0]}: caption must be a string, got null None" in err
    assert "Traceback" not in err
