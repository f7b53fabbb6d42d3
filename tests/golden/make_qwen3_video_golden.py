"""Writes tests/golden/qwen3_video.npz: what the real Qwen3-VL-4B-Instruct processor files give through transformers'
own Qwen3VLProcessor + Qwen3VLVideoProcessor (torchvision) for a few synthetic videos, so tests/real/test_real_video.py
compares vlmtune's torchvision-free Qwen3-VL video path (qwen3_vl.Qwen3Processor: timestamps per temporal patch,
Qwen3-VL's video smart_resize) with upstream without torchvision.

Run once, in the scratch venv with torchvision that tests/golden/make_qwen_video_golden.py describes, from the
repository root:

    HF_HUB_OFFLINE=1 /tmp/venv-tv/bin/python tests/golden/make_qwen3_video_golden.py

The frames are make_qwen_video_golden's `frames`; each case states its frames' indices in the video and the video's
fps (upstream's timestamps are index / fps; vlmtune's `Video` carries the same seconds as `timestamps`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from make_qwen_video_golden import _import_torchvision, frames  # noqa: E402

FOLDER = Path("/work/shared/real-models/Qwen__Qwen3-VL-4B-Instruct")
PROMPT = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What is it?<|im_end|>\n"
CASES = {  # name -> (width, height, frame indices, fps); 96x64 needs no resize (exact pixels), the others are resized
    "even": (96, 64, [0, 1, 2, 3], 2.0), "odd": (70, 50, [0, 1, 2], 2.0), "strided": (40, 120, [0, 3, 6, 9, 12], 3.0),
    "long": (64, 64, list(range(0, 60, 2)), 4.0),
    "upscaled": (20, 24, [5, 6], 2.0),  # below the min pixels
}


def main() -> None:
    _import_torchvision()
    from transformers import AutoProcessor
    from transformers.video_utils import VideoMetadata

    if not FOLDER.is_dir():
        sys.exit(f"{FOLDER} is missing")
    processor = AutoProcessor.from_pretrained(FOLDER)
    print(type(processor).__name__, type(processor.video_processor).__name__)
    golden: dict[str, np.ndarray] = {}
    for name, (w, h, indices, fps) in CASES.items():
        metadata = VideoMetadata(total_num_frames=indices[-1] + 1, fps=fps, frames_indices=list(indices))
        out = processor(text=[PROMPT], videos=[frames(len(indices), w, h)], video_metadata=[metadata],
                        videos_kwargs={"cap_pixels_per_frame": False, "do_sample_frames": False},
                        return_tensors="np")
        print(name, processor.tokenizer.decode(out["input_ids"][0])[:200])
        golden[f"{name}/input_ids"] = out["input_ids"][0]
        golden[f"{name}/mm_token_type_ids"] = out["mm_token_type_ids"][0]
        golden[f"{name}/video_grid_thw"] = out["video_grid_thw"]
        pixels = out["pixel_values_videos"]
        # rows' sums and the first patch in full: the layout, resize and mean/std without 100s of KB
        golden[f"{name}/row_sums"] = pixels.sum(-1).astype(np.float32)
        golden[f"{name}/first_patch"] = pixels[0].astype(np.float32)
    golden["meta"] = np.frombuffer(json.dumps({"cases": CASES}).encode(), dtype=np.uint8)
    np.savez_compressed(HERE / "qwen3_video.npz", **golden)
    print({k: v.shape for k, v in golden.items()})


if __name__ == "__main__":
    main()
