"""Synthetic worlds: drawn images with known answers, for training and testing tiny VLMs from scratch on CPU.

Each generator yields `(Sample, image)` pairs: one new RGB image per sample (so splits never share images) and one
question with its answer (or, with probability `caption_fraction`, a caption request answered by a template
caption). The caller saves the image at `sample.images[0]` relative to the dataset directory.

The drawings are meant to be learnable by a ~1.5M-parameter ViT + LM at 64x64: the answer-bearing features are big
flat regions with distinct silhouettes, colours come from 8 well-separated palette colours, and the variation is
modest (position +-4 px, scale +-10%, a light grey/beige background tone, mild pixel noise). Everything is
deterministic given the seed (`random.Random(seed)` for choices, `numpy.random.default_rng(seed)` for noise), and
prefix-stable: the first k samples do not depend on `n`.

Every sample's `meta` holds `question_type`, `answer_type` and the scene's ground truth (garment facts and the
figure placement for `fashion`, the shapes left to right with their boxes for `shapes`), so tests and error analyses
can check answers against pixels; `figure_boxes` gives the regions a figure is drawn from.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

from vlmtune.data.charts import charts  # matplotlib charts with their data tables (DePlot-style chart QA)
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.synthetic_video import video  # clips of moving shapes, questions about time

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 20),
    "orange": (245, 130, 20),
    "purple": (140, 50, 180),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)

OUTLINE = (55, 55, 55)
SKIN = (226, 176, 140)
HAIR = (90, 55, 35)
SHOE = (70, 60, 55)
NOISE = 6
"""Pixel noise is uniform in [-NOISE, NOISE], added to the whole image after drawing."""

TOP_TYPES = ("t-shirt", "sweater", "tank top")
BOTTOM_TYPES = ("trousers", "shorts", "skirt")
PATTERNS = ("plain", "striped", "dotted")
SHAPES = ("circle", "square", "triangle")

CAPTION_PROMPTS = ("Describe the image.", "Write a caption.", "Write a short caption for the image.")

FASHION_QUESTIONS: dict[str, tuple[str, ...]] = {
    "top_colour": ("What colour is the top?", "What colour is the person's top?", "What is the colour of the top?"),
    "bottom_colour": (
        "What colour is the bottom garment?",
        "What colour is the lower garment?",
        "What colour is the person wearing below the waist?",
    ),
    "top_type": (
        "What is the person wearing on top?",
        "What kind of top is the person wearing?",
        "What type of top is it?",
    ),
    "bottom_type": (
        "What is the person wearing on the bottom?",
        "What kind of bottom garment is the person wearing?",
        "What is the person wearing below the waist?",
    ),
    "top_pattern": (
        "What pattern does the top have?",
        "What is the pattern on the top?",
        "Is the top plain, striped or dotted?",
    ),
}

SHAPES_QUESTIONS: dict[str, tuple[str, ...]] = {
    "colour_of_shape": ("What colour is the {shape}?", "What is the colour of the {shape}?"),
    "count": ("How many shapes are there?", "How many shapes are in the image?", "Count the shapes."),
    "leftmost": ("What shape is on the left?", "Which shape is leftmost?", "What is the leftmost shape?"),
    "exists_colour": ("Is there a {colour} shape?", "Is any shape {colour}?"),
}

ANSWER_TYPES = {
    "top_colour": "other",
    "bottom_colour": "other",
    "top_type": "other",
    "bottom_type": "other",
    "top_pattern": "other",
    "colour_of_shape": "other",
    "count": "number",
    "leftmost": "other",
    "exists_colour": "yes/no",
    "caption": "other",
}

Box = tuple[int, int, int, int]
"""(x0, y0, x1, y1), inclusive pixel coordinates as PIL's draw functions take them."""


# ----------------------------------------------------------------------------------------------- shared helpers


def _background(r: random.Random, size: int) -> Image.Image:
    """A flat light grey or beige tone (the noise comes later, over the whole image)."""
    base = r.uniform(175.0, 215.0)
    warmth = r.uniform(0.0, 20.0) if r.random() < 0.5 else 0.0
    tone = (round(base + warmth * 0.4), round(base), round(base - warmth))
    return Image.new("RGB", (size, size), tone)


