"""Stand-in raw data for the five jobs vlmtune was designed from: drawn images written in the OUTSIDE format each
real project starts from, so every recipe page in docs/ runs offline from its first command (an import) to its
metric, on data whose answers are known.

    fashion-vqa        catalogue.csv (one row per photo, one column per attribute) + photos/ + templates.yaml
                       (English and Portuguese questions, a Portuguese translation of every value)
                       -> `vlmtune data vqa-from-attributes catalogue.csv --images photos --templates templates.yaml`
    vizwiz             VizWiz VQA JSON: Annotations/{train,val}.json with ten answers per question, answer_type and
                       answerable, images in train/ and val/; about one photo in six is blurred and darkened past
                       recognition and answered "unanswerable" by most annotators, as in VizWiz. Plus n/5 more
                       questions in Annotations/test.json + test/ with image and question only: VizWiz's test
                       answers are hidden (the submission is scored by the challenge's server)
                       -> `vlmtune data import vizwiz`
    meme-captions-ru   COCO captions files (annotations/captions_<split>2014.json + <split>2014/) of figures with a
                       Russian word drawn in a white band across the top (the meme's own text); each Russian
                       caption names the clothes and quotes the word -> `vlmtune data import coco`
    flickr30k-ru       the meme job's stage-1 data: Flickr30k's layout (results_20130124.token, five captions per
                       photo, + flickr30k-images/) of figures with no text on them, captioned in Russian, as
                       `vlmtune data import flickr30k` + `vlmtune data translate --to ru` leave the real Flickr30k
                       (offline there is no translation model that knows Russian to run) -> `vlmtune data import
                       flickr30k` + `vlmtune data split`
    fashion-retrieval  a CC3M-style catalogue: cc3m.tsv with caption, image, item_url (+ split), images beside it
                       -> `vlmtune data import cc3m` / `vlmtune retrieve index`
    chartqa            ChartQA's layout (<split>/<split>_augmented.json, png/, tables/*.csv) of drawn bar, line and
                       pie charts with template questions (ChartQA's "augmented" kind) and their true data tables
                       -> `vlmtune data import chartqa`

The drawings are the `fashion` world of `synthetic.py` (the `charts` world of `charts.py` for chartqa): the
same seed gives the same figures and facts. The annotator noise (VizWiz's disagreeing answers, its unanswerable
photos) is drawn here, deterministically from the seed. Each writer goes through the format's own exporter, so the
files are exactly what the importer reads.
"""

from __future__ import annotations

import csv
import random
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import yaml
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from vlmtune.data.chart_table import Table
from vlmtune.data.formats import get_format
from vlmtune.data.formats.base import export_dataset
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.store import write_dataset
from vlmtune.data.synthetic import BOTTOM_TYPES, COLOURS, PATTERNS, TOP_TYPES, WORLDS, fashion

ATTRIBUTES = ("top_type", "top_colour", "top_pattern", "bottom_type", "bottom_colour")
VALUES = {"top_type": TOP_TYPES, "top_colour": COLOURS, "top_pattern": PATTERNS, "bottom_type": BOTTOM_TYPES,
          "bottom_colour": COLOURS}

PT = {
    "red": "vermelho", "green": "verde", "blue": "azul", "yellow": "amarelo", "orange": "laranja", "purple": "roxo",
    "black": "preto", "white": "branco", "t-shirt": "camiseta", "sweater": "suéter", "tank top": "regata",
    "trousers": "calça", "shorts": "bermuda", "skirt": "saia", "plain": "liso", "striped": "listrado",
    "dotted": "de bolinhas",
}
"""Portuguese for every attribute value (one word or phrase per value, as the catalogue team would write it)."""

QUESTIONS = {
    "top_type": {"en": ["What is the person wearing on top?"], "pt": ["O que a pessoa veste em cima?"]},
    "top_colour": {"en": ["What colour is the {top_type}?"], "pt": ["Qual é a cor da parte de cima?"]},
    "top_pattern": {"en": ["What pattern does the {top_type} have?"], "pt": ["Qual é a estampa da parte de cima?"]},
    "bottom_type": {"en": ["What is the person wearing on the bottom?"], "pt": ["O que a pessoa veste embaixo?"]},
    "bottom_colour": {"en": ["What colour is the {bottom_type}?"], "pt": ["Qual é a cor da parte de baixo?"]},
}

