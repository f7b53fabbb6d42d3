"""Writes tests/golden/phi4mm_image.npz: what transformers' own Phi4MultimodalImageProcessor (torchvision) gives for a
few synthetic images, so tests/models/test_phi4_multimodal.py compares vlmtune's torchvision-free port
(phi4_multimodal.image_processor_class) with upstream without torchvision.

Run once, in a venv with torchvision and transformers' phi4_multimodal (.venv-vllm: transformers 5.19, torchvision
0.28), from the repository root:

    HF_HUB_OFFLINE=1 /work/main/.venv-vllm/bin/python tests/golden/make_phi4mm_golden.py

TINY cases: 28 px crops of 14 px patches, at most 4 crops (the tiny processor's settings): every pixel stored.
REAL cases: the checkpoint's 448 px crops of 14 px patches, up to 36 crops: token counts, sizes and masks exactly,
pixels subsampled every 16th row and column (a few KB). `image` is imported by the test: the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).parent
TINY = dict(size={"height": 28, "width": 28}, patch_size=14, dynamic_hd=4)
REAL = dict(size={"height": 448, "width": 448}, patch_size=14, dynamic_hd=36)
# name -> (width, height): exact grids, padded grids, upscaled small images, a grid capped by dynamic_hd
TINY_CASES = {"square": (40, 40), "tall": (40, 60), "wide": (90, 30), "exact": (56, 28), "small": (17, 23)}
REAL_CASES = {"real_small": (300, 200), "real_pad": (700, 500), "real_capped": (4000, 600), "real_exact": (896, 448)}
STEP = 16  # REAL pixels: every STEP-th row and column


def image(width: int, height: int) -> Image.Image:
    """A smooth RGB pattern (no randomness: the same pixels in any numpy)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * 11 + y * 3) % 256, (y * 7 + x * 5) % 256, ((x // 4) * (y // 4) * 13) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def main() -> None:
    import torch
    from transformers import Phi4MultimodalImageProcessor

    out = {}
    for cases, settings, step in ((TINY_CASES, TINY, 1), (REAL_CASES, REAL, STEP)):
        processor = Phi4MultimodalImageProcessor(**settings)
        for name, (w, h) in cases.items():
            got = processor(images=[image(w, h)], return_tensors="pt")
            pixels = got["image_pixel_values"][..., ::step, ::step]
            out[f"{name}/pixels"] = pixels.to(torch.float32).numpy()
            out[f"{name}/mask"] = got["image_attention_mask"].numpy().astype(np.uint8)
            out[f"{name}/sizes"] = got["image_sizes"].numpy()
            out[f"{name}/tokens"] = np.array(got["num_img_tokens"])
            print(name, tuple(pixels.shape), got["num_img_tokens"])
    np.savez_compressed(HERE / "phi4mm_image.npz", **out)


if __name__ == "__main__":
    main()
