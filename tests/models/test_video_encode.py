"""The video contract, for every family that encodes videos natively (`ModelFamily.video_tokens`): a sample with a
`{"type": "video"}` slot and its `Video` trains on the answer + end token only, its loss is the model's, it generates,
it is refused (never truncated) when too long, `video_tokens` is exactly what `encode` expands, and a saved model and
processor give the same logits. Qwen2-VL's torchvision-free video pixels are checked against upstream's torchvision
video processor through tests/golden/qwen_video.npz (tests/golden/make_qwen_video_golden.py made it)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.video import Video
from vlmtune.infer import prompt_length
from vlmtune.models import FAMILIES, SampleTooLong
from vlmtune.models.labels import IGNORE_INDEX, trained_tokens
from vlmtune.models.loss import accepts_logits_to_keep, forward_losses, logit_prefix_of

GOLDEN = Path(__file__).parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))
from make_qwen_video_golden import CASES, TINY, frames  # noqa: E402

VIDEO_FAMILIES = sorted(name for name, f in FAMILIES.items() if f.video_tokens is not None)


def video_sample(i: int = 0, question: str = "What colour is the top?", answer: str = "red") -> Sample:
    return Sample(id=f"video-{i}", images=[], videos=["clip.mp4"], messages=[
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}, assistant(answer)])


def video(n: int = 3, size: tuple[int, int] = (40, 32), fps: float = 2.0) -> Video:
    return Video(frames(n, *size), [i / fps for i in range(n)], "clip.mp4", fps=fps)


def image(colour: str = "blue") -> Image.Image:
    return Image.new("RGB", (40, 40), colour)


def mixed_batch():
    """A video sample, an image sample and a text-only sample: samples, images, videos."""
    samples = [video_sample(0),
               Sample(id="image-1", images=["a.png"], messages=[user("What colour is the top?"), assistant("blue")]),
               Sample(id="text-2", images=[], messages=[user("What colour is the top?", 0), assistant("green")])]
    return samples, [[], [image()], []], [[video()], None, []]


def video_ids(processor) -> list[int]:
    """The ids the video features replace: Qwen's `<|video_pad|>`, SmolVLM's `<image>` (a global view per frame)."""
    return [getattr(processor, "video_token_id", None) or processor.image_token_id]


@pytest.fixture(scope="module", params=VIDEO_FAMILIES)
def family_and_tiny(request):
    torch.manual_seed(0)
    family = FAMILIES[request.param]
    return family, family.tiny()


def test_the_video_families():
    assert {"qwen2_vl", "qwen2_5_vl", "smolvlm"} <= set(VIDEO_FAMILIES)


def test_trained_tokens_are_the_answer_and_the_end_token(family_and_tiny):
    family, tiny = family_and_tiny
    samples, images, videos = mixed_batch()
    batch = family.encode(tiny.processor, samples, images, "train", 512, videos=videos)
    tok = tiny.processor.tokenizer
    for b, answer in enumerate(["red", "blue", "green"]):
        trained = trained_tokens(tok, batch.inputs["input_ids"][b].tolist(), batch.inputs["labels"][b].tolist())
        print(family.name, samples[b].id, trained)
        assert tok.convert_tokens_to_string(trained[:-1]).strip() == answer
        eos = tiny.model.generation_config.eos_token_id
        assert tok.convert_tokens_to_ids(trained[-1]) in (eos if isinstance(eos, list) else [eos])
    assert batch.n_target_tokens == int((batch.inputs["labels"] != IGNORE_INDEX).sum())


def test_video_slots_and_videos_must_agree(family_and_tiny):
    family, tiny = family_and_tiny
    with pytest.raises(ValueError, match="sample 'video-0': expected 1 video"):
        family.encode(tiny.processor, [video_sample()], [[]], "train", 512, videos=[[]])
    with pytest.raises(ValueError, match="sample 'video-0': expected 1 video"):
        family.encode(tiny.processor, [video_sample()], [[]], "train", 512)


def test_the_loop_loss_equals_the_model_loss_and_falls(family_and_tiny):
    family, tiny = family_and_tiny
    model = copy.deepcopy(tiny.model).eval()
    samples, images, videos = mixed_batch()
    batch = family.encode(tiny.processor, samples, images, "train", 512, videos=videos)
    labels = batch.inputs["labels"]
    inputs = {k: v for k, v in batch.inputs.items() if k != "labels"}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        with torch.no_grad():
            reference = model(**batch.inputs).loss
        sums, counts = forward_losses(model, family, inputs, labels, accepts_logits_to_keep(model),
                                      logit_prefix_of(family, model))
        ours = sums.sum() / counts.sum()
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
        ours.backward()
        opt.step()
        opt.zero_grad()
        losses.append(ours.item())
    assert losses[-1] < losses[0]


def test_the_video_changes_the_loss(family_and_tiny):
    """The video reaches the model: other frames, another loss (no silently dropped video input)."""
    family, tiny = family_and_tiny
    model = tiny.model.eval()
    losses = []
    for n in (2, 2, 4):
        batch = family.encode(tiny.processor, [video_sample()], [[]], "train", 512, videos=[[video(n)]])
        with torch.no_grad():
            losses.append(model(**batch.inputs).loss.item())
    batch = family.encode(tiny.processor, [video_sample()], [[]], "train", 512,
                          videos=[[Video(frames(2, 40, 32)[::-1], [0.0, 0.5], fps=2.0)]])
    with torch.no_grad():
        losses.append(model(**batch.inputs).loss.item())
    assert losses[0] == losses[1] and losses[2] != losses[0] and losses[3] != losses[0]


def test_generation_on_a_video_sample_is_bounded_and_stops(family_and_tiny):
    family, tiny = family_and_tiny
    model = copy.deepcopy(tiny.model).train()
    sample, clip = video_sample(), video()
    batch = family.encode(tiny.processor, [sample], [[]], "train", 512, videos=[[clip]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        model(**batch.inputs).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    prompt = family.encode(tiny.processor, [sample, sample], [[], []], "generate", 512, videos=[[clip], [clip]])
    assert "labels" not in prompt.inputs
    n_prompt = prompt_length(family, prompt)
    with torch.no_grad():
        bounded = model.generate(**prompt.inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
        out = model.generate(**prompt.inputs, max_new_tokens=8, do_sample=False)
    assert bounded.shape[1] - n_prompt == 2
    new = out[0, n_prompt:].tolist()
    assert tiny.processor.tokenizer.decode(new, skip_special_tokens=True).strip() == "red"
    eos = model.generation_config.eos_token_id
    assert any(t in (eos if isinstance(eos, list) else [eos]) for t in new) and len(new) < 8


def test_a_video_that_does_not_fit_is_refused_never_truncated(family_and_tiny):
    family, tiny = family_and_tiny
    clip = video(8, (64, 64))
    n_video = family.video_tokens(tiny.processor, clip)
    batch = family.encode(tiny.processor, [video_sample(7)], [[]], "train", 512, videos=[[clip]])
    fits = int(batch.inputs["attention_mask"].sum())
    family.encode(tiny.processor, [video_sample(7)], [[]], "train", fits, videos=[[clip]])  # exactly: fits
    with pytest.raises(SampleTooLong, match=rf"sample 'video-7': {fits} tokens \(0 image tokens \+ {n_video} video"):
        family.encode(tiny.processor, [video_sample(7)], [[]], "train", fits - 1, videos=[[clip]])
    with pytest.raises(SampleTooLong, match="sample 'video-7'"):
        family.encode(tiny.processor, [video_sample(7)], [[]], "generate", fits - 10, videos=[[clip]])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("size", [(40, 32), (64, 64), (20, 90)])
def test_video_tokens_are_what_encode_expands(family_and_tiny, n, size):
    family, tiny = family_and_tiny
    clip = video(n, size)
    batch = family.encode(tiny.processor, [video_sample()], [[]], "generate", 2048, videos=[[clip]])
    ids = batch.inputs["input_ids"][0]
    assert int(torch.isin(ids, torch.tensor(video_ids(tiny.processor))).sum()) == family.video_tokens(tiny.processor,
                                                                                                       clip)


def test_save_and_reload_gives_identical_logits(family_and_tiny, tmp_path):
    from transformers import AutoModelForImageTextToText

    family, tiny = family_and_tiny
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    processor = family.load_processor(tmp_path)
    samples, images, videos = mixed_batch()
    b = family.encode(processor, samples, images, "train", 512, videos=videos)
    b0 = family.encode(tiny.processor, samples, images, "train", 512, videos=videos)
    assert b.inputs.keys() == b0.inputs.keys()
    for k, v in b.inputs.items():
        assert torch.equal(v, b0.inputs[k]) if hasattr(v, "shape") else v == b0.inputs[k], k
    with torch.no_grad():
        assert torch.equal(model(**b.inputs).logits, tiny.model.eval()(**b0.inputs).logits)


def test_qwen3_vl_names_a_video_it_cannot_take():
    family = FAMILIES["qwen3_vl"]
    processor = family.tiny().processor
    with pytest.raises(ValueError, match=r"video 'clip.mp4': 402x2 frames, an aspect ratio over Qwen3-VL's 200"):
        family.encode(processor, [video_sample()], [[]], "train", 512, videos=[[video(2, (402, 2))]])


# --- Qwen2-VL / Qwen2.5-VL: the video pixels are upstream's ---------------------------------------------------------

def _golden():
    return np.load(GOLDEN / "qwen_video.npz")


def _tiny_settings_processor(family: str):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlmtune.models import qwen2_vl

    processor = qwen2_vl.image_only_processor()(Qwen2VLImageProcessorPil(**TINY), qwen2_vl.build_tokenizer(),
                                                chat_template=qwen2_vl.CHAT_TEMPLATE)
    processor.upstream = qwen2_vl.UPSTREAM[family]
    return processor


@pytest.mark.parametrize("case", sorted(CASES))
def test_qwen_video_pixels_equal_upstream_video_processor(case):
    """pixel_values_videos / video_grid_thw equal transformers' Qwen2VLVideoProcessor's (torchvision) for the same
    frames: to float rounding where the frames need no resize (odd and even frame counts, one frame), to the
    difference of PIL's and torchvision's bicubic resampling (about one 8-bit level) where they are resized."""
    from vlmtune.models import qwen2_vl

    golden = _golden()
    n, w, h = CASES[case]
    clip = Video(frames(n, w, h), [i / 2 for i in range(n)], fps=2.0)
    processor = _tiny_settings_processor("qwen2_vl")
    out = qwen2_vl.video_inputs(processor, [clip])
    assert out["video_grid_thw"].tolist() == golden[f"{case}/video_grid_thw"].tolist()
    ref = torch.from_numpy(golden[f"{case}/pixel_values_videos"])
    assert out["pixel_values_videos"].shape == ref.shape and out["pixel_values_videos"].dtype == torch.float32
    if case == "resized":
        assert (out["pixel_values_videos"] - ref).abs().mean() < 2e-3
        torch.testing.assert_close(out["pixel_values_videos"], ref, atol=0.03, rtol=0)
    else:
        torch.testing.assert_close(out["pixel_values_videos"], ref, atol=1e-6, rtol=0)
    t, gh, gw = golden[f"{case}/video_grid_thw"][0].tolist()
    assert qwen2_vl.video_tokens(processor, clip) == t * gh * gw // TINY["merge_size"] ** 2


def test_qwen2_5_vl_seconds_per_grid_come_from_the_fps_or_the_timestamps():
    from vlmtune.models import qwen2_vl

    processor = _tiny_settings_processor("qwen2_5_vl")
    clips = [Video(frames(4, 16, 16), [0, 0.5, 1, 1.5], fps=2.0),  # 2 frames per temporal patch at 2 fps: 1 s
             Video(frames(3, 16, 16), [0.0, 0.25, 0.5]),  # no fps: the timestamps' rate, 4 fps
             Video(frames(1, 16, 16), [3.0])]  # one frame, no fps: upstream's default 24 fps
    assert qwen2_vl.video_inputs(processor, clips)["second_per_grid_ts"] == [1.0, 0.5, 2 / 24]
    assert "second_per_grid_ts" not in qwen2_vl.video_inputs(_tiny_settings_processor("qwen2_vl"), clips)


def test_a_checkpoints_video_preprocessor_config_sets_the_frame_pixels(tmp_path):
    """A video_preprocessor_config.json (upstream's video processor prefers it to preprocessor_config.json) bounds
    the frames' pixels, and a saved processor writes it again."""
    family = FAMILIES["qwen2_vl"]
    tiny = family.tiny()
    tiny.processor.save_pretrained(tmp_path)
    clip = video(2, (64, 64))
    before = family.video_tokens(family.load_processor(tmp_path), clip)
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 16 * 16, "longest_edge": 32 * 32}, "video_processor_type": "Qwen2VLVideoProcessor"}))
    processor = family.load_processor(tmp_path)
    assert processor.video_size == {"shortest_edge": 256, "longest_edge": 1024}
    assert family.video_tokens(processor, clip) == 4 < before  # 32x32 pixels: 4x4 patches of 8, merged 2x2
    processor.save_pretrained(tmp_path / "again")
    assert family.load_processor(tmp_path / "again").video_size == processor.video_size


