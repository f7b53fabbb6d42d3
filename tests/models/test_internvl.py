"""InternVL (-hf): dynamic tiling decides each image's tokens (exact for every aspect ratio), mixed batches pad on the
right for training although InternVLProcessor pads on the left, a checkpoint laid out like the official ones
(torchvision image processor named, crop_to_patches false, a video processor config) loads without torchvision, and
videos are upstream's (InternVLVideoProcessor's frames and InternVLProcessor's expansion, through
tests/golden/internvl_video.npz, which tests/golden/make_internvl_video_golden.py made with torchvision)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmtune.config import ModelCfg
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.video import Video
from vlmtune.models import FAMILIES, internvl
from vlmtune.models.labels import trained_tokens

GOLDEN = Path(__file__).parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))
import make_internvl_video_golden as golden_cases  # noqa: E402

FAMILY = FAMILIES["internvl"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return FAMILY.tiny()


def _img(size):
    return Image.new("RGB", size, "red")


# the tiny processor: 32x32 tiles, 1..6 of them on the grid whose aspect ratio is closest to the image's (ties: the
# larger grid while the image covers more than half of it), + a thumbnail tile when the grid has several; 4 tokens
# a tile, + <img> </img>
@pytest.mark.parametrize("size, tiles", [((32, 32), 1), ((40, 40), 1), ((64, 32), 2 + 1), ((32, 64), 2 + 1),
                                         ((100, 20), 5 + 1), ((96, 64), 6 + 1), ((200, 200), 4 + 1),
                                         ((33, 97), 3 + 1), ((1000, 10), 6 + 1)])
def test_image_tokens_follow_the_tiling_exactly(tiny, size, tiles):
    processor = tiny.processor
    assert FAMILY.image_tokens(processor, *size) == 4 * tiles + 2
    sample = Sample(id="s", images=["a.png"], messages=[user("What colour is the top?"), assistant("red")])
    b = FAMILY.encode(processor, [sample], [[_img(size)]], "train", 512)
    assert b.inputs["pixel_values"].shape[0] == tiles
    assert int((b.inputs["input_ids"] == processor.image_token_id).sum()) == 4 * tiles


def test_mixed_batch_pads_right_for_training_and_left_for_generation(tiny):
    processor = tiny.processor
    two = Sample(id="two", images=["a.png", "b.png"], messages=[user("Describe the image.", n_images=2),
                                                                 assistant("red")])
    text_only = Sample(id="text", images=[], messages=[user("What colour is red?", n_images=0), assistant("red")])
    one = Sample(id="one", images=["c.png"], messages=[user("What colour is the top?"), assistant("red")])
    sizes = [(64, 32), (200, 200), (40, 40)]
    images = [[_img(sizes[0]), _img(sizes[1])], [], [_img(sizes[2])]]
    b = FAMILY.encode(processor, [two, text_only, one], images, "train", 512)
    ids, mask = b.inputs["input_ids"], b.inputs["attention_mask"]
    per_image = [FAMILY.image_tokens(processor, *size) - 2 for size in sizes]
    assert (ids == processor.image_token_id).sum(dim=1).tolist() == [per_image[0] + per_image[1], 0, per_image[2]]
    assert b.inputs["pixel_values"].shape[0] == sum(per_image) // 4  # every tile of every image, in order
    assert mask[:, 0].all() and not mask[:, -1].all()  # right padding
    assert all(trained_tokens(processor.tokenizer, ids[k], b.inputs["labels"][k]) == ["red", "<|im_end|>"]
               for k in range(3))
    assert torch.isfinite(tiny.model(**b.inputs).loss)
    g = FAMILY.encode(processor, [two, text_only, one], images, "generate", 512)
    assert g.inputs["attention_mask"][:, -1].all() and not g.inputs["attention_mask"][:, 0].all()  # left padding


def test_load_reads_an_official_checkpoint_layout_without_torchvision(tiny, tmp_path):
    from vlmtune.models.internvl import CHAT_TEMPLATE

    tiny.model.save_pretrained(tmp_path)
    tiny.processor.tokenizer.save_pretrained(tmp_path)
    ip = tiny.processor.image_processor
    # as on the hub: the torchvision image processor, crop_to_patches false (InternVLProcessor switches it on when
    # called), a video processor config, the processor's image_seq_length
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "crop_to_patches": False, "min_patches": 1, "max_patches": ip.max_patches, "size": {"height": 32, "width": 32},
        "image_mean": list(ip.image_mean), "image_std": list(ip.image_std), "do_resize": True, "resample": 3,
        "image_processor_type": "GotOcr2ImageProcessorFast", "processor_class": "InternVLProcessor"}))
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({
        "video_processor_type": "InternVLVideoProcessor", "processor_class": "InternVLProcessor"}))
    (tmp_path / "processor_config.json").write_text(json.dumps({
        "image_seq_length": tiny.processor.image_seq_length, "processor_class": "InternVLProcessor"}))
    (tmp_path / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    loaded = FAMILY.load(ModelCfg(family="internvl", path=str(tmp_path)))
    assert type(loaded.model) is type(tiny.model) and loaded.processor.image_processor.crop_to_patches
    sample = Sample(id="q", images=["a.png"], messages=[user("What colour is the top?"), assistant("red")])
    got = FAMILY.encode(loaded.processor, [sample], [[_img((96, 64))]], "train", 256)
    want = FAMILY.encode(tiny.processor, [sample], [[_img((96, 64))]], "train", 256)
    assert got.inputs.keys() == want.inputs.keys()
    assert all(torch.equal(got.inputs[k], want.inputs[k]) for k in got.inputs)


def _clip(n, w, h):
    return Video(golden_cases.frames(n, w, h), [i / 2 for i in range(n)], "clip.mp4", fps=2.0)


def _assert_upstream_pixels(ours, ref):
    """Exact to float rounding where no frame is resized (32x32 frames, 64x32 image tiles); else within PIL's and
    torchvision's antialiased bicubic difference: one 8-bit level (0.0146 after CLIP's std) on these smooth
    frames, up to ~8 levels at the sharp wraps of their modular pattern when a frame is squeezed 2.8x (tall), on
    under 2% of the values, about a tenth of a level on average."""
    assert ours.shape == ref.shape and ours.dtype == np.float32
    diff = np.abs(ours - ref)
    assert diff.max() < 0.11 and diff.mean() < 3e-3
    assert (diff > 2 / 255 / 0.26).mean() < 0.02


@pytest.mark.parametrize("case", sorted(golden_cases.CASES))
def test_video_frames_are_upstream_video_processors(tiny, case):
    """`video_pixels` (PIL) against InternVLVideoProcessor (torchvision) at the tiny settings: every frame one 32x32
    tile, resized down, up, squeezed, or not at all (then equal to float rounding)."""
    ours = internvl.video_pixels(tiny.processor, _clip(*golden_cases.CASES[case]))
    ref = np.load(GOLDEN / "internvl_video.npz")[f"{case}/pixel_values_videos"]
    if case == "exact":
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
    _assert_upstream_pixels(ours, ref)


def _golden_batch(processor, mode="generate"):
    samples = [Sample(id=f"s{i}", images=["a.png"] if i == 0 else [], videos=["clip.mp4"], messages=messages)
               for i, messages in enumerate(golden_cases.conversations())]
    if mode == "train":
        samples = [Sample(id=s.id, images=s.images, videos=s.videos, messages=[*s.messages, assistant("red")])
                   for s in samples]
    videos = [[_clip(*v)] for v in golden_cases.BATCH_VIDEOS]
    return FAMILY.encode(processor, samples, [[golden_cases.batch_image()], []], mode, 512, videos=videos)


def test_a_video_batch_is_what_internvl_processor_gives(tiny):
    """A batch of an image + video + text sample and a text + video sample: each `<video>` becomes upstream's
    "Frame<i>: <img>...</img>" lines (the prompt text equal to InternVLProcessor's), and `pixel_values` holds the
    image's tiles then the first video's frames then the second's, as upstream merges them."""
    golden = np.load(GOLDEN / "internvl_video.npz")
    batch = _golden_batch(tiny.processor)
    tok, ids, mask = tiny.processor.tokenizer, batch.inputs["input_ids"], batch.inputs["attention_mask"]
    texts = [tok.decode(ids[b][mask[b].bool()]) for b in range(2)]
    assert texts == json.loads(golden["batch/text"].tobytes())
    assert "Look: Frame1: <img>" + "<IMG_CONTEXT>" * 4 + "</img>\nFrame2: " in texts[1]
    assert mask[:, -1].all() and not mask[1, 0]  # left padding to generate, as upstream
    _assert_upstream_pixels(batch.inputs["pixel_values"].numpy(), golden["batch/pixel_values"])
    n_tiles = [3, 3, 3]  # the 64x32 image: 2 tiles + a thumbnail; then 3 frames per video
    assert (ids == tiny.processor.image_token_id).sum().item() == 4 * sum(n_tiles)


def test_a_video_batch_trains_on_the_answers_only_and_reaches_the_model(tiny):
    batch = _golden_batch(tiny.processor, "train")
    ids, labels = batch.inputs["input_ids"], batch.inputs["labels"]
    assert batch.inputs["attention_mask"][:, 0].all()  # right padding to train
    assert all(trained_tokens(tiny.processor.tokenizer, ids[b], labels[b]) == ["red", "<|im_end|>"] for b in range(2))
    with torch.no_grad():
        loss = tiny.model.eval()(**batch.inputs).loss
        batch.inputs["pixel_values"][3:6] = 0  # the first video's frames
        assert tiny.model(**batch.inputs).loss != loss


def test_frames_follow_the_checkpoints_video_config(tiny, tmp_path):
    """A video_preprocessor_config.json sets the frames' size (over InternVLVideoProcessor's defaults: 384x384, CLIP
    mean / std where it names none), and a saved processor writes it again; without one, the image settings."""
    tiny.processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert saved["size"] == {"height": 32, "width": 32} and saved["video_processor_type"] == "InternVLVideoProcessor"
    clip = _clip(2, 40, 36)
    assert internvl.video_pixels(FAMILY.load_processor(tmp_path), clip).shape == (2, 3, 32, 32)
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({**saved, "size": {"height": 16, "width": 24}}))
    processor = FAMILY.load_processor(tmp_path)
    assert internvl.video_pixels(processor, clip).shape == (2, 3, 16, 24)
    assert FAMILY.video_tokens(processor, clip) == 8  # still image_seq_length a frame, as upstream
    processor.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again/video_preprocessor_config.json").read_text())["size"] == {
        "height": 16, "width": 24}
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({"video_processor_type": saved[
        "video_processor_type"]}))
    assert internvl.video_settings(FAMILY.load_processor(tmp_path))["size"] == {"height": 384, "width": 384}


