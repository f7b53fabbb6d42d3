"""InternVL (-hf): dynamic tiling decides each image's tokens (exact for every aspect ratio), mixed batches pad on the
right for training although InternVLProcessor pads on the left, and a checkpoint laid out like the official ones
(torchvision image processor named, crop_to_patches false, a video processor config) loads without torchvision."""

import json

import pytest
import torch
from PIL import Image

from vlmtune.config import ModelCfg
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import FAMILIES
from vlmtune.models.labels import trained_tokens

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