def _add_noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    size = img.size
    arr = np.asarray(img, dtype=np.int16)
    noise = rng.integers(-NOISE, NOISE + 1, size=(size[1], size[0], 1), dtype=np.int16)
    return Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8), "RGB")


def _question_types(world: str, known: dict[str, tuple[str, ...]], asked: Sequence[str] | None) -> tuple[str, ...]:
    """The question types a generator draws from: all of the world's, or the `asked` subset (checked)."""
    if not asked:
        return tuple(known)
    unknown = [q for q in asked if q not in known]
    if unknown:
        raise ValueError(f"{world}: unknown question type(s) {unknown}; known: {list(known)}")
    return tuple(asked)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _sample(
    world: str,
    seed: int,
    i: int,
    question: str,
    answer: str,
    question_type: str,
    facts: dict,
    caption_text: str,
) -> Sample:
    sid = f"{world}-{seed}-{i:06d}"
    caption = question_type == "caption"
    return Sample(
        id=sid,
        messages=[user(question), assistant(answer)],
        images=[f"images/{sid}.png"],
        task="caption" if caption else "vqa",
        answers=None if caption else [answer],
        references=[answer] if caption else None,
        source=world,
        meta={"question_type": question_type, "answer_type": ANSWER_TYPES[question_type], **facts,
              "caption": caption_text},
    )


def with_caption_turn(sample: Sample, prompt: str) -> Sample:
    """A question sample followed by a caption turn: (image, question) -> answer, then prompt -> the scene's caption.

    Training on these supervises every attribute of the image in every sample (the caption names them all) while
    keeping the question first, as the held-out questions ask it; the result is a captioning sample (the caption is
    the last turn and the only reference), so evaluating it stays consistent with its target.
    """
    if sample.task != "vqa":
        return sample
    caption = sample.meta["caption"]
    return Sample(
        id=sample.id,
        messages=[*sample.messages, user(prompt, n_images=0), assistant(caption)],
        images=list(sample.images),
        videos=list(sample.videos),
        task="caption",
        references=[caption],
        source=sample.source,
        split=sample.split,
        meta={**sample.meta, "question_type": "caption", "answer_type": ANSWER_TYPES["caption"],
              "first_question_type": sample.meta["question_type"]},
    )


# ---------------------------------------------------------------------------------------------------- fashion

# The figure in base units: centred on (0, 0), 50 units tall (head top at -25, soles at +25), drawn at
# `scale * size / 64` pixels per unit. Boxes are (x0, y0, x1, y1).
_FIGURE: dict[str, tuple[float, float, float, float]] = {
    "head": (-5.0, -25.0, 5.0, -15.0),
    "neck": (-1.5, -16.0, 1.5, -13.0),
    "torso": (-9.0, -13.0, 9.0, 5.0),
    "left_arm": (-16.0, -13.0, -10.0, 4.0),
    "right_arm": (10.0, -13.0, 16.0, 4.0),
    # Sleeves are wider than the arm, so a garment's type changes its silhouette, not only a few arm pixels:
    # t-shirt sleeves flare out short, sweater sleeves run to the wrist, a tank top leaves the arms bare.
    "left_short_sleeve": (-19.0, -13.0, -9.0, -5.0),
    "right_short_sleeve": (9.0, -13.0, 19.0, -5.0),
    "left_long_sleeve": (-17.0, -13.0, -9.0, 2.0),
    "right_long_sleeve": (9.0, -13.0, 17.0, 2.0),
    "hips": (-9.0, 5.0, 9.0, 10.0),
    "left_leg": (-8.5, 5.0, -1.0, 23.0),
    "right_leg": (1.0, 5.0, 8.5, 23.0),
    "left_shorts_leg": (-9.5, 5.0, -0.5, 12.0),
    "right_shorts_leg": (0.5, 5.0, 9.5, 12.0),
    "skirt": (-15.0, 5.0, 15.0, 17.0),
    "left_shoe": (-9.5, 22.0, -1.0, 25.0),
    "right_shoe": (1.0, 22.0, 9.5, 25.0),
}
_SKIRT_TOP_HALF_WIDTH = 9.0


