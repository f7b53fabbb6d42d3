"""Llama 4: the PIL port of the torchvision-only image processor gives transformers' own tiles (a stored golden);
image tokens follow the tile layout (tiles + the global tile, `<|patch|>` runs between the markers); the chat template
is the checkpoints'; the tiny model's chunked attention is in effect and left padding leaves each sample's logits
unchanged; a saved checkpoint names the upstream image processor and loads back through the family."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmtune.config import ModelCfg
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import FAMILIES
from vlmtune.models.llama4 import CHAT_TEMPLATE, image_processor_class

FAMILY = FAMILIES["llama4"]
GOLDEN = Path(__file__).parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))
from make_llama4_golden import SETTINGS, SIZES, image  # noqa: E402

LEVEL = 2 / 255  # one intensity level after rescale (1/255) and normalise (mean 0.5, std 0.5)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    loaded = FAMILY.tiny()
    loaded.model.eval()
    with torch.no_grad():  # sharpened: at random init (std 0.02) attention is almost uniform, masks barely show
        for name, p in loaded.model.named_parameters():
            if name.startswith("language_model.") and (".q_proj." in name or ".k_proj." in name):
                p.mul_(30)
    return loaded


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_the_pil_port_gives_the_tiles_of_transformers_torchvision_processor(name):
    """Same canvas, tile count and order, global tile, aspect ratios; pixel values within two intensity levels (PIL's
    and torchvision's bilinear resizes round differently; the values are bf16 on both sides), mean difference under
    a fifth of a level."""
    golden = np.load(GOLDEN / "llama4_tiles.npz")
    tile, max_patches = SETTINGS[name]
    processor = image_processor_class()(size={"height": tile, "width": tile}, max_patches=max_patches)
    for w, h in SIZES:
        out = processor(images=[image(w, h)], return_tensors="pt")
        assert out["pixel_values"].dtype == torch.bfloat16  # as upstream: rescaled and normalised in bf16
        got, want = out["pixel_values"].float().numpy(), golden[f"{name}/{w}x{h}/pixel_values"]
        assert got.shape == want.shape, (w, h)
        ratios = golden[f"{name}/{w}x{h}/aspect_ratios"].tolist()
        assert np.asarray(out["aspect_ratios"]).reshape(-1, 2).tolist() == ratios, (w, h)
        assert np.abs(got - want).max() <= 2 * LEVEL, (w, h)
        assert np.abs(got - want).mean() <= LEVEL / 5, (w, h)
        assert processor.get_number_of_image_patches(h, w) == len(want)


def test_the_chat_template_is_the_checkpoints():
    from transformers.models.llama4.processing_llama4 import chat_template

    assert CHAT_TEMPLATE == chat_template


def _img(size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy())


# the tiny processor: tiles of 32x32 -> 4 <|patch|> tokens each; up to 4 tiles, + the global tile when several
@pytest.mark.parametrize("size, grid", [((32, 32), (1, 1)), ((16, 16), (1, 1)), ((64, 32), (1, 2)),
                                        ((96, 64), (2, 2)), ((40, 100), (3, 1)), ((200, 200), (2, 2))])
def test_image_tokens_follow_the_tiles(tiny, size, grid):
    rows, cols = grid
    tiles = rows * cols + (1 if rows * cols > 1 else 0)
    assert FAMILY.image_tokens(tiny.processor, *size) == 4 * tiles
    sample = Sample(id="s", images=["a.png"], messages=[user("What colour is the top?"), assistant("red")])
    batch = FAMILY.encode(tiny.processor, [sample], [[_img(size)]], "train", 512)
    assert len(batch.inputs["pixel_values"]) == tiles
    text = tiny.processor.tokenizer.decode(batch.inputs["input_ids"][0])
    run = "<|patch|>" * 4
    row = "<|tile_x_separator|>".join([run] * cols) + "<|tile_y_separator|>"
    tiled = row * rows if rows * cols > 1 else ""
    assert f"<|image_start|>{tiled}<|image|>{run}<|image_end|>What colour" in text
    assert int((batch.inputs["input_ids"] == tiny.model.config.image_token_id).sum()) == 4 * tiles


SAMPLES = [
    (Sample(id="long", images=["a.png"], messages=[user("What colour is the top? Describe the image."),
                                                   assistant("a red top")]), [_img((96, 64))]),
    (Sample(id="short", images=[], messages=[user("What colour?", n_images=0), assistant("red")]), []),
]


def test_chunked_attention_is_in_effect_and_left_padding_leaves_each_sample_unchanged(tiny):
    samples, images = zip(*SAMPLES, strict=True)
    batch = FAMILY.encode(tiny.processor, list(samples), list(images), "generate", 512)
    assert not batch.inputs["attention_mask"][:, 0].all()  # left padded
    config = tiny.model.config.text_config
    assert config.attention_chunk_size == 16 < batch.inputs["input_ids"].shape[1]
    assert "chunked_attention" in config.layer_types and config.moe_layers == [1]
    with torch.no_grad():
        together = tiny.model(**batch.inputs).logits[:, -1]
        for k, (s, i) in enumerate(SAMPLES):
            alone = tiny.model(**FAMILY.encode(tiny.processor, [s], [i], "generate", 512).inputs).logits[0, -1]
            torch.testing.assert_close(together[k], alone, atol=1e-5, rtol=1e-4)
        config.attention_chunk_size = 4096
        try:
            unchunked = tiny.model(**batch.inputs).logits[:, -1]
        finally:
            config.attention_chunk_size = 16
    assert (unchunked - together).abs().max() > 1e-3  # the chunks change what the RoPE layer sees


def test_load_reads_a_checkpoint_that_names_the_torchvision_image_processor(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["image_processor"]["image_processor_type"] == "Llama4ImageProcessor"  # upstream's, not the port's
    assert config["processor_class"] == "Llama4Processor" and config["patch_size"] == 8
    loaded = FAMILY.load(ModelCfg(family="llama4", path=str(tmp_path)))
    assert loaded.processor.image_token_ids == tiny.processor.image_token_ids
    samples, images = zip(*SAMPLES, strict=True)
    got = FAMILY.encode(loaded.processor, list(samples), list(images), "train", 512).inputs
    want = FAMILY.encode(tiny.processor, list(samples), list(images), "train", 512).inputs
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def test_qlora_quantises_the_linears_and_leaves_the_fused_experts_and_router_in_the_model_dtype(tiny, tmp_path):
    """What the Scout QLoRA recipe's memory figure rests on: bitsandbytes replaces plain nn.Linear layers only, so
    the routed experts (3-D parameters) and the router (an nn.Linear subclass) keep the model's dtype."""
    import bitsandbytes as bnb

    from vlmtune.config import QuantCfg

    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    q = QuantCfg(bits=4, compute_dtype="float32")
    model = FAMILY.load(ModelCfg(family="llama4", path=str(tmp_path), dtype="bfloat16", quantization=q)).model
    moe = model.language_model.model.layers[1].feed_forward
    assert isinstance(moe.shared_expert.up_proj, bnb.nn.Linear4bit)
    assert isinstance(model.language_model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert moe.experts.gate_up_proj.dtype == moe.experts.down_proj.dtype == torch.bfloat16
    assert type(moe.router).__name__ == "Llama4Router" and moe.router.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("max_pixels, said, wide", [(3 * 32 * 32, "max_patches 3", (96, 32)),
                                                     (32 * 32, "max_patches 1", (32, 32))])
def test_max_pixels_caps_the_tiles_and_resized_size_is_the_canvas(max_pixels, said, wide):
    """`model.max_pixels` keeps canvases of at most max_pixels // tile pixels tiles (+ the global tile), and
    `resized_size` is the canvas an image is resized and padded into."""
    from vlmtune.data.resize import limit_pixels, resized_size
    from vlmtune.models import apply_max_pixels

    processor = FAMILY.tiny().processor
    ip = processor.image_processor
    assert resized_size(96, 64, ip) == (64, 64) and resized_size(40, 100, ip) == (32, 96)  # 2x2 and 3x1 tiles
    assert resized_size(16, 16, ip) == (32, 32)  # never below one tile
    assert apply_max_pixels(processor, ModelCfg(family="llama4", path="x", max_pixels=max_pixels)).startswith(said)
    assert resized_size(200, 200, ip) == (32, 32)  # no square canvas of 2x2 any more
    assert resized_size(300, 100, ip) == wide
    tiles = (wide[0] // 32) * (wide[1] // 32)
    assert FAMILY.image_tokens(processor, 300, 100) == 4 * (tiles + 1 if tiles > 1 else 1)
    with pytest.raises(ValueError, match="below llama4's smallest tile \\(1024 pixels\\)"):
        limit_pixels(ip, 1000, "llama4")


UPSTREAM = """
import json, sys
from PIL import Image
from transformers import AutoProcessor
p = AutoProcessor.from_pretrained(sys.argv[1])
out = p(text=json.loads(sys.argv[2]), images=[Image.open(f) for f in json.loads(sys.argv[3])], padding=True,
        padding_side="right", return_tensors="pt")
print(json.dumps({"class": type(p).__name__, "image": type(p.image_processor).__name__,
                  "input_ids": out["input_ids"].tolist(), "pixel_values": out["pixel_values"].float().tolist(),
                  "template": p.chat_template == json.loads(sys.argv[4])}))
"""


@pytest.mark.vllm
def test_the_saved_processor_loads_with_plain_auto_processor_and_gives_the_same_inputs(tiny, tmp_path):
    """The saved processor through plain AutoProcessor in vLLM's environment (transformers' torchvision
    Llama4ImageProcessor, no vlmtune): Llama4Processor with the same chat template, the same ids (tile markers and
    `<|patch|>` runs) and tiles, pixel values within two intensity levels."""
    from vlmtune.serve.vllm import find_vllm_python

    tiny.processor.save_pretrained(tmp_path)
    sizes = [(32, 32), (16, 16), (64, 32), (96, 64), (40, 100), (200, 120)]
    files = []
    for k, (w, h) in enumerate(sizes):
        image(w, h).save(tmp_path / f"{k}.png")
        files.append(str(tmp_path / f"{k}.png"))
    texts = ["<|image|>What colour?"] * len(sizes)
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([str(find_vllm_python()), "-c", UPSTREAM, str(tmp_path), json.dumps(texts),
                          json.dumps(files), json.dumps(CHAT_TEMPLATE)], capture_output=True, text=True, timeout=300,
                         env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = json.loads(run.stdout.strip().splitlines()[-1])
    assert (theirs["class"], theirs["image"], theirs["template"]) == ("Llama4Processor", "Llama4ImageProcessor", True)
    ours = tiny.processor(text=texts, images=[Image.open(f) for f in files], padding=True, padding_side="right",
                          return_tensors="pt")
    assert ours["input_ids"].tolist() == theirs["input_ids"]
    torch.testing.assert_close(ours["pixel_values"].float(), torch.tensor(theirs["pixel_values"]), atol=2 * LEVEL,
                               rtol=0)
