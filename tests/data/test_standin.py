"""Stand-in raw data: each job's files are read by the importer its recipe starts with, with nothing rejected, and
carry the facts that job is about (ten noisy VizWiz answers with unanswerable photos, the meme's word in its caption,
a product URL per catalogue item, a Portuguese translation for every attribute value)."""

import csv
import json

import pytest
import yaml
from helpers import import_format

from vlmtune.data.standin import ATTRIBUTES, MEME_WORDS, PT, VALUES, write_standin


def test_vizwiz_standin_has_ten_answers_and_unanswerable_blurred_photos(tmp_path):
    write_standin("vizwiz", tmp_path / "raw", 60, seed=3)
    every = import_format("vizwiz", tmp_path / "raw", tmp_path / "d")
    samples = [s for s in every if s.split != "test"]
    assert len(samples) == 60 and all(len(s.answers) == 10 for s in samples)
    # n // 5 test questions without answers, each split numbered from 0 in its file's order, as VizWiz's
    test = json.loads((tmp_path / "raw" / "Annotations" / "test.json").read_text())
    assert test == [{"image": f"VizWiz_test_{k:08d}.jpg", "question": s.question}
                    for k, s in enumerate(x for x in every if x.split == "test")]
    assert len(test) == 12 and all((tmp_path / "raw" / "test" / q["image"]).is_file() for q in test)
    assert [s.id for s in samples if s.split == "val"] == [f"VizWiz_val_{k:08d}" for k in range(12)]
    unanswerable = [s for s in samples if s.meta["answerable"] == 0]
    assert 3 <= len(unanswerable) <= 20
    for s in unanswerable:
        assert s.target == "unanswerable" and s.meta["answer_type"] == "unanswerable"
    for s in samples:
        if s.meta["answerable"] == 1:
            truth = s.target  # the majority: 6 to 10 of the ten annotators
            assert s.answers.count(truth) >= 6 and truth != "unanswerable"


def test_unanswerable_photos_are_dark_and_featureless(tmp_path):
    from PIL import Image, ImageStat

    write_standin("vizwiz", tmp_path / "raw", 40, seed=0)
    samples = [s for s in import_format("vizwiz", tmp_path / "raw", tmp_path / "d") if s.split != "test"]
    for s in samples:
        with Image.open(tmp_path / "d" / s.images[0]) as im:
            stat = ImageStat.Stat(im.convert("L"))
        if s.meta["answerable"] == 0:
            assert stat.mean[0] < 90 and stat.stddev[0] < 12
        else:
            assert stat.mean[0] > 120


def test_fashion_vqa_standin_table_matches_its_photos_and_translates_every_value(tmp_path):
    write_standin("fashion-vqa", tmp_path, 25, seed=1)
    rows = list(csv.DictReader(open(tmp_path / "catalogue.csv", encoding="utf-8")))
    assert len(rows) == 25 and all((tmp_path / "photos" / r["image"]).is_file() for r in rows)
    templates = yaml.safe_load((tmp_path / "templates.yaml").read_text(encoding="utf-8"))
    assert templates["languages"] == ["en", "pt"]
    for a in ATTRIBUTES:
        assert templates["attributes"][a]["answers"]["pt"] == {v: PT[v] for v in VALUES[a]}
        assert set(templates["attributes"][a]["yes_no"]) == {"en", "pt"}  # true and false statements
        assert {r[a] for r in rows} <= set(VALUES[a])


def test_meme_standin_captions_quote_the_drawn_word_in_russian(tmp_path):
    write_standin("meme-captions-ru", tmp_path / "raw", 12, seed=0)
    samples = import_format("coco", tmp_path / "raw", tmp_path / "d")
    assert {s.split for s in samples} == {"train", "val", "test"}
    for s in samples:
        word = s.target.split("«")[1].rstrip("»")
        assert word in MEME_WORDS and s.task == "caption" and s.references == [s.target]


def test_retrieval_standin_is_a_cc3m_catalogue_with_item_urls(tmp_path):
    write_standin("fashion-retrieval", tmp_path / "raw", 20, seed=0)
    header = (tmp_path / "raw" / "cc3m.tsv").read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert header == ["caption", "image", "item_url", "split"]
    samples = import_format("cc3m", tmp_path / "raw", tmp_path / "d")
    assert [s.meta["item_url"] for s in samples] == [f"https://shop.example/item/item-{i:05d}" for i in range(20)]
    assert {s.split for s in samples} == {"train", "val", "test"}


def test_standin_refuses_a_non_empty_directory_and_unknown_jobs(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_standin("vizwiz", tmp_path / "x", 5)
    with pytest.raises(ValueError, match="unknown stand-in job"):
        write_standin("memes", tmp_path / "y", 5)
    assert json.dumps(sorted(p.name for p in (tmp_path / "x").iterdir())) == '["keep.txt"]'


def test_flickr30k_ru_standin_is_the_translated_flickr30k_of_the_meme_job(tmp_path):
    """Stage 1's data: Flickr30k's layout, five Russian captions per photo (the first, the training target, describes
    the clothes as the meme captions do), figures other than the memes', and no text drawn on them."""
    from PIL import Image

    from vlmtune.data.standin import RU_COLOURS, _ru_colour

    write_standin("flickr30k-ru", tmp_path / "raw", 12, seed=0)
    samples = import_format("flickr30k", tmp_path / "raw", tmp_path / "d")
    assert len(samples) == 12 and all(len(s.references) == 5 and s.target == s.references[0] for s in samples)
    colours = set(RU_COLOURS.values())
    for s in samples:
        top, bottom = s.target.split(", ")
        assert top.removesuffix(" верх") in colours and bottom.removesuffix(" низ") in colours
        assert all(any("а" <= ch <= "я" for ch in r) for r in s.references)
    write_standin("meme-captions-ru", tmp_path / "memes", 12, seed=0)
    memes = import_format("coco", tmp_path / "memes", tmp_path / "m")
    with Image.open(tmp_path / "d" / samples[0].images[0]) as a, Image.open(tmp_path / "m" / memes[0].images[0]) as b:
        assert a.size == (160, 160) and b.size != a.size  # no white band with a word on top
    assert [_ru_colour("blue", g) for g in ("m", "f", "pl")] == ["синий", "синяя", "синие"]
    assert [_ru_colour("black", g) for g in ("m", "f", "pl")] == ["чёрный", "чёрная", "чёрные"]