def figure_boxes(cx: int, cy: int, scale: float, size: int = 64) -> dict[str, Box]:
    """The pixel boxes a fashion figure centred at (cx, cy) is drawn from (see `_FIGURE` for the region names).

    `torso` is the top's body, `hips` lies inside every bottom garment; `left_arm`'s upper part is sleeve for a
    t-shirt or sweater and skin for a tank top, its lower part is sleeve only for a sweater; the legs below
    `left_shorts_leg` are skin for shorts and skirts; the skirt's trapezoid spans `skirt` at its hem.
    """
    k = scale * size / 64.0
    return {
        name: (round(cx + x0 * k), round(cy + y0 * k), round(cx + x1 * k), round(cy + y1 * k))
        for name, (x0, y0, x1, y1) in _FIGURE.items()
    }


def _pattern_colour(colour: str) -> tuple[int, int, int]:
    """Black stripes/dots on light garments, white on dark ones."""
    rgb = PALETTE[colour]
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return PALETTE["black"] if luminance > 140 else PALETTE["white"]


def _draw_figure(
    draw: ImageDraw.ImageDraw,
    boxes: dict[str, Box],
    k: float,
    top_type: str,
    top_colour: str,
    pattern: str,
    bottom_type: str,
    bottom_colour: str,
) -> None:
    top_rgb, bottom_rgb = PALETTE[top_colour], PALETTE[bottom_colour]

    # Legs (bare skin wherever the bottom garment does not cover them) and shoes.
    for side in ("left", "right"):
        draw.rectangle(boxes[f"{side}_leg"], fill=SKIN, outline=OUTLINE)
    # Bottom garment.
    if bottom_type == "trousers":
        draw.rectangle(boxes["hips"], fill=bottom_rgb, outline=OUTLINE)
        for side in ("left", "right"):
            draw.rectangle(boxes[f"{side}_leg"], fill=bottom_rgb, outline=OUTLINE)
    elif bottom_type == "shorts":
        draw.rectangle(boxes["hips"], fill=bottom_rgb, outline=OUTLINE)
        for side in ("left", "right"):
            draw.rectangle(boxes[f"{side}_shorts_leg"], fill=bottom_rgb, outline=OUTLINE)
    else:  # skirt: a trapezoid from the waist to the hem
        x0, y0, x1, y1 = boxes["skirt"]
        cx = (x0 + x1) / 2
        half = _SKIRT_TOP_HALF_WIDTH * k
        draw.polygon([(cx - half, y0), (cx + half, y0), (x1, y1), (x0, y1)], fill=bottom_rgb, outline=OUTLINE)
    for side in ("left", "right"):
        draw.rectangle(boxes[f"{side}_shoe"], fill=SHOE)

    # Arms (skin), then the top: torso plus sleeves.
    for side in ("left", "right"):
        draw.rectangle(boxes[f"{side}_arm"], fill=SKIN, outline=OUTLINE)
    draw.rectangle(boxes["torso"], fill=top_rgb, outline=OUTLINE)
    if top_type != "tank top":
        sleeve = "short_sleeve" if top_type == "t-shirt" else "long_sleeve"
        for side in ("left", "right"):
            draw.rectangle(boxes[f"{side}_{sleeve}"], fill=top_rgb, outline=OUTLINE)

    # Pattern on the torso, inside its outline.
    x0, y0, x1, y1 = boxes["torso"]
    ink = _pattern_colour(top_colour)
    if pattern == "striped":
        period, thickness = max(4, round(6 * k)), max(2, round(3 * k))
        y = y0 + 2
        while y + thickness - 1 <= y1 - 1:
            draw.rectangle((x0 + 1, y, x1 - 1, y + thickness - 1), fill=ink)
            y += period
    elif pattern == "dotted":
        # Two columns by three rows of round dots, 4 px across at 64 px, at least ~2 px apart.
        d = max(3, round(4 * k))
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        for dx in (-4.5, 4.5):
            for dy in (-6.0, 0.0, 6.0):
                px, py = round(mx + dx * k) - d // 2, round(my + dy * k) - d // 2
                draw.ellipse((px, py, px + d - 1, py + d - 1), fill=ink)

    # Neck and head with a little hair.
    draw.rectangle(boxes["neck"], fill=SKIN)
    draw.ellipse(boxes["head"], fill=SKIN, outline=OUTLINE)
    hx0, hy0, hx1, hy1 = boxes["head"]
    draw.chord((hx0, hy0, hx1, hy1), start=200, end=340, fill=HAIR, outline=OUTLINE)


