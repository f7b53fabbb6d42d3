"""LLaVA-OneVision specifics: AnyRes-max-9 token counts for many sizes, untiled images in multi-image samples, the
template's assistant header, saved files that name the upstream processor class, and native video: ids and pixels equal
upstream's processor with its torchvision video processor (tests/golden/llava_onevision_video.npz, made by
tests/golden/make_llava_onevision_video_golden.py), counts equal upstream's `replace_video_token`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.video import Video
from vlmtune.models import llava_onevision
from vlmtune.models.labels import IGNORE_INDEX


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return llava_onevision.tiny()


def _vqa(n_images: int = 1) -> Sample:
    return Sample(id=f"s{n_images}", images=[f"{k}.png" for k in range(n_images)],
                  messages=[user("What colour is the top?", n_images=n_images), assistant("red")])


# square, wide, tall, very thin, and large enough for more than 9 tiles (scaled down by anyres_max_9)
SIZES = [(40, 40), (64, 32), (32, 128), (200, 50), (7, 300), (128, 128), (500, 400)]


@pytest.mark.parametrize("size", SIZES)
def test_image_tokens_are_the_tokens_encode_makes_and_the_model_takes(tiny, size):
    n = llava_onevision.image_token_count(tiny.processor, *size)
    batch = llava_onevision.encode(tiny.processor, [_vqa()], [[Image.new("RGB", size, "red")]], "train", 4096)
    assert int((batch.inputs["input_ids"][0] == tiny.processor.image_token_id).sum()) == n
    with torch.no_grad():  # the model's own unpadding and newlines make as many features (else it raises)
        assert torch.isfinite(tiny.model(**batch.inputs).loss)


def test_counts_grow_with_the_grid_up_to_the_max_9_scale_down(tiny):
    counts = {s: llava_onevision.image_token_count(tiny.processor, *s) for s in SIZES}
    tile = llava_onevision.image_token_count(tiny.processor, 32, 32)  # one grid tile: overview + tile + newlines
    assert tile == 16 + 16 + 4
    assert len(set(counts.values())) >= 5
    # 4 x 4 tiles would be 16 x 16 features + 16 newlines; scaled to at most ~9 tiles' worth
    assert counts[(128, 128)] < 16 + 16 * 16 + 16


def test_a_multi_image_sample_is_not_tiled_and_a_batch_mixes_both(tiny):
    sizes = [(40, 40), (64, 32)]
    two = [Image.new("RGB", s, "blue") for s in sizes]
    batch = llava_onevision.encode(tiny.processor, [_vqa(2), _vqa(1), _vqa(0)], [two, [Image.new("RGB", (64, 64))], []],
                                   "train", 4096)
    ids = batch.inputs["input_ids"]
    untiled = llava_onevision.image_token_count(tiny.processor, 40, 40, alone=False)
    assert untiled == 16 + 1  # one tile + the newline
    assert int((ids[0] == tiny.processor.image_token_id).sum()) == 2 * untiled
    assert int((ids[1] == tiny.processor.image_token_id).sum()) == llava_onevision.image_token_count(
        tiny.processor, 64, 64)
    assert batch.inputs["batch_num_images"].tolist() == [2, 1]
    tok = tiny.processor.tokenizer
    for row in batch.inputs["labels"]:
        assert tok.decode(row[row != IGNORE_INDEX]) == "red<|im_end|>"
    with torch.no_grad():
        assert torch.isfinite(tiny.model(**batch.inputs).loss)


def test_the_assistant_header_is_trained_as_the_generation_prompt_writes_it(tiny):
    """The checkpoints' template writes "<|im_start|>assistant \\n" for an assistant turn and "<|im_start|>assistant\\n"
    as the generation prompt: the training text uses the latter, so the prompt the model answers after is one."""
    processor, sample = tiny.processor, _vqa()
    raw = processor.apply_chat_template(sample.messages, tokenize=False)
    assert "<|im_start|>assistant \nred<|im_end|>" in raw
    img = [[Image.new("RGB", (40, 40))]]
    train = llava_onevision.encode(processor, [sample], img, "train", 4096).inputs
    prompt = llava_onevision.encode(processor, [sample], img, "generate", 4096).inputs["input_ids"][0].tolist()
    labels = train["labels"][0]
    first = int((labels != IGNORE_INDEX).nonzero()[0])
    assert train["input_ids"][0][:first].tolist() == prompt  # the training prefix is the generation prompt
    assert processor.tokenizer.decode(prompt[-3:]) == "<|im_start|>assistant\n"


def test_max_length_counts_the_image_tokens(tiny):
    from vlmtune.models import SampleTooLong

    n = llava_onevision.image_token_count(tiny.processor, 200, 50)
    with pytest.raises(SampleTooLong, match=rf"sample 's1': \d+ tokens \({n} image tokens"):
        llava_onevision.encode(tiny.processor, [_vqa()], [[Image.new("RGB", (200, 50))]], "train", n + 5)


FRESH = """
import json, sys
from transformers import AutoImageProcessor, AutoTokenizer
d = sys.argv[1]
image, tok = AutoImageProcessor.from_pretrained(d), AutoTokenizer.from_pretrained(d)
try:
    from transformers import AutoProcessor
    kind = type(AutoProcessor.from_pretrained(d)).__name__