# --- SmolVLM2: a video is frames with timestamps, as SmolVLMProcessor writes it ---------------------------------------

def test_smolvlm_video_prompt_is_upstream_replace_video_token(monkeypatch):
    """`video_prompt` equals SmolVLMProcessor.replace_video_token (which needs num2words, absent here: it is given
    vlmtune's `number_words`, checked against num2words' output below) for the same frames and timestamps."""
    from transformers.models.smolvlm import processing_smolvlm
    from transformers.video_utils import VideoMetadata

    from vlmtune.models import smolvlm

    processor = FAMILIES["smolvlm"].tiny().processor
    monkeypatch.setattr(processing_smolvlm, "num2words", smolvlm.number_words)
    stub = type("Stub", (), {"image_seq_len": processor.image_seq_len, "image_token": processor.image_token,
                             "fake_image_token": processor.fake_image_token,
                             "global_image_token": processor.global_image_tag})()
    for n, fps in [(1, 1.0), (3, 1.0), (21, 0.5), (7, 3.0)]:
        clip = Video(frames(n, 16, 16), [i / fps for i in range(n)], fps=fps)
        metadata = VideoMetadata(total_num_frames=n, fps=fps, frames_indices=list(range(n)))
        upstream = processing_smolvlm.SmolVLMProcessor.replace_video_token(stub, {"video_metadata": [metadata]}, 0)
        assert smolvlm.video_prompt(processor, clip) == upstream


