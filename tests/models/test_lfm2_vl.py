"""LFM2-VL: a sample's logits are the same alone and in a padded batch (right padding for training, left for
generation) although LFM2's short convolutions look back across positions; image tokens follow the processor's
layout (single image or tiles + thumbnail); the PIL port of the torchvision-only image processor gives what
transformers' own gives, and the processor vlmtune saves loads with plain AutoProcessor (in vLLM's environment,
which has torchvision)."""

import json
import subprocess

import pytest
import torch
from PIL import Image

from vlmtune.config import ModelCfg
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import FAMILIES
from vlmtune.models.labels import IGNORE_INDEX

FAMILY = FAMILIES["lfm2_vl"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    loaded = FAMILY.tiny()
    loaded.model.eval()
    with torch.no_grad():  # sharpened: at random init (std 0.02) the convolutions' gated products barely show
        for layer in loaded.model.model.language_model.layers:
            if hasattr(layer, "conv"):
                layer.conv.in_proj.weight.mul_(20)
                layer.conv.conv.weight.mul_(10)
    return loaded


def _img(size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy())


SAMPLES = [
    (Sample(id="long", images=["a.png"], messages=[user("What colour is the top?"), assistant("a red top")]),
     [_img((96, 64))]),
    (Sample(id="short", images=[], messages=[user("What colour?", n_images=0), assistant("red")]), []),
    (Sample(id="small", images=["b.png"], messages=[user("Describe the image."), assistant("blue")]),
     [_img((40, 40), 1)]),
]


def _per_sample_losses(model, batch):
    logits = model(**{k: v for k, v in batch.inputs.items() if k != "labels"}).logits[:, :-1]
    labels = batch.inputs["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    return [float(loss[b][labels[b] != IGNORE_INDEX].mean()) for b in range(len(labels))]


def test_right_padding_leaves_each_samples_loss_unchanged(tiny):
    samples, images = zip(*SAMPLES, strict=True)
    batch = FAMILY.encode(tiny.processor, list(samples), list(images), "train", 512)
    assert not batch.inputs["attention_mask"].all()  # the short samples are padded
    with torch.no_grad():
        together = _per_sample_losses(tiny.model, batch)
        alone = [_per_sample_losses(tiny.model, FAMILY.encode(tiny.processor, [s], [i], "train", 512))[0]
                 for s, i in SAMPLES]
    assert together == pytest.approx(alone, abs=1e-5)


def test_left_padding_leaves_each_samples_next_token_unchanged(tiny):
    samples, images = zip(*SAMPLES, strict=True)
    batch = FAMILY.encode(tiny.processor, list(samples), list(images), "generate", 512)
    assert not batch.inputs["attention_mask"][:, 0].all()  # left padded
    with torch.no_grad():
        together = tiny.model(**batch.inputs).logits[:, -1]
        for k, (s, i) in enumerate(SAMPLES):
            alone = tiny.model(**FAMILY.encode(tiny.processor, [s], [i], "generate", 512).inputs).logits[0, -1]
            torch.testing.assert_close(together[k], alone, atol=1e-5, rtol=1e-4)


# the tiny processor: one token per 16x16 pixels; an image up to 2x 4 tokens' pixels is resized whole (between 1 and
# 4 tokens), a larger one is cut into 2-4 tiles of 32x32 (4 tokens each) + a thumbnail
@pytest.mark.parametrize("size, tokens", [((32, 32), 4), ((16, 16), 1), ((64, 32), 2), ((200, 200), 4 * 4 + 4),
                                          ((96, 64), 4 * 4 + 2)])
def test_image_tokens_follow_the_layout(tiny, size, tokens):
    assert FAMILY.image_tokens(tiny.processor, *size) == tokens
    sample = Sample(id="s", images=["a.png"], messages=[user("What colour is the top?"), assistant("red")])
    batch = FAMILY.encode(tiny.processor, [sample], [[_img(size)]], "train", 512)
    assert int((batch.inputs["input_ids"] == tiny.processor.image_token_id).sum()) == tokens


def test_load_reads_a_checkpoint_that_names_the_torchvision_image_processor(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())["image_processor"]
    assert config["image_processor_type"] == "Lfm2VlImageProcessor"  # upstream's name, not the port's
    loaded = FAMILY.load(ModelCfg(family="lfm2_vl", path=str(tmp_path)))
    samples, images = zip(*SAMPLES, strict=True)
    got = FAMILY.encode(loaded.processor, list(samples), list(images), "train", 512).inputs
    want = FAMILY.encode(tiny.processor, list(samples), list(images), "train", 512).inputs
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


UPSTREAM = """
import json, sys
import numpy as np
from PIL import Image
from transformers import AutoProcessor
p = AutoProcessor.from_pretrained(sys.argv[1])
out = p(text=[t for t in json.loads(sys.argv[2])], images=[[Image.open(f)] for f in json.loads(sys.argv[3])],
        padding=True, return_tensors="np")
print(json.dumps({"class": type(p.image_processor).__name__, "input_ids": out["input_ids"].tolist(),
                  "pixel_values": out["pixel_values"].tolist(), "mask": out["pixel_attention_mask"].tolist(),
                  "shapes": out["spatial_shapes"].tolist()}))
"""


@pytest.mark.vllm
def test_the_pil_port_gives_what_transformers_torchvision_processor_gives(tiny, tmp_path):
    """The saved processor through plain AutoProcessor in vLLM's environment (transformers' torchvision
    Lfm2VlImageProcessor): the same ids, patch layout and masks, and pixel values within two intensity levels
    (PIL's and torchvision's resizes round differently)."""
    from vlmtune.serve.vllm import find_vllm_python

    python = find_vllm_python()
    tiny.processor.save_pretrained(tmp_path)
    sizes = [(32, 32), (40, 40), (64, 32), (100, 20), (96, 64), (200, 200), (33, 97)]
    files = []
    for k, size in enumerate(sizes):
        _img(size, k).save(tmp_path / f"{k}.png")
        files.append(str(tmp_path / f"{k}.png"))
    texts = ["<image>What colour?"] * len(sizes)
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([str(python), "-c", UPSTREAM, str(tmp_path), json.dumps(texts), json.dumps(files)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = json.loads(run.stdout.strip().splitlines()[-1])
    assert theirs["class"].startswith("Lfm2VlImageProcessor")
    ours = tiny.processor(text=texts, images=[[Image.open(f)] for f in files], padding=True, return_tensors="pt")
    assert ours["input_ids"].tolist() == theirs["input_ids"]
    assert ours["pixel_attention_mask"].tolist() == theirs["mask"]
    assert ours["spatial_shapes"].tolist() == theirs["shapes"]
    torch.testing.assert_close(ours["pixel_values"], torch.tensor(theirs["pixel_values"]), atol=2 / 255 * 2 + 1e-6,
                               rtol=0)


def test_packing_is_off_because_a_packed_row_mixes_the_convolutions_of_neighbouring_samples(tiny):
    """What `packing=False` rests on: packed back to back (per-sample positions, no attention mask, as
    `train.packing` does), every sample after the first gets another loss than padded, since the short
    convolutions of LFM2 read the previous sample's last tokens."""
    from vlmtune.models.loss import forward_losses
    from vlmtune.train.collate import pack

    assert not FAMILY.packing
    samples, images = zip(*SAMPLES, strict=True)
    batch = FAMILY.encode(tiny.processor, list(samples), list(images), "train", 512)
    packed = pack(batch, FAMILY, tiny.model)

    def losses(b):
        inputs = dict(b.inputs)
        labels = inputs.pop("labels")
        with torch.no_grad():
            return forward_losses(tiny.model, FAMILY, inputs, labels, False, 0, b.segments)[0]

    padded, mixed = losses(batch), losses(packed)
    # the first sample has no neighbour before it; a later one misses the tolerance tests/train/test_length_grouping.py
    # holds packing families to
    torch.testing.assert_close(mixed[0], padded[0], rtol=1e-5, atol=1e-5)
    assert ((mixed[1:] - padded[1:]).abs() > 1e-5 + 1e-5 * padded[1:].abs()).any(), (mixed, padded)
    with torch.no_grad():  # and the logits of the second sample's first positions, where the previous one leaks in
        row = tiny.model(**{k: v for k, v in packed.inputs.items() if k != "labels"}).logits[0]
        alone = tiny.model(**FAMILY.encode(tiny.processor, [samples[1]], [images[1]], "generate", 512).inputs).logits
    start = int(batch.inputs["attention_mask"][0].sum())
    assert (row[start:start + 3] - alone[0, :3]).abs().max() > 0.05