except Exception as e:  # the upstream processor wants torchvision for its video half, as the checkpoints' does
    kind = "error: " + str(e)[:200]
print(json.dumps({"image": type(image).__name__, "pinpoints": image.image_grid_pinpoints, "tokens": len(tok),
                  "processor": kind, "vlmtune": "vlmtune" in sys.modules}))
"""


def test_saved_files_name_the_upstream_class_and_load_without_vlmtune(tiny, tmp_path):
    tiny.processor.save_pretrained(tmp_path)
    for f in ("processor_config.json", "preprocessor_config.json"):
        assert json.loads((tmp_path / f).read_text())["processor_class"] == "LlavaOnevisionProcessor", f
    assert not (tmp_path / "video_preprocessor_config.json").exists()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert not got["vlmtune"] and got["image"].startswith("LlavaOnevisionImageProcessor")
    assert got["pinpoints"] == tiny.processor.image_processor.image_grid_pinpoints
    assert got["tokens"] == len(tiny.processor.tokenizer)
    assert got["processor"] == "LlavaOnevisionProcessor" or "torchvision" in got["processor"].lower(), got
    again = llava_onevision.load_processor(tmp_path)
    assert (again.num_image_tokens, again.vision_feature_select_strategy, again.vision_aspect_ratio) == (
        16, "full", "anyres_max_9")
    assert again.chat_template == llava_onevision.CHAT_TEMPLATE


def test_data_check_on_a_saved_model_reports_the_image_tokens_encode_makes(tiny, tmp_path, capsys):
    from vlmtune.cli import main

    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    assert main(["data", "check", "--model", str(tmp_path), "--image-size", "64x48", "--image-size", "200x100"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["family"] == "llava_onevision"
    assert report["image_tokens"] == {f"{w}x{h}": llava_onevision.FAMILY.image_tokens(tiny.processor, w, h)
                                      for w, h in [(64, 48), (200, 100)]}


# --- native video ---------------------------------------------------------------------------------------------------

GOLDEN = Path(__file__).parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))
from make_llava_onevision_video_golden import CASES, VIDEO_CONFIG, conversation  # noqa: E402
from make_qwen_video_golden import frames  # noqa: E402


def _clip(n: int, w: int, h: int) -> Video:
    return Video(frames(n, w, h), [i / 2 for i in range(n)], "clip.mp4", fps=2.0)


def _video_sample(sid: str, n_videos: int = 1) -> Sample:
    return Sample(id=sid, images=[], videos=["clip.mp4"] * n_videos,
                  messages=[*conversation(n_videos), assistant("red")])


@pytest.mark.parametrize("case", [*CASES, "video_config"])
def test_video_ids_and_pixels_equal_upstream_processor_with_its_torchvision_video_processor(tiny, tmp_path, case):
    """The prompt's text and ids exactly; `pixel_values_videos` to float rounding where the frames are the tile's
    size (no resize), else within one 8-bit level (1/255/std = 0.0146 after normalizing): PIL's and torchvision's
    antialiased bicubic round a few pixels differently (the mean difference stays under 1e-4). "video_config": a
    checkpoint's video_preprocessor_config.json (SigLIP's mean and std) is what frames are normalized with, as
    upstream's video processor prefers it to preprocessor_config.json."""
    golden = np.load(GOLDEN / "llava_onevision_video.npz")
    tiny.processor.save_pretrained(tmp_path)
    if case == "video_config":
        (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(VIDEO_CONFIG))
    processor = llava_onevision.load_processor(tmp_path)
    videos = CASES["tile" if case == "video_config" else case]
    sample = _video_sample(case, len(videos))
    batch = llava_onevision.encode(processor, [sample], [[]], "generate", 4096, videos=[[_clip(*v) for v in videos]])
    assert llava_onevision.render(processor, sample.prompt_messages, True) == bytes(golden[f"{case}/text"]).decode()
    assert batch.inputs["input_ids"][0].tolist() == golden[f"{case}/input_ids"].tolist()
    ours, ref = batch.inputs["pixel_values_videos"], torch.from_numpy(golden[f"{case}/pixel_values_videos"])
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    if all((w, h) == (llava_onevision.TILE,) * 2 for _, w, h in videos):
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    else:
        assert (ours - ref).abs().mean() < 1e-4
        torch.testing.assert_close(ours, ref, atol=0.015, rtol=0)


