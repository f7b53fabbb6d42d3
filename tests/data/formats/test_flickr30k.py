"""Flickr30k: the token file and Kaggle's results.csv give the same caption Samples (captions in number order), and
export writes the token file back byte for byte."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import FORMAT_FIXTURES, assert_round_trip, import_format

from vlmtune.data.formats import export_dataset, get_format
from vlmtune.data.store import BadRecord

FIX = FORMAT_FIXTURES / "flickr30k"
TOKEN = FIX / "results_20130124.token"
KAGGLE = FIX / "kaggle" / "flickr30k_images"


def test_import_token_file(tmp_path):
    samples = import_format("flickr30k", TOKEN, tmp_path / "d")
    assert [s.id for s in samples] == ["1000092795", "10002456", "1000268201", "1000344755"]  # file order
    s = samples[0]
    assert s.to_json() == {
        "id": "1000092795",
        "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]},
                     {"role": "assistant", "content": [{"type": "text", "text": "Two young guys with shaggy hair look "
                                                        "at their hands while hanging out in the yard ."}]}],
        "images": ["images/1000092795.jpg"],
        "task": "caption",
        "references": ["Two young guys with shaggy hair look at their hands while hanging out in the yard .",
                       "Two young , White males are outside near many bushes .",
                       "Two men in green shirts are standing in a yard .",
                       "A man in a blue shirt standing in a garden .", "Two friends enjoy time spent together ."],
        "source": "flickr30k",
    }
    assert samples[3].references[3] == 'A man in a \u201cblue\u201d shirt cleans the café window , "carefully" .'
    assert all(s.split is None and s.meta == {} and len(s.references) == 5 for s in samples)
    assert (tmp_path / "d" / "images" / "10002456.jpg").read_bytes() == (
        FIX / "flickr30k-images" / "10002456.jpg").read_bytes()


def test_kaggle_csv_gives_the_same_samples(tmp_path):
    token = {s.id: s.to_json() for s in import_format("flickr30k", TOKEN, tmp_path / "t")}
    # the Kaggle directory: results.csv found in it, images in flickr30k_images/ beside it
    kaggle = import_format("flickr30k", KAGGLE, tmp_path / "k")
    assert [s.id for s in kaggle] == ["1000092795", "1000344755"]
    assert [s.to_json() for s in kaggle] == [token[s.id] for s in kaggle]  # "| " split, quotes and commas kept


def test_directory_and_images_option(tmp_path):
    assert [s.id for s in import_format("flickr30k", FIX, tmp_path / "dir")][:2] == ["1000092795", "10002456"]
    src = tmp_path / "elsewhere"
    src.mkdir()
    shutil.copy(TOKEN, src / "captions.token")
    samples = import_format("flickr30k", src / "captions.token", tmp_path / "d", images=FIX / "flickr30k-images")
    assert len(samples) == 4
    with pytest.raises(BadRecord, match="1000092795.jpg: image file not found"):  # no --images: beside the file
        import_format("flickr30k", src / "captions.token", tmp_path / "missing")


def test_round_trip_writes_the_token_file_back(tmp_path):
    samples = assert_round_trip("flickr30k", TOKEN, tmp_path)
    assert len(samples) == 4
    assert (tmp_path / "exported" / "results_20130124.token").read_bytes() == TOKEN.read_bytes()
    assert sorted(p.name for p in (tmp_path / "exported" / "flickr30k-images").iterdir()) == sorted(
        p.name for p in (FIX / "flickr30k-images").iterdir())


def test_kaggle_round_trip(tmp_path):
    assert len(assert_round_trip("flickr30k", KAGGLE / "results.csv", tmp_path)) == 2


def test_captions_sorted_by_number_and_odd_numbers_kept(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIX, src)
    (src / "results_20130124.token").write_text(
        "10002456.jpg#3\tthird\n10002456.jpg#0\tzeroth\n10002456.jpg#1\tfirst\n1000092795.jpg#1\tb\n"
        "1000092795.jpg#0\ta\n", encoding="utf-8")
    first, second = assert_round_trip("flickr30k", src / "results_20130124.token", tmp_path)
    assert first.references == ["zeroth", "first", "third"] and first.target == "zeroth"
    assert first.meta == {"caption_numbers": [0, 1, 3]}
    assert second.references == ["a", "b"] and second.meta == {}
    assert (tmp_path / "exported" / "results_20130124.token").read_text(encoding="utf-8").splitlines() == [
        "10002456.jpg#0\tzeroth", "10002456.jpg#1\tfirst", "10002456.jpg#3\tthird", "1000092795.jpg#0\ta",
        "1000092795.jpg#1\tb"]


def test_export_flattens_line_breaks(tmp_path):
    import_format("flickr30k", TOKEN, tmp_path / "a")
    manifest = tmp_path / "a" / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    rows[0]["references"][1] = "two\tlines\nhere"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    info = export_dataset(get_format("flickr30k"), tmp_path / "a", tmp_path / "e")
    assert info["captions"] == 20 and info["captions_flattened"] == 1
    assert (tmp_path / "e" / "results_20130124.token").read_text(encoding="utf-8").splitlines()[1] == (
        "1000092795.jpg#1\ttwo lines here")


def _rejected(out):
    return [json.loads(line) for line in (out / "rejected.jsonl").read_text(encoding="utf-8").splitlines()]


def test_bad_token_lines_are_named_and_skipped(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIX, src)
    lines = TOKEN.read_text(encoding="utf-8").splitlines()
    lines.insert(2, "1000092795.jpg#7\t   ")  # line 3: an empty caption (the other five are kept)
    lines.insert(4, "1000092795.jpg#1\tthe same number again")  # line 5
    lines += ["no tab on this line",  # line 23
              "9999999.jpg#0\tA picture that is not there .",  # 24
              "../../etc/passwd#0\tEscaping .",  # 25
              "10002456.jpg#5\tA sixth caption far from the others .",  # 26
              "1000268201.jpg#x\tNot a number ."]  # 27
    (src / "results_20130124.token").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(BadRecord, match=r"results_20130124.token:3: 1000092795.jpg#7: empty caption"):
        import_format("flickr30k", src, tmp_path / "stop")
    samples = import_format("flickr30k", src, tmp_path / "skip", skip_bad=True)
    assert [s.id for s in samples] == ["1000092795", "10002456", "1000268201", "1000344755"]
    assert len(samples[0].references) == 5 and samples[1].references[-1] == "Three men on a large rig ."
    # an image's group is yielded when its last line has been read: line 26's comes after line 27's parse error
    errors = {r["line"]: r["error"] for r in _rejected(tmp_path / "skip")}
    assert list(errors) == [3, 5, 23, 24, 25, 27, 26]
    assert "caption number 1 given twice" in errors[5]
    assert "expected '<image>#<number><TAB><caption>'" in errors[23]
    assert "9999999.jpg: image file not found" in errors[24]
    assert "escapes" in errors[25]
    assert "10002456.jpg: its captions are not on consecutive lines (an earlier group starts at line 8)" in errors[26]
    assert "caption number 'x' is not an integer" in errors[27]


def test_bad_kaggle_rows(tmp_path):
    src = tmp_path / "flickr30k_images"
    shutil.copytree(KAGGLE, src)
    with open(src / "results.csv", "a", encoding="utf-8") as f:
        f.write("2199200615.jpg| 4   A dog runs across the grass .\n")  # the Kaggle file's one broken row
    with pytest.raises(BadRecord, match=r"results.csv:12: expected 'image_name\| comment_number\| comment'"):
        import_format("flickr30k", src, tmp_path / "stop")
    assert len(import_format("flickr30k", src, tmp_path / "skip", skip_bad=True)) == 2
    (src / "results.csv").write_text("1000092795.jpg,0,A comma separated row\n", encoding="utf-8")
    with pytest.raises(BadRecord, match=r"results.csv:1: expected the header 'image_name\| comment_number\| comment'"):
        import_format("flickr30k", src / "results.csv", tmp_path / "header")
