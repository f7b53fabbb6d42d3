"""The synthetic video world: short clips of drawn shapes, with questions that one frame cannot answer.

    vlmtune data synth video --out data/video --n 3000 --size 32

Each sample is one clip of `FRAMES` frames (written as a directory of PNGs, `videos/<id>/00.png ...`, read back as
a video at `FPS` frames a second) and one question about time:

    direction       "Which way does the shape move?"          left / right / up / down
    first_appeared  "Which shape appeared first?"             circle / square / triangle
    blink_count     "How many times does the shape flash?"    1 / 2 / 3

Each is built so that the middle frame (index (FRAMES - 1) // 2: what `data.video.max_frames: 1` keeps, the
single-frame baseline of docs/video.md) carries no answer: the moving shape passes through a uniformly drawn point
at that frame whatever its direction; the three shapes have all appeared by then, at frames 0, 1 and 2 in a random
order; the flashing shape's visible runs are drawn uniformly among the patterns with the asked number of runs. So a
model that answers above chance uses more than one frame.

`meta["caption"]` describes the clip (`describe`: where the moving shape starts and ends, the order the shapes
appear in, the frames the flashing shape is seen in); `synth.caption_turn` puts it after each training question
(prompt `CAPTION_PROMPT`), which is what lets the from-scratch built-in model learn the world (docs/video.md).

`meta` holds the ground truth the answer follows from (positions per frame, appearance frames, visibility per
frame), so tests check each answer against the drawing (`direction_of`, `runs`). Deterministic given the seed, and
prefix-stable like the image worlds (data/synthetic.py).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence

from PIL import Image, ImageDraw

from vlmtune.data.sample import Sample, assistant

FRAMES = 6
FPS = 2.0
MIDDLE = (FRAMES - 1) // 2
"""The frame the single-frame baseline sees (`video.evenly(FRAMES, 1)`)."""
SHAPES = ("circle", "square", "triangle")
COLOURS = {"circle": (220, 30, 30), "square": (30, 70, 220), "triangle": (30, 160, 50)}
"""One colour per shape type: a shape is recognised from either."""
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
QUESTIONS: dict[str, tuple[str, ...]] = {
    "direction": ("Which way does the shape move?", "In which direction is the shape moving?"),
    "first_appeared": ("Which shape appeared first?", "Which shape was there first?"),
    "blink_count": ("How many times does the shape flash?", "How many times does the shape appear?"),
}
ANSWER_TYPES = {"direction": "other", "first_appeared": "other", "blink_count": "number"}
COLOUR_NAMES = {"circle": "red", "square": "blue", "triangle": "green"}
CAPTION_PROMPT = "Describe the clip."
"""The prompt of a training clip's description turn (`synth.caption_turn`, see `describe`)."""


def direction_of(positions: list[list[float]]) -> str:
    """The direction of motion from the shape's (x, y) centre in each frame (image y grows downwards)."""
    dx, dy = positions[-1][0] - positions[0][0], positions[-1][1] - positions[0][1]
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def runs(visible: list[bool]) -> int:
    """Maximal runs of consecutive visible frames: how many times the shape flashed."""
    return sum(1 for k, v in enumerate(visible) if v and (k == 0 or not visible[k - 1]))


def describe(qtype: str, answer: str, facts: dict) -> str:
    """A clip's description, in time order (the caption turn of a training sample, `synthetic.with_caption_turn`):
    what moves and where, the order the shapes appear in, the frames the flashing shape is seen in."""
    if qtype == "direction":
        shape, (x0, y0), (x1, y1) = facts["shape"], facts["positions"][0], facts["positions"][-1]
        where = ("the left", "the right") if answer in ("left", "right") else ("the top", "the bottom")
        start, end = (where[0], where[1]) if (x1 - x0) + (y1 - y0) > 0 else (where[1], where[0])
        return f"the {COLOUR_NAMES[shape]} {shape} goes from {start} to {end}: it moves {answer}"
    if qtype == "first_appeared":
        first, second, third = sorted(facts["appear"], key=facts["appear"].get)
        return f"the {first} appears first, then the {second}, then the {third}"
    shape, seen = facts["shape"], [str(k + 1) for k, v in enumerate(facts["visible"]) if v]
    return f"the {COLOUR_NAMES[shape]} {shape} is seen in frames {' '.join(seen)}: {answer} flashes"