def test_video_tokens_are_upstream_replace_video_token():
    """For the tiny tile (16 features) and the -ov-hf checkpoints' (729: 27x27 pooled to 14x14), any frame count."""
    from transformers import LlavaOnevisionProcessor

    for num_image_tokens in (16, 729, 9):
        stub = type("Stub", (), {"num_image_tokens": num_image_tokens, "video_token": "<video>"})()
        for n in (1, 2, 5, 32):
            upstream = LlavaOnevisionProcessor.replace_video_token(stub, {"pixel_values_videos": [np.zeros((n, 3))]}, 0)
            assert llava_onevision.video_tokens(stub, _clip(n, 8, 8)) == upstream.count("<video>")
    assert llava_onevision.video_tokens(stub, _clip(8, 8, 8)) == 8 * 4 + 1


def test_videos_of_several_frame_counts_in_one_batch_are_refused_naming_the_samples(tiny):
    samples = [_video_sample("a"), _video_sample("b")]
    with pytest.raises(ValueError, match=r"samples \['a', 'b'\]: videos of \{'a': \[2\], 'b': \[3\]\} frames"):
        llava_onevision.encode(tiny.processor, samples, [[], []], "train", 512,
                               videos=[[_clip(2, 32, 32)], [_clip(3, 32, 32)]])
    batch = llava_onevision.encode(tiny.processor, samples, [[], []], "train", 512,
                                   videos=[[_clip(2, 32, 32)], [_clip(2, 40, 20)]])
    assert batch.inputs["pixel_values_videos"].shape == (2, 2, 3, 32, 32)
    with torch.no_grad():
        assert torch.isfinite(tiny.model(**batch.inputs).loss)


def test_a_checkpoints_video_config_is_saved_again_and_the_files_load_without_vlmtune(tiny, tmp_path):
    tiny.processor.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "video_preprocessor_config.json").write_text(json.dumps(VIDEO_CONFIG))
    processor = llava_onevision.load_processor(tmp_path / "ckpt")
    assert processor.video_config == VIDEO_CONFIG
    processor.save_pretrained(tmp_path / "again")
    assert llava_onevision.load_processor(tmp_path / "again").video_config == VIDEO_CONFIG
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path / "again")], capture_output=True, text=True,
                         env=env, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["image"].startswith("LlavaOnevisionImageProcessor") and not got["vlmtune"]
    assert got["processor"] == "LlavaOnevisionProcessor" or "torchvision" in got["processor"].lower(), got


def test_a_packed_batch_with_a_video_gives_each_sample_its_padded_loss(tiny):
    """`train.packing` (declared: 1-D positions) with a video, an image and a text-only sample in one row: the video's
    and the image's features fill their own placeholders in order, so every sample's loss is its padded loss."""
    from vlmtune.models.loss import forward_losses
    from vlmtune.train.collate import pack

    samples = [_video_sample("v"), _vqa(), Sample(id="t", messages=[user("Which colour?", 0), assistant("green")])]
    batch = llava_onevision.encode(tiny.processor, samples, [[], [Image.new("RGB", (64, 32), "red")], []], "train",
                                   512, videos=[[_clip(4, 40, 24)], [], []])
    packed = pack(batch, llava_onevision.FAMILY, tiny.model)
    assert packed.inputs["input_ids"].shape[0] == 1 and packed.inputs["pixel_values_videos"].shape == (1, 4, 3, 32, 32)

    def losses(b):
        inputs = dict(b.inputs)
        labels = inputs.pop("labels")
        with torch.no_grad():
            return forward_losses(tiny.model.eval(), llava_onevision.FAMILY, inputs, labels, False, 0, b.segments)

    (padded, padded_counts), (sums, counts) = losses(batch), losses(packed)
    assert counts.tolist() == padded_counts.tolist()
    torch.testing.assert_close(sums, padded, rtol=1e-5, atol=1e-5)