def test_smolvlm_number_words_are_num2words():
    from vlmtune.models.smolvlm import number_words

    # num2words 0.5.14's English cardinals
    assert [number_words(i) for i in (0, 1, 13, 20, 21, 45, 99, 100, 101, 110, 121, 200, 999)] == [
        "zero", "one", "thirteen", "twenty", "twenty-one", "forty-five", "ninety-nine", "one hundred",
        "one hundred and one", "one hundred and ten", "one hundred and twenty-one", "two hundred",
        "nine hundred and ninety-nine"]
    with pytest.raises(ValueError, match="1000 frames"):
        number_words(1000)


def test_smolvlm_video_batches_encode_images_as_the_processor_does():
    """The video path (per-slot units) on a batch of images and text gives exactly the processor's own batch
    (idefics3.encode): the same ids, labels, pixels and masks, in both modes."""
    from vlmtune.models import idefics3, smolvlm

    processor = FAMILIES["smolvlm"].tiny().processor
    samples, images, _ = mixed_batch()
    samples, images = samples[1:], images[1:]
    two = Sample(id="two", images=["a.png", "b.png"], messages=[user("Both?", 2), assistant("red and blue")])
    samples, images = [*samples, two], [*images, [image("red"), Image.new("RGB", (64, 20), "blue")]]
    for mode in ("train", "generate"):
        ours = smolvlm.encode_units(processor, samples, images, mode, 512, [[] for _ in samples])
        upstream = idefics3.encode(processor, samples, images, mode, 512)
        assert ours.inputs.keys() == upstream.inputs.keys()
        for k, v in ours.inputs.items():
            assert torch.equal(v, upstream.inputs[k]), (mode, k)
        assert ours.n_target_tokens == upstream.n_target_tokens