def _fashion_caption(top_type: str, top_colour: str, pattern: str, bottom_type: str, bottom_colour: str) -> str:
    top = _article(f"{pattern} {top_colour} {top_type}" if pattern == "plain" else f"{top_colour} {pattern} {top_type}")
    bottom = _article(f"{bottom_colour} skirt") if bottom_type == "skirt" else f"{bottom_colour} {bottom_type}"
    return f"a person wearing {top} and {bottom}"


def fashion(
    n: int, seed: int = 0, size: int = 64, caption_fraction: float = 0.0, questions: Sequence[str] | None = None
) -> Iterator[tuple[Sample, Image.Image]]:
    """A standing figure in a top (t-shirt/sweater/tank top; plain/striped/dotted) and a bottom (trousers/shorts/skirt).

    Every attribute is drawn uniformly (the bottom's colour uniformly among the 7 colours other than the top's,
    which keeps its marginal uniform too), and the question type uniformly, so each question type's answers are
    uniform over their values.
    """
    r = random.Random(seed)
    rng = np.random.default_rng(seed)
    qtypes = _question_types("fashion", FASHION_QUESTIONS, questions)
    for i in range(n):
        top_type, bottom_type = r.choice(TOP_TYPES), r.choice(BOTTOM_TYPES)
        top_colour = r.choice(COLOURS)
        bottom_colour = r.choice([c for c in COLOURS if c != top_colour])
        pattern = r.choice(PATTERNS)
        cx = round(size / 2 + r.uniform(-4.0, 4.0) * size / 64)
        cy = round(size / 2 + r.uniform(-3.0, 3.0) * size / 64)
        scale = round(r.uniform(0.9, 1.1), 3)

        img = _background(r, size)
        boxes = figure_boxes(cx, cy, scale, size)
        _draw_figure(
            ImageDraw.Draw(img), boxes, scale * size / 64, top_type, top_colour, pattern, bottom_type, bottom_colour
        )
        img = _add_noise(img, rng)

        facts = {
            "top_type": top_type,
            "top_colour": top_colour,
            "top_pattern": pattern,
            "bottom_type": bottom_type,
            "bottom_colour": bottom_colour,
            "figure": {"cx": cx, "cy": cy, "scale": scale},
        }
        caption = _fashion_caption(top_type, top_colour, pattern, bottom_type, bottom_colour)
        if r.random() < caption_fraction:
            qtype, question, answer = "caption", r.choice(CAPTION_PROMPTS), caption
        else:
            qtype = r.choice(qtypes)
            question, answer = r.choice(FASHION_QUESTIONS[qtype]), facts[qtype]
        yield _sample("fashion", seed, i, question, answer, qtype, facts, caption), img


# ----------------------------------------------------------------------------------------------------- shapes


