"""Writes tests/golden/smolvlm_video.npz: what the real SmolVLM2-256M-Video-Instruct processor (SmolVLMProcessor with
its torchvision video processor and num2words) gives for a conversation with a video, so tests/real compares
vlmtune's torchvision-free SmolVLM video path (smolvlm.encode) with it.

Run once, in the scratch venv of make_qwen_video_golden.py plus num2words, from the repository root:

    uv pip install --python /tmp/venv-tv num2words
    HF_HUB_OFFLINE=1 /tmp/venv-tv/bin/python tests/golden/make_smolvlm_video_golden.py
"""

from __future__ import annotations

import numpy as np
from make_qwen_video_golden import HERE, REAL, _import_torchvision, frames

FOLDER = REAL / "HuggingFaceTB__SmolVLM2-256M-Video-Instruct"
CASES = {"three": (3, 40, 30, 1.0), "odd_fps": (5, 36, 64, 2.0)}
"""name -> (frames, width, height, fps): the frames' timestamps are i / fps."""
QUESTION = "What colour is the top?"


def conversation() -> list[dict]:
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]


def main() -> None:
    _import_torchvision()
    from transformers import AutoProcessor
    from transformers.video_utils import VideoMetadata

    processor = AutoProcessor.from_pretrained(FOLDER)
    golden = {}
    for name, (n, w, h, fps) in CASES.items():
        text = processor.apply_chat_template(conversation(), add_generation_prompt=True, tokenize=False)
        metadata = VideoMetadata(total_num_frames=n, fps=fps, frames_indices=list(range(n)))
        out = processor(text=[text], videos=[frames(n, w, h)], video_metadata=[metadata], return_tensors="np")
        golden[f"{name}/input_ids"] = out["input_ids"][0]
        pixels = out["pixel_values"][0]  # (frames, 3, 512, 512)
        golden[f"{name}/pixel_shape"] = np.asarray(pixels.shape)
        golden[f"{name}/frame_means"] = pixels.mean(axis=(1, 2, 3)).astype(np.float32)
        golden[f"{name}/corner"] = pixels[:, :, :8, :8].astype(np.float32)  # every frame's top-left 8x8
        golden[f"{name}/pixel_attention_mask_sum"] = np.asarray(out["pixel_attention_mask"].sum())
    np.savez_compressed(HERE / "smolvlm_video.npz", **golden)
    print({k: v.shape for k, v in golden.items()})


if __name__ == "__main__":
    main()