def test_a_bf16_model_trains_and_generates_on_videos_through_the_one_cast(family_and_tiny):
    """`Batch.to(device, bf16)`: the video pixels are cast with the images'; Qwen2.5-VL's seconds per temporal patch
    stay exact floats (as a float tensor, bf16 would make 2/24 0.0835, which can shift rotary time positions)."""
    family, tiny = family_and_tiny
    model = copy.deepcopy(tiny.model).to(torch.bfloat16)
    samples, images, videos = mixed_batch()
    batch = family.encode(tiny.processor, samples, images, "train", 512, videos=videos).to("cpu", torch.bfloat16)
    for k in ("pixel_values_videos", "pixel_values"):
        if k in batch.inputs:
            assert batch.inputs[k].dtype == torch.bfloat16
    if "second_per_grid_ts" in batch.inputs:
        assert batch.inputs["second_per_grid_ts"] == [1.0]
    loss = model(**batch.inputs).loss
    assert torch.isfinite(loss)
    loss.backward()
    prompt = family.encode(tiny.processor, samples, images, "generate", 512, videos=videos).to("cpu", torch.bfloat16)
    with torch.no_grad():
        out = model.eval().generate(**prompt.inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert out.shape[1] - prompt_length(family, prompt) == 2


@pytest.mark.parametrize("name", [n for n in VIDEO_FAMILIES if FAMILIES[n].pack_inputs is not None])
def test_a_packed_batch_with_a_video_gives_each_sample_its_padded_loss(name):
    """`train.packing` with a video sample (Qwen2-VL / 2.5-VL / 3-VL): `pack_inputs` asks the model's `get_rope_index`
    with the video grids (which Qwen3-VL splits per temporal patch, each with its own wrappers and timestamp), so
    packed == padded per sample, and the video tokens' M-RoPE positions are not the text's (2x2 tokens a patch)."""
    from vlmtune.train.collate import pack

    family = FAMILIES[name]
    torch.manual_seed(0)
    tiny = family.tiny()
    samples, images, _ = mixed_batch()
    videos = [[video(4, (64, 64))], None, []]
    batch = family.encode(tiny.processor, samples, images, "train", 512, videos=videos)
    packed = pack(batch, family, tiny.model)

    def losses(b):
        inputs = dict(b.inputs)
        labels = inputs.pop("labels")
        with torch.no_grad():
            return forward_losses(tiny.model.eval(), family, inputs, labels, False, 0, b.segments)

    (padded, padded_counts), (sums, counts) = losses(batch), losses(packed)
    assert counts.tolist() == padded_counts.tolist()
    torch.testing.assert_close(sums, padded, rtol=1e-5, atol=1e-5)
    positions = packed.inputs["position_ids"][:, 0]
    is_video = packed.inputs["input_ids"][0] == tiny.processor.video_token_id
    assert is_video.any() and not torch.equal(positions[1:, is_video], positions[:1, is_video].expand(3, -1))