PATTERNS = {c: [list(p) for p in itertools.product((False, True), repeat=FRAMES) if runs(list(p)) == c]
            for c in (1, 2, 3)}


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float) -> None:
    box = (round(cx - r), round(cy - r), round(cx + r), round(cy + r))
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[shape])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[shape])
    else:
        draw.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=COLOURS[shape])


def _frame(size: int, items: list[tuple[str, float, float]], r: float) -> Image.Image:
    img = Image.new("RGB", (size, size), (235, 235, 225))
    draw = ImageDraw.Draw(img)
    for shape, cx, cy in items:
        _draw(draw, shape, cx, cy, r)
    return img


def clip(qtype: str, r: random.Random, size: int) -> tuple[list[Image.Image], str, dict]:
    """One clip of a question type: (frames, answer, facts)."""
    rad = size * 0.14
    if qtype == "direction":
        shape, answer = r.choice(SHAPES), r.choice(sorted(DIRECTIONS))
        dx, dy = DIRECTIONS[answer]
        step = size * 0.15  # 0.75 of the frame over the clip: start and end are on opposite thirds
        # the middle frame's centre is drawn from where every direction keeps the centre inside the frame
        reach = step * max(MIDDLE, FRAMES - 1 - MIDDLE)
        mid = (r.uniform(reach, size - reach), r.uniform(reach, size - reach))
        positions = [[mid[0] + dx * step * (k - MIDDLE), mid[1] + dy * step * (k - MIDDLE)] for k in range(FRAMES)]
        frames = [_frame(size, [(shape, x, y)], rad) for x, y in positions]
        return frames, answer, {"shape": shape, "positions": positions}
    if qtype == "first_appeared":
        order = r.sample(SHAPES, 3)  # appear at frames 0, 1, 2 and stay
        slots = r.sample([(size * 0.25, size * 0.3), (size * 0.75, size * 0.3), (size * 0.5, size * 0.72)], 3)
        appear = {shape: k for k, shape in enumerate(order)}
        frames = [_frame(size, [(s, *xy) for s, xy in zip(order, slots, strict=True) if appear[s] <= k], rad)
                  for k in range(FRAMES)]
        return frames, order[0], {"appear": appear}
    count = r.choice((1, 2, 3))
    visible = r.choice(PATTERNS[count])
    shape, xy = r.choice(SHAPES), (r.uniform(rad + 1, size - rad - 1), r.uniform(rad + 1, size - rad - 1))
    frames = [_frame(size, [(shape, *xy)] if v else [], rad) for v in visible]
    return frames, str(count), {"shape": shape, "visible": visible}


def video(n: int, seed: int = 0, size: int = 32, caption_fraction: float = 0.0,
          questions: Sequence[str] | None = None) -> Iterator[tuple[Sample, list[Image.Image]]]:
    """`n` (Sample, frames) pairs; the caller writes the frames as the directory `sample.videos[0]` (a synthetic
    world's signature: `caption_fraction` is accepted for it, and must be 0: clips have no captions)."""
    if caption_fraction:
        raise ValueError("the video world has no captions: caption_fraction must be 0")
    asked = tuple(questions or QUESTIONS)
    unknown = [q for q in asked if q not in QUESTIONS]
    if unknown:
        raise ValueError(f"video: unknown question type(s) {unknown}; known: {list(QUESTIONS)}")
    r = random.Random(seed)
    for i in range(n):
        qtype = r.choice(asked)
        frames, answer, facts = clip(qtype, r, size)
        sid = f"video-{seed}-{i:06d}"
        question = r.choice(QUESTIONS[qtype])
        sample = Sample(
            id=sid, videos=[{"path": f"videos/{sid}", "fps": FPS}],
            messages=[{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]},
                      assistant(answer)],
            answers=[answer], source="video",
            meta={"question_type": qtype, "answer_type": ANSWER_TYPES[qtype], "frames": FRAMES, **facts,
                  "caption": describe(qtype, answer, facts)},
        )
        yield sample, frames
