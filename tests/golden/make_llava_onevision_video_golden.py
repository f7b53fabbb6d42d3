"""Writes tests/golden/llava_onevision_video.npz: what upstream's LlavaOnevisionProcessor, with its torchvision
LlavaOnevisionVideoProcessor, gives for a conversation with a video, so tests/models/test_llava_onevision.py compares
vlmtune's torchvision-free video path (llava_onevision.encode / video_pixels) with it.

The processor is vlmtune's tiny one (llava_onevision.build_processor: 32 px tiles, 16 features a tile) saved and
loaded back by plain transformers' AutoProcessor, which builds the video processor as it would for an -ov-hf
checkpoint: from video_preprocessor_config.json when there is one, else from preprocessor_config.json. Run once, from
the repository root, in a venv with torchvision whose transformers has the same LLaVA-OneVision code (the repository's
.venv-vllm: transformers 5.19, torchvision 0.28):

    PYTHONPATH=src HF_HUB_OFFLINE=1 .venv-vllm/bin/python tests/golden/make_llava_onevision_video_golden.py

`frames` (make_qwen_video_golden.py) gives the same pixels in the tests.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from make_qwen_video_golden import _import_torchvision, frames  # noqa: E402

CASES = {  # name -> per video (frames, width, height); one sample holds all of a case's videos
    "tile": [(2, 32, 32)],  # the tile's size: no resize, exact to float rounding
    "down": [(1, 64, 48)],  # resized down (PIL's and torchvision's antialiased bicubic)
    "up": [(1, 20, 14)],  # resized up
    "pair": [(1, 32, 32), (1, 50, 20)],  # two videos in one sample: stacked in slot order
}
VIDEO_CONFIG = {"size": {"height": 32, "width": 32}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                "resample": 3, "rescale_factor": 1 / 255, "do_resize": True, "do_rescale": True, "do_normalize": True,
                "do_convert_rgb": True, "do_sample_frames": False,
                "video_processor_type": "LlavaOnevisionVideoProcessor", "processor_class": "LlavaOnevisionProcessor"}
"""A checkpoint's video_preprocessor_config.json with SigLIP's mean and std (the -ov-hf image processors'): case
"video_config" is "tile"'s video through it."""
QUESTION = "What colour is the top?"


def conversation(n_videos: int) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video"}] * n_videos + [{"type": "text", "text": QUESTION}]}]


def main() -> None:
    _import_torchvision()
    from transformers import AutoProcessor

    from vlmtune.models import llava_onevision

    golden: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as d:
        llava_onevision.build_processor().save_pretrained(d)
        processor = AutoProcessor.from_pretrained(d)
        assert type(processor.video_processor).__name__ == "LlavaOnevisionVideoProcessor"
        runs = [(name, processor, videos) for name, videos in CASES.items()]
        (Path(d) / "video_preprocessor_config.json").write_text(json.dumps(VIDEO_CONFIG))
        configured = AutoProcessor.from_pretrained(d)
        assert list(configured.video_processor.image_mean) == [0.5, 0.5, 0.5]
        runs.append(("video_config", configured, CASES["tile"]))
        for name, proc, videos in runs:
            text = proc.apply_chat_template(conversation(len(videos)), add_generation_prompt=True, tokenize=False)
            out = proc(text=[text], videos=[frames(*v) for v in videos], return_tensors="np")
            golden[f"{name}/text"] = np.frombuffer(text.encode(), dtype=np.uint8)
            golden[f"{name}/input_ids"] = out["input_ids"][0]
            golden[f"{name}/pixel_values_videos"] = out["pixel_values_videos"].astype(np.float32)
    golden["meta"] = np.frombuffer(json.dumps({"cases": CASES, "video_config": VIDEO_CONFIG}).encode(), dtype=np.uint8)
    np.savez_compressed(HERE / "llava_onevision_video.npz", **golden)
    print({k: v.shape for k, v in golden.items()})


if __name__ == "__main__":
    main()
