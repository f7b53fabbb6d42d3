"""`data.resize.resized_size` / `check_image_shape`: the size a model's image processor makes of an image, computed
from its settings without running it, equals what the processor really makes, for every family's processor."""

from __future__ import annotations

import pytest
from PIL import Image

from vlmtune.data.images import ImageError, check_image_shape
from vlmtune.data.resize import resized_size

SIZES = [(40, 30), (30, 40), (1, 60), (60, 1), (7, 300), (333, 17), (1000, 999), (64, 64), (5, 5)]


def _largest_made(image_processor, width: int, height: int, **options) -> tuple[int, int]:
    """(width, height) of the largest image the processor's resize (and LLaVA's pad-to-square) returned."""
    seen = []
    for name in ("resize", "pad_to_square"):
        method = getattr(image_processor, name, None)
        if method is not None:
            def record(*args, _method=method, **kwargs):
                out = _method(*args, **kwargs)
                seen.append(tuple(out.shape[-2:]))
                return out

            setattr(image_processor, name, record)
    try:
        image_processor([Image.new("RGB", (width, height))], return_tensors="np", **options)
    finally:
        for name in ("resize", "pad_to_square"):
            image_processor.__dict__.pop(name, None)
    h, w = max(seen, key=lambda hw: hw[0] * hw[1])
    return w, h


@pytest.mark.parametrize("family", ["blip2", "florence2", "git", "gemma3", "idefics3", "llava", "paligemma",
                                    "qwen2_vl", "smolvlm"])
def test_resized_size_is_what_the_processor_makes(family):
    from vlmtune.models import FAMILIES

    image_processor = FAMILIES[family].tiny().processor.image_processor
    for width, height in SIZES:
        assert resized_size(width, height, image_processor) == _largest_made(image_processor, width, height), \
            (family, width, height)


def test_llava_padding_to_a_square_is_counted():
    from vlmtune.models import FAMILIES

    image_processor = FAMILIES["llava"].tiny().processor.image_processor
    image_processor.do_pad = True  # LLaVA-1.5's own preprocessing: pad to a square, then resize
    for width, height in SIZES:
        assert resized_size(width, height, image_processor) == _largest_made(image_processor, width, height)
    assert resized_size(1, 6000, image_processor) == (6000, 6000)


def test_pix2struct_and_the_tiled_processors():
    from vlmtune.models import FAMILIES

    pix2struct = FAMILIES["pix2struct"].tiny().processor.image_processor
    for width, height in SIZES:  # the patches it keeps: as many as fit max_patches
        w, h = resized_size(width, height, pix2struct)
        kept = pix2struct([Image.new("RGB", (width, height))], is_vqa=False, return_tensors="np")["attention_mask"]
        assert (w // 8) * (h // 8) == int(kept.sum()) <= pix2struct.max_patches
    next_ip = FAMILIES["llava_next"].tiny().processor.image_processor
    for width, height in SIZES:  # the grid canvas it resizes and pads to: at most its largest pinpoint
        w, h = resized_size(width, height, next_ip)
        made = _largest_made(next_ip, width, height)
        assert [h, w] in next_ip.image_grid_pinpoints and w * h >= made[0] * made[1]
    mllama = FAMILIES["mllama"].tiny().processor.image_processor
    assert resized_size(1, 100_000, mllama) == (16, 64)  # 4 tiles of 16x16 at most, however thin


def test_check_image_shape_names_the_image_and_the_numbers():
    from vlmtune.models import FAMILIES

    clip = FAMILIES["git"].tiny().processor.image_processor  # short side scaled up to 32
    assert resized_size(1, 100_000, clip) == (32, 3_200_000)
    with pytest.raises(ImageError, match=r"^a\.png: 1x100000 pixels has an aspect ratio of 100000\.0:1, over the "
                                         r"limit of 50:1"):
        check_image_shape(1, 100_000, "a.png", clip)
    with pytest.raises(ImageError, match=r"b\.png: 1x200 pixels becomes 32x6400 = 204800 pixels in the model's "
                                         r"image processor, over the limit of 100000"):
        check_image_shape(1, 200, "b.png", clip, max_aspect_ratio=500, max_resized_pixels=100_000)
    check_image_shape(1, 50, "c.png", clip)  # 50:1 is allowed
    check_image_shape(1, 100, "d.png", None, max_aspect_ratio=100)  # no processor: the aspect ratio only
    qwen = FAMILIES["qwen2_vl"].tiny().processor.image_processor
    with pytest.raises(ImageError, match="e.png: the model's image processor refuses a 1x300 image"):
        check_image_shape(1, 300, "e.png", qwen, max_aspect_ratio=1000)  # its smart_resize stops at 200:1
