"""Writes tests/golden/llama4_tiles.npz: what transformers' own Llama4ImageProcessor (torchvision) gives for a few
images and tile settings, so tests/models/test_llama4.py compares vlmtune's PIL/NumPy port (llama4.py) with it.

Run once from the repository root in vLLM's environment (transformers 5.19 with torchvision):

    /work/main/.venv-vllm/bin/python tests/golden/make_llama4_golden.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).parent
SETTINGS = {"t32x4": (32, 4), "t56x6": (56, 6)}
"""name -> (tile side, max tiles)."""
SIZES = [(96, 64), (20, 50), (200, 120), (32, 32), (33, 100), (150, 40)]
"""Image (width, height): tiled, upscaled, downscaled to a canvas, exactly one tile, tall, wide."""


def image(width: int, height: int) -> Image.Image:
    """A smooth test picture (gradients and waves): resize rounding, not aliasing of noise, is what differs."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rgb = np.stack([x * 255 / width, y * 255 / height, 128 + 100 * np.sin(x / 5) * np.cos(y / 7)], axis=-1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def main() -> None:
    import transformers
    from transformers.models.llama4.image_processing_llama4 import Llama4ImageProcessor

    golden = {}
    for name, (tile, max_patches) in SETTINGS.items():
        processor = Llama4ImageProcessor(size={"height": tile, "width": tile}, max_patches=max_patches)
        for w, h in SIZES:
            out = processor(images=[image(w, h)], return_tensors="pt")
            golden[f"{name}/{w}x{h}/pixel_values"] = out["pixel_values"].float().numpy()
            golden[f"{name}/{w}x{h}/aspect_ratios"] = np.asarray(out["aspect_ratios"]).reshape(-1, 2)
    golden["transformers"] = np.asarray(transformers.__version__)
    np.savez_compressed(HERE / "llama4_tiles.npz", **golden)
    print({k: v.shape for k, v in golden.items()})


if __name__ == "__main__":
    main()