def test_a_packed_video_batch_gives_each_sample_its_padded_loss(tiny):
    """`train.packing` with video samples: the frames stay in `pixel_values` in token order, so a packed row (1-D
    positions per sample, no padding) gives each sample the loss it has padded."""
    from vlmtune.models.loss import forward_losses
    from vlmtune.train.collate import pack

    batch = _golden_batch(tiny.processor, "train")
    packed = pack(batch, FAMILY, tiny.model)
    assert packed.inputs["input_ids"].shape == (1, int(batch.inputs["attention_mask"].sum()))

    def losses(b):
        inputs = dict(b.inputs)
        labels = inputs.pop("labels")
        with torch.no_grad():
            return forward_losses(tiny.model.eval(), FAMILY, inputs, labels, False, 0, b.segments)

    (padded, padded_counts), (sums, counts) = losses(batch), losses(packed)
    assert counts.tolist() == padded_counts.tolist() == [2, 2]
    torch.testing.assert_close(sums, padded, rtol=1e-5, atol=1e-5)


def test_the_video_path_encodes_images_and_text_as_the_processor_does(tiny):
    """`encode_videos` (one image at a time through the processor, ids built here) on a batch without video gives
    exactly the processor's own batch (`encode`): the same ids, mask, labels and pixels, in both modes."""
    two = Sample(id="two", images=["a.png", "b.png"], messages=[user("Both?", n_images=2), assistant("red and blue")])
    text_only = Sample(id="text", images=[], messages=[user("What colour is red?", n_images=0), assistant("red")])
    one = Sample(id="one", images=["c.png"], messages=[user("What colour is the top?"), assistant("blue")])
    images = [[_img((64, 32)), Image.new("RGB", (100, 20), "blue")], [], [_img((40, 40))]]
    for mode in ("train", "generate"):
        ours = internvl.encode_videos(tiny.processor, [two, text_only, one], images, mode, 512, [[], [], []])
        upstream = FAMILY.encode(tiny.processor, [two, text_only, one], images, mode, 512)
        assert ours.inputs.keys() == upstream.inputs.keys()
        for k, v in ours.inputs.items():
            assert torch.equal(v, upstream.inputs[k]), (mode, k)
        assert ours.n_target_tokens == upstream.n_target_tokens
