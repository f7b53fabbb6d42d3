"""Writes tests/golden/internvl_video.npz: what transformers' own InternVLVideoProcessor (torchvision) and
InternVLProcessor give for a few synthetic videos, so tests/models/test_internvl.py and tests/real compare vlmtune's
torchvision-free InternVL video path (internvl.encode with `videos=`) with upstream without torchvision.

- `<case>/pixel_values_videos`: InternVLVideoProcessor at the tiny family's settings (32x32 frames, the image
  processor's defaults: bicubic, CLIP mean/std) for frames resized down, up, to another aspect, and not at all.
- `batch/...`: InternVLProcessor with the real -hf tokenizer and chat template (../shared/real-models/
  OpenGVLab__InternVL3-1B-hf) and the tiny image / video settings (32x32 tiles, 4 tokens each) on a batch of two
  conversations, one with an image, a video and text, one with a video only: the ids (left padding, as upstream
  pads), the expanded prompt text of each and the merged `pixel_values` (image tiles and video frames in slot order).

Run once from the repository root, in a venv with transformers and torchvision (the project's has no torchvision):

    HF_HUB_OFFLINE=1 /work/main/.venv-vllm/bin/python tests/golden/make_internvl_video_golden.py

(that venv had transformers 5.19.0, torchvision 0.28.0 when internvl_video.npz was written.)
"""

from __future__ import annotations

import json

import numpy as np
from make_qwen_video_golden import HERE, REAL, _import_torchvision, frames
from PIL import Image

FOLDER = REAL / "OpenGVLab__InternVL3-1B-hf"
TILE = {"height": 32, "width": 32}
CASES = {  # name -> (frames, width, height)
    "down": (3, 40, 36), "exact": (2, 32, 32), "up": (1, 20, 14), "tall": (2, 20, 90),
}
BATCH_VIDEOS = ((3, 40, 32), (3, 20, 90))
"""The batch's two videos: (frames, width, height)."""
IMAGE_SIZE = (64, 32)
"""The batch's image: a 2x1 grid of tiles + a thumbnail."""
QUESTION = "What colour is the top?"


def conversations() -> list[list[dict]]:
    return [
        [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": QUESTION}]}],
        [{"role": "user", "content": [{"type": "text", "text": "Look: "}, {"type": "video"},
                                      {"type": "text", "text": QUESTION}]}],
    ]


def batch_image() -> Image.Image:
    return frames(1, *IMAGE_SIZE)[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def main() -> None:
    _import_torchvision()
    from transformers import AutoTokenizer, GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    golden: dict[str, np.ndarray] = {}
    video_processor = InternVLVideoProcessor(size=TILE)
    for name, (n, w, h) in CASES.items():
        out = video_processor(videos=[frames(n, w, h)], return_tensors="np")
        golden[f"{name}/pixel_values_videos"] = out["pixel_values_videos"][0].astype(np.float32)
    tok = AutoTokenizer.from_pretrained(FOLDER)
    image_processor = GotOcr2ImageProcessor(size=TILE, crop_to_patches=True, min_patches=1, max_patches=6)
    processor = InternVLProcessor(image_processor, tok, video_processor, image_seq_length=4,
                                  chat_template=tok.chat_template)
    texts = [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations()]
    out = processor(text=texts, images=[batch_image()], videos=[frames(*v) for v in BATCH_VIDEOS],
                    padding=True, return_tensors="pt")
    golden["batch/input_ids"] = out["input_ids"].numpy()
    golden["batch/attention_mask"] = out["attention_mask"].numpy()
    golden["batch/pixel_values"] = out["pixel_values"].numpy().astype(np.float32)
    expanded = [tok.decode(ids[mask.bool()]) for ids, mask in zip(out["input_ids"], out["attention_mask"], strict=True)]
    golden["batch/text"] = np.frombuffer(json.dumps(expanded).encode(), dtype=np.uint8)
    np.savez_compressed(HERE / "internvl_video.npz", **golden)
    print({k: v.shape for k, v in golden.items()})
    print(expanded[1])


if __name__ == "__main__":
    main()
