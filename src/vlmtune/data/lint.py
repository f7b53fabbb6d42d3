"""Pre-flight checks of a dataset against a model, before any training step is spent.

    vlmtune data check --model runs/my_run --image-size 336x336 --image-size 1280x960

`image_token_report` says how many sequence positions one image of each size takes in a model's family (LLaVA-1.5: a
fixed 576 whatever the size; Qwen2-VL: one per 28x28 pixels after resizing; Idefics3: per tile), so `max_length` can
be budgeted before a sample is rejected as too long.
"""

from __future__ import annotations

from pathlib import Path


def load_processor(model: str | Path):
    """(family, processor) of a run, checkpoint or model directory, without loading any weights."""
    from transformers import AutoProcessor

    from vlmtune.models import family_of, get_family
    from vlmtune.train.checkpoint import resolve_model_dir

    model_dir = resolve_model_dir(model)
    return get_family(family_of(model_dir)), AutoProcessor.from_pretrained(model_dir)


def parse_size(text: str) -> tuple[int, int]:
    """"640x480" -> (640, 480)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"image size {text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"image size {text!r}: width and height must be positive")
    return w, h


def image_token_report(model: str | Path, sizes: list[tuple[int, int]]) -> dict:
    """Image tokens per image of each size for `model`'s family and processor settings."""
    family, processor = load_processor(model)
    return {"model": str(model), "family": family.name,
            "image_tokens": {f"{w}x{h}": family.image_tokens(processor, w, h) for w, h in sizes}}
