"""The synthetic worlds: deterministic, valid Samples, answers that are true of the pixels, balanced answers."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import numpy as np
import pytest

from vlmtune.data.sample import Sample
from vlmtune.data.synthetic import (
    BOTTOM_TYPES,
    COLOURS,
    PALETTE,
    PATTERNS,
    SHAPES,
    TOP_TYPES,
    WORLDS,
    fashion,
    figure_boxes,
    shapes,
)

VQA_WORLDS = ("fashion", "shapes")
"""The worlds of VQA questions and captions checked here; `charts` (chart_to_table / chartqa samples, slow to draw)
has its own tests in tests/chart/."""
TOL = 10  # per channel: the drawing is flat, the pixel noise is at most +-6
SKIN = (226, 176, 140)


def near(pixel, rgb, tol: int = TOL) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, dtype=int) - np.asarray(rgb, dtype=int)) <= tol))


def point(box, fx: float = 0.5, fy: float = 0.5) -> tuple[int, int]:
    x0, y0, x1, y1 = box
    return round(x0 + fx * (x1 - x0)), round(y0 + fy * (y1 - y0))


def at(arr: np.ndarray, xy: tuple[int, int]) -> np.ndarray:
    return arr[xy[1], xy[0]]


# ----------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("world", VQA_WORLDS)
def test_same_seed_same_samples_and_pixels(world):
    gen = WORLDS[world]
    a = list(gen(40, seed=3, caption_fraction=0.3))
    b = list(gen(40, seed=3, caption_fraction=0.3))
    assert [s for s, _ in a] == [s for s, _ in b]
    assert [img.tobytes() for _, img in a] == [img.tobytes() for _, img in b]


@pytest.mark.parametrize("world", VQA_WORLDS)
def test_different_seed_different_images(world):
    gen = WORLDS[world]
    a = [img.tobytes() for _, img in gen(20, seed=1)]
    b = [img.tobytes() for _, img in gen(20, seed=2)]
    assert all(x != y for x, y in zip(a, b, strict=True))
    assert len(set(a)) == len(a)  # no two images of one run are the same either


@pytest.mark.parametrize("world", VQA_WORLDS)
def test_prefix_stable_and_independent_of_global_rng(world):
    gen = WORLDS[world]
    random.seed(1)
    np.random.seed(1)
    long = list(gen(30, seed=7))
    random.seed(2)
    np.random.seed(2)
    short = list(gen(10, seed=7))
    assert [s for s, _ in short] == [s for s, _ in long[:10]]
    assert [i.tobytes() for _, i in short] == [i.tobytes() for _, i in long[:10]]


# ------------------------------------------------------------------------------------------------- validity


@pytest.mark.parametrize("world", VQA_WORLDS)
@pytest.mark.parametrize("size", [32, 64, 96])
def test_samples_are_valid(world, size):
    items = list(WORLDS[world](150, seed=0, size=size, caption_fraction=0.3))
    assert len(items) == 150
    ids = [s.id for s, _ in items]
    assert len(set(ids)) == len(ids)
    for i, (s, img) in enumerate(items):
        assert isinstance(s, Sample)
        assert s.id == f"{world}-0-{i:06d}"
        assert s.images == [f"images/{s.id}.png"]
        assert s.source == world
        # Round-trips through JSON and re-validates (image slots vs images).
        assert Sample.from_json(json.loads(json.dumps(s.to_json()))) == s
        assert [m["role"] for m in s.messages] == ["user", "assistant"]
        assert img.mode == "RGB" and img.size == (size, size)
        answer = s.target
        assert answer and answer == answer.strip().lower() and not re.search(r"[.!?,;:]$", answer)
        assert s.meta["answer_type"] in ("other", "number", "yes/no")
        if s.task == "caption":
            assert s.meta["question_type"] == "caption" and s.references == [answer] and s.answers is None
        else:
            assert s.task == "vqa" and s.answers == [answer] and s.references is None
            assert s.meta["question_type"] != "caption"


def test_zero_caption_fraction_means_no_captions():
    for world in VQA_WORLDS:
        assert all(s.task == "vqa" for s, _ in WORLDS[world](300, seed=0))


# ------------------------------------------------------------------------------------- answers are true: fashion


@pytest.mark.parametrize("size", [64, 96])
def test_fashion_answers_match_the_pixels(size):
    seen = Counter()
    for s, img in fashion(400, seed=11, size=size, caption_fraction=0.2):
        m = s.meta
        arr = np.asarray(img)
        fig = m["figure"]
        boxes = figure_boxes(fig["cx"], fig["cy"], fig["scale"], size)
        top, bottom = PALETTE[m["top_colour"]], PALETTE[m["bottom_colour"]]
        assert m["top_colour"] != m["bottom_colour"]

        # The answer is the ground-truth fact the question asks about.
        if s.task == "vqa":
            assert s.target == m[m["question_type"]]
        else:
            cap = s.target
            assert cap.startswith("a person wearing ")
            for fact in ("top_colour", "top_type", "top_pattern", "bottom_type", "bottom_colour"):
                assert m[fact] in cap

        # Top colour: the torso's centre (for plain tops); the whole torso interior is that colour.
        x0, y0, x1, y1 = boxes["torso"]
        interior = arr[y0 + 1 : y1, x0 + 1 : x1].astype(int)
        far = np.abs(interior - np.asarray(top)).max(axis=2) > 40
        if m["top_pattern"] == "plain":
            assert near(at(arr, point(boxes["torso"])), top), (s.id, at(arr, point(boxes["torso"])), top)
            assert not far.any(), s.id
        elif m["top_pattern"] == "striped":
            assert far.all(axis=1).any(), s.id  # at least one full-width stripe
            assert 0.2 < far.mean() < 0.7, s.id
        else:
            assert not far.all(axis=1).any(), s.id  # dots, not stripes
            assert 0.08 < far.mean() < 0.5, s.id
            assert (~far).mean() > 0.5

        # Bottom colour: the hips (inside every bottom garment).
        assert near(at(arr, point(boxes["left_shorts_leg"])), bottom), s.id

        # Top type: upper arm is sleeve unless a tank top, lower arm is sleeve only for a sweater.
        upper = at(arr, point(boxes["left_short_sleeve"]))
        lower = at(arr, point(boxes["left_arm"], fy=0.62))
        if m["top_type"] == "tank top":
            assert near(upper, SKIN) and near(lower, SKIN), s.id
        elif m["top_type"] == "t-shirt":
            assert near(upper, top) and near(lower, SKIN), s.id
        else:
            assert near(upper, top) and near(lower, top), s.id

        # Bottom type: lower leg is covered only by trousers; the skirt's hem flares out past the legs.
        shin = at(arr, point(boxes["left_leg"], fy=0.85))
        sx0, _, _, sy1 = boxes["skirt"]
        hem = at(arr, (sx0 + 3, sy1 - 2))
        if m["bottom_type"] == "trousers":
            assert near(shin, bottom) and not near(hem, bottom), s.id
        elif m["bottom_type"] == "shorts":
            assert near(shin, SKIN) and not near(hem, bottom), s.id
        else:
            assert near(shin, SKIN) and near(hem, bottom), s.id
        seen[m["top_type"], m["bottom_type"], m["top_pattern"]] += 1
    assert len(seen) == len(TOP_TYPES) * len(BOTTOM_TYPES) * len(PATTERNS)  # every combination was checked


def test_fashion_figure_fits_in_the_image():
    for size in (32, 64, 96):
        for s, _ in fashion(300, seed=5, size=size):
            fig = s.meta["figure"]
            for x0, y0, x1, y1 in figure_boxes(fig["cx"], fig["cy"], fig["scale"], size).values():
                assert 0 <= x0 <= x1 < size and 0 <= y0 <= y1 < size, (s.id, size)


# -------------------------------------------------------------------------------------- answers are true: shapes


@pytest.mark.parametrize("size", [64, 96])
def test_shapes_answers_match_the_pixels(size):
    for s, img in shapes(400, seed=13, size=size, caption_fraction=0.2):
        arr = np.asarray(img)
        items = s.meta["shapes"]
        assert len(items) in (2, 3)
        assert len({it["colour"] for it in items}) == len(items)
        prev_right = -1
        for it in items:
            x0, y0, x1, y1 = it["box"]
            assert 0 <= x0 and x1 < size and 0 <= y0 and y1 < size
            assert x1 - x0 + 1 >= 14 * size / 64 - 1 and y1 - y0 + 1 >= 14 * size / 64 - 1
            assert x0 > prev_right  # left to right, horizontally disjoint (so never overlapping)
            prev_right = x1
            # Every shape (so in particular the leftmost) has its colour at its centre.
            assert near(at(arr, point(it["box"])), PALETTE[it["colour"]]), (s.id, it)

        qtype, answer = s.meta["question_type"], s.target
        if qtype == "caption":
            expected = [f"{it['colour']} {it['shape']}" for it in items]
            positions = [answer.index(e) for e in expected]
            assert positions == sorted(positions), answer
        elif qtype == "count":
            assert answer == str(len(items)) and s.meta["answer_type"] == "number"
        elif qtype == "leftmost":
            assert answer == items[0]["shape"]
        elif qtype == "colour_of_shape":
            (asked,) = [sh for sh in SHAPES if sh in s.question]
            matching = [it for it in items if it["shape"] == asked]
            assert len(matching) == 1 and answer == matching[0]["colour"]
        else:
            assert qtype == "exists_colour" and s.meta["answer_type"] == "yes/no"
            (asked,) = [c for c in COLOURS if re.search(rf"\b{c}\b", s.question)]
            assert answer == ("yes" if any(it["colour"] == asked for it in items) else "no")


# ------------------------------------------------------------------------------------------------------ balance


EXPECTED_VALUES = {
    "fashion": {
        "top_colour": set(COLOURS),
        "bottom_colour": set(COLOURS),
        "top_type": set(TOP_TYPES),
        "bottom_type": set(BOTTOM_TYPES),
        "top_pattern": set(PATTERNS),
    },
    "shapes": {
        "colour_of_shape": set(COLOURS),
        "count": {"2", "3"},
        "leftmost": set(SHAPES),
        "exists_colour": {"yes", "no"},
    },
}


@pytest.mark.parametrize("world", VQA_WORLDS)
def test_answers_are_balanced(world):
    n = 2000
    by_type: dict[str, Counter] = {}
    for s, _ in WORLDS[world](n, seed=21):
        by_type.setdefault(s.meta["question_type"], Counter())[s.target] += 1
    expected = EXPECTED_VALUES[world]
    assert set(by_type) == set(expected)
    for qtype, counts in by_type.items():
        total = sum(counts.values())
        assert 0.6 / len(expected) < total / n < 1.4 / len(expected), (qtype, total)
        assert set(counts) == expected[qtype], (qtype, counts)
        for value, c in counts.items():
            share, uniform = c / total, 1 / len(expected[qtype])
            assert 0.5 * uniform < share < 1.5 * uniform, (qtype, value, counts)


@pytest.mark.parametrize("world", VQA_WORLDS)
def test_caption_fraction_is_respected(world):
    n = 2000
    tasks = Counter(s.task for s, _ in WORLDS[world](n, seed=0, caption_fraction=0.25))
    assert 0.2 < tasks["caption"] / n < 0.3
    assert all(s.task == "caption" for s, _ in WORLDS[world](50, seed=4, caption_fraction=1.0))


@pytest.mark.parametrize("world", VQA_WORLDS)
def test_caption_turn_follows_each_train_question_and_leaves_val_and_test_alone(tmp_path, world):
    import dataclasses

    from vlmtune.data.dataset import synthesize
    from vlmtune.data.sample import message_text
    from vlmtune.data.store import read_samples

    synthesize(tmp_path, world, 40, seed=2, size=32, caption_turn=True)
    plain = {s.id: s for s, _ in WORLDS[world](40, seed=2, size=32)}
    samples, _ = read_samples(tmp_path)
    assert {s.split for s in samples} == {"train", "val", "test"}
    for s in samples:
        question = plain[s.id]
        if s.split != "train":
            assert s == dataclasses.replace(question, split=s.split)  # scored on the single question, as drawn
            continue
        assert s.messages[:2] == question.messages  # the question stays first, with the image
        assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant"]
        assert s.messages[2]["content"] == [{"type": "text", "text": s.messages[2]["content"][0]["text"]}]  # no image
        assert message_text(s.messages[3]) == question.meta["caption"] == s.target
        assert (s.task, s.references, s.answers) == ("caption", [question.meta["caption"]], None)
        assert s.meta["first_question_type"] == question.meta["question_type"]
    # the caption names every fact the questions ask about
    for s in samples:
        if world == "fashion":
            facts = [s.meta[k] for k in ("top_type", "top_colour", "top_pattern", "bottom_type", "bottom_colour")]
            facts = [f for f in facts if f != "plain"] + (["plain"] if s.meta["top_pattern"] == "plain" else [])
        else:
            facts = [v for it in s.meta["shapes"] for v in (it["shape"], it["colour"])]
        assert all(f in s.meta["caption"] for f in facts), (s.meta["caption"], facts)
