"""The video families with their real processor files: vlmtune's torchvision-free video path gives what the real
upstream processors (with torchvision, and num2words for SmolVLM) gave for the same frames, recorded in
tests/golden/*.npz by tests/golden/make_*_video_golden.py; the labelled tokens of a video sample are the answer and
the real stop token, and `video_tokens` is what `encode` expands."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.real.conftest import real_path
from vlmtune.data.sample import Sample, assistant
from vlmtune.data.video import Video
from vlmtune.models import FAMILIES
from vlmtune.models.labels import trained_tokens

GOLDEN = Path(__file__).parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))
import make_qwen3_video_golden as qwen3_golden  # noqa: E402
import make_qwen_video_golden as qwen_golden  # noqa: E402
import make_smolvlm_video_golden as smolvlm_golden  # noqa: E402

QWEN_PROMPT = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What is it?<|im_end|>\n"


def _sample(question: str = "What colour is the top?") -> Sample:
    return Sample(id="clip", images=[], videos=["clip.mp4"], messages=[
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}, assistant("red")])


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("case", sorted(qwen_golden.REAL_CASES))
def test_qwen_video_inputs_equal_the_real_upstream_processors(name, case):
    """Real settings (patch 14, 3136 .. 12845056 pixels per frame, CLIP mean/std, no video_preprocessor_config.json):
    the same ids (video tokens expanded alike), grid, pixels (an exact first patch where the frames need no resize;
    rows' sums within PIL's and torchvision's resampling difference) and Qwen2.5-VL's seconds per grid."""
    golden = np.load(GOLDEN / "qwen_video.npz")
    key = f"{name}/{case}"
    processor = FAMILIES[name].load_processor(real_path(name))
    n, w, h = qwen_golden.REAL_CASES[case]
    clip = Video(qwen_golden.frames(n, w, h), [i / 2 for i in range(n)], fps=2.0)
    out = processor(text=[QWEN_PROMPT], videos=[clip], return_tensors="pt")
    assert out["input_ids"][0].tolist() == golden[f"{key}/input_ids"].tolist()
    assert out["video_grid_thw"].tolist() == golden[f"{key}/video_grid_thw"].tolist()
    pixels = out["pixel_values_videos"]
    exact = case == "real_even"  # 56x84: multiples of 28, no resize
    torch.testing.assert_close(pixels[0], torch.from_numpy(golden[f"{key}/first_patch"]), rtol=0,
                               atol=1e-5 if exact else 0.05)
    torch.testing.assert_close(pixels.sum(-1), torch.from_numpy(golden[f"{key}/row_sums"]), rtol=0,
                               atol=1e-3 if exact else 0.5)
    if name == "qwen2_5_vl":
        assert out["second_per_grid_ts"] == golden[f"{key}/second_per_grid_ts"].tolist()
    assert FAMILIES[name].video_tokens(processor, clip) == int((out["input_ids"] == processor.video_token_id).sum())


@pytest.mark.parametrize("case", sorted(qwen3_golden.CASES))
def test_qwen3_vl_video_inputs_equal_the_real_upstream_processor(case):
    """Qwen3-VL-4B's real files (patch 16, video_preprocessor_config.json: 4096 .. 25165824 pixels over all frames,
    mean/std 0.5): the same ids (per temporal patch its `<seconds>` and wrapped video tokens), token types, grid,
    pixels (an exact first patch where the frames need no resize; rows' sums within PIL's and torchvision's bicubic
    difference, where they are resized or upscaled to the minimum)."""
    golden = np.load(GOLDEN / "qwen3_video.npz")
    family = FAMILIES["qwen3_vl"]
    processor = family.load_processor(real_path("qwen3_vl"))
    w, h, indices, fps = qwen3_golden.CASES[case]
    clip = Video(qwen_golden.frames(len(indices), w, h), [i / fps for i in indices], fps=fps)
    out = processor(text=[QWEN_PROMPT], videos=[clip], return_tensors="pt")
    assert out["input_ids"][0].tolist() == golden[f"{case}/input_ids"].tolist()
    assert out["mm_token_type_ids"][0].tolist() == golden[f"{case}/mm_token_type_ids"].tolist()
    assert out["video_grid_thw"].tolist() == golden[f"{case}/video_grid_thw"].tolist()
    pixels = out["pixel_values_videos"]
    exact = case == "even"  # 96x64: multiples of 32 within the bounds, no resize
    torch.testing.assert_close(pixels[0], torch.from_numpy(golden[f"{case}/first_patch"]), rtol=0,
                               atol=1e-5 if exact else 0.05)
    torch.testing.assert_close(pixels.sum(-1), torch.from_numpy(golden[f"{case}/row_sums"]), rtol=0,
                               atol=1e-3 if exact else 0.5)
    if not exact:
        assert (pixels.sum(-1) - torch.from_numpy(golden[f"{case}/row_sums"])).abs().mean() < 0.1
    assert family.video_tokens(processor, clip) == int((out["input_ids"] == processor.video_token_id).sum())


@pytest.mark.parametrize("case", sorted(smolvlm_golden.CASES))
def test_smolvlm2_video_prompt_and_frames_equal_the_real_processor(case):
    """SmolVLM2-256M-Video's real processor renders a video as an intro, per frame its timestamp and one 512x512
    global view, with its video chat template: the same ids token for token; the frames' pixels within one 8-bit
    level (PIL's LANCZOS resize against torchvision's)."""
    golden = np.load(GOLDEN / "smolvlm_video.npz")
    family = FAMILIES["smolvlm"]
    processor = family.load_processor(real_path("smolvlm"))
    n, w, h, fps = smolvlm_golden.CASES[case]
    clip = Video(qwen_golden.frames(n, w, h), [i / fps for i in range(n)], fps=fps)
    batch = family.encode(processor, [_sample(smolvlm_golden.QUESTION)], [[]], "generate", 4096, videos=[[clip]])
    assert batch.inputs["input_ids"][0].tolist() == golden[f"{case}/input_ids"].tolist()
    pixels = batch.inputs["pixel_values"][0]
    assert list(pixels.shape) == golden[f"{case}/pixel_shape"].tolist()
    torch.testing.assert_close(pixels[:, :, :8, :8], torch.from_numpy(golden[f"{case}/corner"]), rtol=0,
                               atol=2 / 255 + 1e-6)
    torch.testing.assert_close(pixels.mean(dim=(1, 2, 3)), torch.from_numpy(golden[f"{case}/frame_means"]), rtol=0,
                               atol=1e-3)
    assert int(batch.inputs["pixel_attention_mask"].sum()) == int(golden[f"{case}/pixel_attention_mask_sum"])


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "smolvlm"])
def test_a_real_video_sample_trains_the_answer_and_the_real_stop_token(name):
    family = FAMILIES[name]
    processor = family.load_processor(real_path(name))
    clip = Video(qwen_golden.frames(3, 64, 48), [0.0, 0.5, 1.0], fps=2.0)
    batch = family.encode(processor, [_sample()], [[]], "train", 8192, videos=[[clip]])
    ids, labels = batch.inputs["input_ids"][0].tolist(), batch.inputs["labels"][0].tolist()
    stop = "<end_of_utterance>" if name == "smolvlm" else "<|im_end|>"
    trained = trained_tokens(processor.tokenizer, ids, labels)
    assert processor.tokenizer.convert_tokens_to_string(trained[:-1]).strip() == "red" and trained[-1] == stop
    video_id = getattr(processor, "video_token_id", None) or processor.image_token_id
    assert ids.count(video_id) == family.video_tokens(processor, clip)


@pytest.mark.parametrize("name", ["qwen2_vl", "smolvlm",  # the small checkpoints (test_real_models.SMALL)
                                  pytest.param("qwen3_vl", marks=pytest.mark.large)])
def test_a_real_width_bf16_model_trains_and_generates_on_a_video_and_an_image(name):
    """The real config at real width, cut to 2 layers, random bf16 weights: a batch of a video sample and an image
    sample goes through `Batch.to` (the one cast) to a finite loss with gradients, and generation is bounded."""
    from PIL import Image
    from transformers import AutoConfig, AutoModelForImageTextToText

    from tests.real.test_real_models import _cut
    from vlmtune.data.sample import user
    from vlmtune.infer import prompt_length

    family = FAMILIES[name]
    path = real_path(name)
    processor = family.load_processor(path)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(_cut(AutoConfig.from_pretrained(path)), dtype=torch.bfloat16)
    clip = Video(qwen_golden.frames(2, 56, 84), [0.0, 0.5], fps=2.0)
    samples = [_sample(), Sample(id="img", images=["a.png"], messages=[user("What colour?"), assistant("blue")])]
    images, videos = [[], [Image.new("RGB", (64, 48), "blue")]], [[clip], []]
    batch = family.encode(processor, samples, images, "train", 8192, videos=videos).to("cpu", torch.bfloat16)
    loss = model(**batch.inputs).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    prompt = family.encode(processor, samples, images, "generate", 8192, videos=videos).to("cpu", torch.bfloat16)
    with torch.no_grad():
        out = model.eval().generate(**prompt.inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert out.shape[1] - prompt_length(family, prompt) == 2