YES_NO_QUESTIONS = {
    "top_type": {"en": ["Is the person wearing a {top_type} on top?"], "pt": ["A pessoa veste {top_type} em cima?"]},
    "top_colour": {"en": ["Is the {top_type} {top_colour}?"], "pt": ["A cor da parte de cima é {top_colour}?"]},
    "top_pattern": {"en": ["Is the {top_type} {top_pattern}?"], "pt": ["O padrão da parte de cima é {top_pattern}?"]},
    "bottom_type": {"en": ["Is the person wearing {bottom_type} below the waist?"],
                    "pt": ["A pessoa veste {bottom_type} embaixo?"]},
    "bottom_colour": {"en": ["Is the colour of the {bottom_type} {bottom_colour}?"],
                      "pt": ["A cor da parte de baixo é {bottom_colour}?"]},
}
"""Statements to confirm or deny (`yes_no` templates): the attribute's own placeholder is filled with the true value
and with a wrong one (docs/fashion-vqa.md)."""

RU_COLOURS = {"red": "красный", "green": "зелёный", "blue": "синий", "yellow": "жёлтый", "orange": "оранжевый",
              "purple": "фиолетовый", "black": "чёрный", "white": "белый"}
MEME_WORDS = ("ПОНЕДЕЛЬНИК", "ПЯТНИЦА", "ОТПУСК", "ЗАРПЛАТА", "ДЕДЛАЙН", "КОФЕ", "СЕССИЯ", "ВЫХОДНЫЕ")
"""The meme texts: uppercase Cyrillic words in DejaVu Sans Bold, large enough for tesseract's rus model."""
FONT_BOLD = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")

VIZWIZ_QUESTIONS = {
    "top_colour": ("What color is this shirt?", "What colour is the top?", "Can you tell me the color of the top?"),
    "bottom_colour": ("What color are the pants?", "What colour is the bottom?"),
    "top_type": ("What kind of top is this?", "What am I wearing on top?"),
    "bottom_type": ("What is this below the waist?", "What kind of bottom is this?"),
}


def _split(i: int, n: int, val: float, test: float) -> str:
    n_val, n_test = round(n * val), round(n * test)
    n_train = n - n_val - n_test
    return "train" if i < n_train else "val" if i < n_train + n_val else "test"


def _export(samples: list[tuple[Sample, list[Image.Image]]], fmt: str, out: Path) -> dict:
    """Write the samples as a vlmtune dataset in a temporary directory, then export it with format `fmt`'s writer."""
    with tempfile.TemporaryDirectory(prefix="vlmtune-standin-") as tmp:
        write_dataset(tmp, samples)
        return export_dataset(get_format(fmt), tmp, out)


