"""Qwen2-VL and Qwen2.5-VL: multi-turn labels, dynamic-resolution image tokens in mixed batches, and loading a
checkpoint laid out like the official ones without torchvision."""

import json

import pytest
import torch
from PIL import Image

from vlmtune.config import ModelCfg
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import FAMILIES
from vlmtune.models.labels import trained_tokens


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def family_and_tiny(request):
    family = FAMILIES[request.param]
    torch.manual_seed(0)
    return family, family.tiny()


def _img(size=(40, 40)):
    return Image.new("RGB", size, "red")


def test_multi_turn_trains_every_answer_and_its_end_token(family_and_tiny):
    family, tiny = family_and_tiny
    tok = tiny.processor.tokenizer
    s = Sample(id="mt", images=["a.png"], messages=[
        user("What colour is the top?"), assistant("red"),
        user("And the trousers?", n_images=0), assistant("blue")])
    b = family.encode(tiny.processor, [s], [[_img()]], "train", 256)
    got = trained_tokens(tok, b.inputs["input_ids"][0], b.inputs["labels"][0])
    print(family.name, "multi-turn trained tokens:", got)
    red, blue = (tok.convert_ids_to_tokens(tok(answer).input_ids) for answer in ("red", "blue"))
    assert got == red + ["<|im_end|>"] + blue + ["<|im_end|>"]


def test_mixed_batch_image_tokens_follow_each_image_size(family_and_tiny):
    family, tiny = family_and_tiny
    processor = tiny.processor
    two = Sample(id="two", images=["a.png", "b.png"], messages=[user("Describe the image.", n_images=2),
                                                                 assistant("red")])
    text_only = Sample(id="text", images=[], messages=[user("What colour is red?", n_images=0), assistant("red")])
    one = Sample(id="one", images=["c.png"], messages=[user("What colour is the top?"), assistant("red")])
    sizes = [(64, 32), (200, 100), (40, 40)]  # (200, 100) is scaled down to max_pixels
    images = [[_img(sizes[0]), _img(sizes[1])], [], [_img(sizes[2])]]
    b = family.encode(processor, [two, text_only, one], images, "train", 512)
    ids = b.inputs["input_ids"]
    per_image = [family.image_tokens(processor, *size) for size in sizes]
    assert len(set(per_image)) > 1, per_image
    image_id = processor.image_token_id
    assert (ids == image_id).sum(dim=1).tolist() == [per_image[0] + per_image[1], 0, per_image[2]]
    merge = processor.image_processor.merge_size
    assert (b.inputs["image_grid_thw"].prod(dim=1) // merge**2).tolist() == per_image
    # M-RoPE needs to know which positions are image tokens
    assert torch.equal(b.inputs["mm_token_type_ids"], (ids == image_id).long())
    assert all(trained_tokens(processor.tokenizer, ids[k], b.inputs["labels"][k]) == ["red", "<|im_end|>"]
               for k in range(3))
    assert torch.isfinite(tiny.model(**b.inputs).loss)


def test_load_reads_an_official_checkpoint_layout_without_torchvision(family_and_tiny, tmp_path):
    family, tiny = family_and_tiny
    from vlmtune.models.qwen2_vl import CHAT_TEMPLATE

    tiny.model.save_pretrained(tmp_path)
    tiny.processor.tokenizer.save_pretrained(tmp_path)
    image_processor = tiny.processor.image_processor
    # as on the hub: the image processor config names Qwen2VLProcessor (which needs a torchvision video processor)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": image_processor.size["shortest_edge"], "max_pixels": image_processor.size["longest_edge"],
        "patch_size": image_processor.patch_size, "temporal_patch_size": 2, "merge_size": image_processor.merge_size,
        "image_mean": image_processor.image_mean, "image_std": image_processor.image_std,
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor",
    }))
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    loaded = family.load(ModelCfg(family=family.name, path=str(tmp_path)))
    assert loaded.family == family.name and type(loaded.model) is type(tiny.model)
    sample = Sample(id="q", images=["a.png"], messages=[user("What colour is the top?"), assistant("red")])
    got = family.encode(loaded.processor, [sample], [[_img((64, 32))]], "train", 256)
    want = family.encode(tiny.processor, [sample], [[_img((64, 32))]], "train", 256)
    assert got.inputs.keys() == want.inputs.keys()
    assert all(torch.equal(got.inputs[k], want.inputs[k]) for k in got.inputs)
