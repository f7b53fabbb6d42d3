"""Writes tests/golden/qwen_video.npz: what transformers' own Qwen2VLVideoProcessor (torchvision) and the real
Qwen2-VL-2B / Qwen2.5-VL-3B processors give for a few synthetic videos, so tests/models/test_video_encode.py and
tests/real compare vlmtune's torchvision-free video path (qwen2_vl.video_inputs) with upstream without torchvision.

Run once, in a scratch venv with torchvision (the project's has none), from the repository root:

    uv venv /tmp/venv-tv && uv pip install --python /tmp/venv-tv torch==2.13.0 torchvision==0.28.0 \\
        transformers==5.25.0 pillow numpy --find-links /opt/wheels
    HF_HUB_OFFLINE=1 /tmp/venv-tv/bin/python tests/golden/make_qwen_video_golden.py

(PyPI's torchvision 0.28 is a CUDA build whose C++ ops do not load against the CPU torch; its Python transforms do:
`_import_torchvision` skips the registration of those ops.) `frames` is imported by the tests: the same pixels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).parent
REAL = Path("/work/shared/real-models")
TINY = dict(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16, max_pixels=32 * 32)
"""Small processor settings (the math is the same at any patch size): a few KB of golden pixels."""
CASES = {  # name -> (frames, width, height); 16x24 needs no resize (exact), 20x14 is resized (PIL vs torchvision)
    "odd": (3, 16, 24), "even": (4, 24, 16), "one": (1, 16, 16), "resized": (5, 20, 14),
}
REAL_CASES = {"real_even": (2, 56, 84), "real_odd": (3, 70, 50)}


def frames(n: int, width: int, height: int) -> list[Image.Image]:
    """`n` RGB frames with a different smooth pattern each (no randomness: the same pixels in any numpy)."""
    y, x = np.mgrid[0:height, 0:width]
    out = []
    for t in range(n):
        rgb = np.stack([(x * 11 + t * 37) % 256, (y * 7 + x * 3 + t * 53) % 256, (x * y + t * 91) % 256], axis=-1)
        out.append(Image.fromarray(rgb.astype(np.uint8), "RGB"))
    return out


def _import_torchvision():
    import torch.library

    register = torch.library.register_fake
    torch.library.register_fake = lambda *a, **k: (lambda f: f)
    try:
        import torchvision  # noqa: F401
    finally:
        torch.library.register_fake = register


def main() -> None:
    _import_torchvision()
    from transformers import AutoProcessor, Qwen2VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    golden: dict[str, np.ndarray] = {}
    video_processor = Qwen2VLVideoProcessor(**TINY, cap_pixels_per_frame=False)
    for name, (n, w, h) in CASES.items():
        out = video_processor(videos=[frames(n, w, h)], return_tensors="np")
        golden[f"{name}/pixel_values_videos"] = out["pixel_values_videos"].astype(np.float32)
        golden[f"{name}/video_grid_thw"] = out["video_grid_thw"]
    prompt = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What is it?<|im_end|>\n"
    for family, folder in (("qwen2_vl", "Qwen__Qwen2-VL-2B-Instruct"), ("qwen2_5_vl", "Qwen__Qwen2.5-VL-3B-Instruct")):
        if not (REAL / folder).is_dir():
            sys.exit(f"{REAL / folder} is missing")
        processor = AutoProcessor.from_pretrained(REAL / folder)
        for name, (n, w, h) in REAL_CASES.items():
            metadata = VideoMetadata(total_num_frames=n, fps=2.0, frames_indices=list(range(n)))
            out = processor(text=[prompt], videos=[frames(n, w, h)], video_metadata=[metadata],
                            videos_kwargs={"cap_pixels_per_frame": False}, return_tensors="np")
            key = f"{family}/{name}"
            golden[f"{key}/input_ids"] = out["input_ids"][0]
            golden[f"{key}/video_grid_thw"] = out["video_grid_thw"]
            pixels = out["pixel_values_videos"]
            # rows' sums and the first patch in full: the settings (patch 14, pixels bounds, mean/std) without 100 KB
            golden[f"{key}/row_sums"] = pixels.sum(-1).astype(np.float32)
            golden[f"{key}/first_patch"] = pixels[0].astype(np.float32)
            if "second_per_grid_ts" in out:
                golden[f"{key}/second_per_grid_ts"] = np.asarray(out["second_per_grid_ts"], dtype=np.float32)
    golden["meta"] = np.frombuffer(json.dumps({"tiny": TINY, "cases": CASES, "real_cases": REAL_CASES}).encode(),
                                   dtype=np.uint8)
    np.savez_compressed(HERE / "qwen_video.npz", **golden)
    print({k: v.shape for k, v in golden.items()})


if __name__ == "__main__":
    main()