def fashion_vqa(out: Path, n: int, seed: int, size: int) -> dict:
    """The fashion team's raw material: photos, an attribute table and question templates in en + pt (open
    questions and yes/no statements)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "photos").mkdir()
    rows = []
    for i, (sample, img) in enumerate(fashion(n, seed=seed, size=size)):
        name = f"look-{i:05d}.png"
        img.save(out / "photos" / name)
        rows.append({"image": name, **{a: sample.meta[a] for a in ATTRIBUTES}})
    with open(out / "catalogue.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", *ATTRIBUTES])
        writer.writeheader()
        writer.writerows(rows)
    templates = {
        "image_column": "image",
        "languages": ["en", "pt"],
        "attributes": {a: {"questions": QUESTIONS[a], "yes_no": YES_NO_QUESTIONS[a],
                           "answers": {"pt": {v: PT[v] for v in VALUES[a]}}} for a in ATTRIBUTES},
    }
    (out / "templates.yaml").write_text(yaml.safe_dump(templates, allow_unicode=True, sort_keys=False),
                                        encoding="utf-8")
    return {"photos": n, "table": str(out / "catalogue.csv"), "templates": str(out / "templates.yaml")}


def _unanswerable(img: Image.Image, r: random.Random) -> Image.Image:
    """A VizWiz-style failed photo: heavy blur and underexposure leave nothing to read."""
    blurred = img.filter(ImageFilter.GaussianBlur(radius=img.width / 6))
    factor = r.uniform(0.15, 0.35)
    return blurred.point(lambda v: int(v * factor))


def vizwiz(out: Path, n: int, seed: int, size: int) -> dict:
    """VizWiz-VQA layout with ten noisy human answers per question and unanswerable photos: `n` photos in train
    (80%) and val, then n // 5 test photos whose answers are withheld as VizWiz's are. Each split's images are
    numbered from 0 in its file's order (VizWiz_test_00000000.jpg is the first test question), as VizWiz's are."""
    r = random.Random(seed + 1)
    samples = []
    numbered: Counter = Counter()
    for i, (drawn, img) in enumerate(fashion(n + n // 5, seed=seed, size=size)):
        qtype = r.choice(sorted(VIZWIZ_QUESTIONS))
        question = r.choice(VIZWIZ_QUESTIONS[qtype])
        truth = drawn.meta[qtype]
        others = [v for v in VALUES[qtype] if v != truth]
        if r.random() < 1 / 6:
            img = _unanswerable(img, r)
            k = r.randint(7, 10)
            answers = ["unanswerable"] * k + [r.choice([truth, *others]) for _ in range(10 - k)]
            meta = {"answer_type": "unanswerable", "answerable": 0}
        else:
            k = r.randint(6, 10)
            answers = [truth] * k + [r.choice([*others, "unanswerable"]) for _ in range(10 - k)]
            meta = {"answer_type": "other", "answerable": 1}
        r.shuffle(answers)
        split = "test" if i >= n else "train" if _split(i, n, 0.2, 0.0) == "train" else "val"
        sid = f"VizWiz_{split}_{numbered[split]:08d}"
        numbered[split] += 1
        if split == "test":  # the question alone: no answers, no answer_type, no answerable
            sample = Sample(id=sid, messages=[user(question)], images=[f"images/{sid}.jpg"], split=split)
        else:
            sample = Sample(id=sid, messages=[user(question), assistant(max(answers, key=answers.count))],
                            images=[f"images/{sid}.jpg"], answers=answers, split=split, meta=meta)
        samples.append((sample, [img]))
    return _export(samples, "vizwiz", out)


def _meme(img: Image.Image, word: str) -> Image.Image:
    """The figure under a white band with `word` in black bold capitals (a caption meme)."""
    font = ImageFont.truetype(str(FONT_BOLD), size=max(12, img.width // 9)) if FONT_BOLD.exists() \
        else ImageFont.load_default(size=max(12, img.width // 9))
    band = max(24, img.width // 5)
    canvas = Image.new("RGB", (img.width, img.height + band), "white")
    canvas.paste(img, (0, band))
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = draw.textbbox((0, 0), word, font=font)
    draw.text(((img.width - (x1 - x0)) / 2 - x0, (band - (y1 - y0)) / 2 - y0), word, fill="black", font=font)
    return canvas


def meme_caption(facts: dict, word: str) -> str:
    return f"{RU_COLOURS[facts['top_colour']]} верх, {RU_COLOURS[facts['bottom_colour']]} низ, надпись «{word}»"


def meme_captions_ru(out: Path, n: int, seed: int, size: int) -> dict:
    """COCO captions of Russian caption memes: the caption quotes the word drawn on the image."""
    r = random.Random(seed + 2)
    samples = []
    for i, (drawn, img) in enumerate(fashion(n, seed=seed, size=size)):
        word = r.choice(MEME_WORDS)
        caption = meme_caption(drawn.meta, word)
        sid = f"meme-{i:05d}"
        samples.append((Sample(id=sid, messages=[user("Опиши мем."), assistant(caption)], images=[f"images/{sid}.png"],
                               task="caption", references=[caption], split=_split(i, n, 0.1, 0.1),
                               meta={"image_id": i + 1}),
                        [_meme(img, word)]))
    return _export(samples, "coco", out)


RU_GARMENTS = {"t-shirt": ("футболка", "f"), "sweater": ("свитер", "m"), "tank top": ("майка", "f"),
               "trousers": ("брюки", "pl"), "shorts": ("шорты", "pl"), "skirt": ("юбка", "f")}
"""Russian garment names and their gender (the colour adjective agrees with it)."""
RU_PATTERNS = {"plain": "", "striped": " в полоску", "dotted": " в горошек"}


def _ru_colour(colour: str, gender: str) -> str:
    """красный -> красная (f) / красные (pl); синий -> синяя / синие."""
    m = RU_COLOURS[colour]
    stem, soft = m[:-2], m.endswith("ий")
    return {"m": m, "f": stem + ("яя" if soft else "ая"), "pl": stem + ("ие" if soft else "ые")}[gender]


def flickr30k_captions_ru(facts: dict) -> list[str]:
    """Five Russian captions of one figure, as a translated Flickr30k gives five per photo. The first, the training
    target, is the meme captions' description of the clothes without the quoted word."""
    top, top_g = RU_GARMENTS[facts["top_type"]]
    bottom, bottom_g = RU_GARMENTS[facts["bottom_type"]]
    top_c, bottom_c = _ru_colour(facts["top_colour"], top_g), _ru_colour(facts["bottom_colour"], bottom_g)
    pattern = RU_PATTERNS[facts["top_pattern"]]
    upper, lower = RU_COLOURS[facts["top_colour"]], RU_COLOURS[facts["bottom_colour"]]
    return [f"{upper} верх, {lower} низ",
            f"на человеке {top_c} {top}{pattern} и {bottom_c} {bottom}",
            f"{top_c} {top}{pattern}, {bottom_c} {bottom}",
            f"человек стоит в одежде: {top} и {bottom}",
            f"{upper} верх и {lower} низ на светлом фоне"]