def _shape_layout(r: random.Random, n: int, size: int) -> list[Box]:
    """n square boxes, left to right, separated horizontally by a gap (so they never overlap)."""
    k = size / 64
    lo, hi = 14.0 * k, (20.0 if n == 2 else 17.0) * k
    widths = [round(r.uniform(lo, hi)) for _ in range(n)]
    margin, gap = 2 * k, 3 * k
    slack = max(0.0, size - 2 * margin - sum(widths) - (n - 1) * gap)
    cuts = sorted(r.random() for _ in range(n))
    shares = [b - a for a, b in zip([0.0, *cuts], cuts, strict=False)]  # n parts of the slack before each shape
    boxes: list[Box] = []
    x = margin
    for w, share in zip(widths, shares, strict=True):
        x += share * slack
        x0 = round(x)
        y0 = round(r.uniform(margin, size - margin - w))
        boxes.append((x0, y0, x0 + w - 1, y0 + w - 1))
        x = x0 + w + gap
    return boxes


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Box, rgb: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse(box, fill=rgb, outline=OUTLINE)
    elif shape == "square":
        draw.rectangle(box, fill=rgb, outline=OUTLINE)
    else:
        x0, y0, x1, y1 = box
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=rgb, outline=OUTLINE)


def _shapes_caption(items: list[dict]) -> str:
    parts = [_article(f"{it['colour']} {it['shape']}") for it in items]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def shapes(
    n: int, seed: int = 0, size: int = 64, caption_fraction: float = 0.0, questions: Sequence[str] | None = None
) -> Iterator[tuple[Sample, Image.Image]]:
    """Scenes of 2 or 3 non-overlapping shapes (circle/square/triangle) in distinct palette colours.

    The question is chosen first and the scene built to balance its answer: `colour_of_shape` puts exactly one
    shape of the asked type in the scene, `exists_colour` is yes half the time, `count` and `leftmost` follow from
    uniformly drawn counts and shape types.
    """
    r = random.Random(seed)
    rng = np.random.default_rng(seed)
    qtypes = _question_types("shapes", SHAPES_QUESTIONS, questions)
    for i in range(n):
        caption = r.random() < caption_fraction
        qtype = "caption" if caption else r.choice(qtypes)
        count = r.choice((2, 3))
        asked_shape = asked_colour = None
        if qtype == "colour_of_shape":
            asked_shape = r.choice(SHAPES)
            others = [s for s in SHAPES if s != asked_shape]
            kinds = [r.choice(others) for _ in range(count - 1)]
            kinds.insert(r.randrange(count), asked_shape)
        else:
            kinds = [r.choice(SHAPES) for _ in range(count)]
        if qtype == "exists_colour":
            asked_colour = r.choice(COLOURS)
            present = r.random() < 0.5
            pool = [c for c in COLOURS if c != asked_colour]
            colours = r.sample(pool, count - 1 if present else count)
            if present:
                colours.insert(r.randrange(count), asked_colour)
        else:
            colours = r.sample(COLOURS, count)

        img = _background(r, size)
        draw = ImageDraw.Draw(img)
        items = []
        for kind, colour, box in zip(kinds, colours, _shape_layout(r, count, size), strict=True):
            _draw_shape(draw, kind, box, PALETTE[colour])
            items.append({"shape": kind, "colour": colour, "box": list(box)})
        img = _add_noise(img, rng)

        caption = _shapes_caption(items)
        if qtype == "caption":
            question, answer = r.choice(CAPTION_PROMPTS), caption
        elif qtype == "colour_of_shape":
            question = r.choice(SHAPES_QUESTIONS[qtype]).format(shape=asked_shape)
            answer = next(it["colour"] for it in items if it["shape"] == asked_shape)
        elif qtype == "count":
            question, answer = r.choice(SHAPES_QUESTIONS[qtype]), str(count)
        elif qtype == "leftmost":
            question, answer = r.choice(SHAPES_QUESTIONS[qtype]), items[0]["shape"]
        else:
            question = r.choice(SHAPES_QUESTIONS[qtype]).format(colour=asked_colour)
            answer = "yes" if asked_colour in colours else "no"
        yield _sample("shapes", seed, i, question, answer, qtype, {"shapes": items}, caption), img


WORLDS: dict[str, Callable[..., Iterator[tuple[Sample, Image.Image]]]] = {
    "fashion": fashion, "shapes": shapes, "charts": charts, "video": video}  # video: (Sample, frames) pairs