def flickr30k_ru(out: Path, n: int, seed: int, size: int) -> dict:
    """Flickr30k with Russian captions: figures other than the memes' (another seed), no printed text, no split (the
    Flickr30k token file has none: `vlmtune data split` assigns it)."""
    samples = []
    for i, (drawn, img) in enumerate(fashion(n, seed=seed + 1000, size=size)):
        captions = flickr30k_captions_ru(drawn.meta)
        sid = f"{1000000 + i}"
        samples.append((Sample(id=sid, messages=[user("Describe the image."), assistant(captions[0])],
                               images=[f"images/{sid}.jpg"], task="caption", references=captions), [img]))
    return _export(samples, "flickr30k", out)


def fashion_retrieval(out: Path, n: int, seed: int, size: int) -> dict:
    """A shop catalogue as a CC3M-style TSV: each item's photo, its caption and its product page."""
    samples = []
    for i, (drawn, img) in enumerate(fashion(n, seed=seed, size=size)):
        sid = f"item-{i:05d}"
        caption = drawn.meta["caption"]
        samples.append((Sample(id=sid, messages=[user("Describe the image."), assistant(caption)],
                               images=[f"images/photos/{sid}.png"], task="caption", references=[caption],
                               split=_split(i, n, 0.1, 0.2), meta={"item_url": f"https://shop.example/item/{sid}"}),
                        [img]))
    return _export(samples, "cc3m", out)


CHART_QUESTIONS = ("value", "max_label", "min_label", "difference", "sum", "average", "compare", "count", "ratio")


def chartqa(out: Path, n: int, seed: int, size: int) -> dict:
    """ChartQA's layout: one question per drawn chart, the chart's data table as ChartQA's CSV."""
    samples = []
    for i, (drawn, img) in enumerate(WORLDS["charts"](n, seed=seed, size=size, questions=CHART_QUESTIONS)):
        drawn.split = _split(i, n, 0.1, 0.2)
        drawn.meta = {"subset": "augmented", "table": Table.from_text(drawn.meta["table"]).to_csv(),
                      "chart_type": drawn.meta["chart_type"]}
        samples.append((drawn, [img]))
    return _export(samples, "chartqa", out)


JOBS: dict[str, tuple[Callable[[Path, int, int, int], dict], int]] = {
    "fashion-vqa": (fashion_vqa, 64),
    "vizwiz": (vizwiz, 64),
    "meme-captions-ru": (meme_captions_ru, 160),
    "flickr30k-ru": (flickr30k_ru, 160),
    "fashion-retrieval": (fashion_retrieval, 64),
    "chartqa": (chartqa, 192),
}
"""job -> (writer, default image size in pixels)."""


def write_standin(job: str, out: str | Path, n: int, seed: int = 0, size: int | None = None) -> dict:
    """Write `n` stand-in records of `job` into the new directory `out`."""
    if job not in JOBS:
        raise ValueError(f"unknown stand-in job {job!r}; known: {sorted(JOBS)}")
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty (stand-in data is written to a new directory)")
    writer, default_size = JOBS[job]
    return {"job": job, "out": str(out), "n": n, **writer(out, n, seed, size or default_size)}
