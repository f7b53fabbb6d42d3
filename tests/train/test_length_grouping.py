"""Length-grouped micro-batches and packing: less (or no) padding, the same samples per step and the same losses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import tiny_run_cfg

from vlmtune.config import RunCfg
from vlmtune.models import FAMILIES
from vlmtune.train.checks import check_run


def _rows(run_dir):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _shapes_runs(tmp_path, option: str, values, sections=None, **train_options) -> dict:
    """Per value of train.`option`: the metrics rows of a tiny run on short questions mixed with long captions
    (the built-in model, or what `sections` set: model, lora)."""
    from vlmtune.data.dataset import synthesize
    from vlmtune.train.loop import train

    data = tmp_path / "shapes"
    if not data.exists():
        synthesize(data, "shapes", 80, seed=0, size=32, caption_fraction=0.5)  # short questions and long captions
    rows = {}
    for value in values:
        cfg = RunCfg.from_dict(tiny_run_cfg(
            tmp_path / str(value), data, **(sections or {}), data={"max_length": 256, "val_split": None},
            train={"global_batch_size": 8, "eval_every": 0, "save_every": 0, option: value, **train_options}))
        train(cfg)
        rows[value] = _rows(cfg.run_dir)
    return rows


def _same_losses(a: list[dict], b: list[dict]) -> None:
    torch.testing.assert_close(torch.tensor([r["loss"] for r in a]), torch.tensor([r["loss"] for r in b]),
                               rtol=1e-5, atol=1e-5)


def test_grouping_reduces_padding_and_keeps_the_losses(tmp_path):
    rows = _shapes_runs(tmp_path, "group_by_length", (False, True), max_steps=8, micro_batch_size=2)
    plain = sum(r["padding"] for r in rows[False]) / 8
    grouped = sum(r["padding"] for r in rows[True]) / 8
    print(f"padding fraction: {plain:.3f} ungrouped, {grouped:.3f} grouped")
    assert grouped < 0.6 * plain
    _same_losses(rows[True], rows[False])


def _batch(family, tiny):
    """Samples of different lengths with images of different sizes, plus a two-image and a text-only sample where
    the family takes them."""
    from PIL import Image

    from vlmtune.data.sample import Sample, assistant, user

    samples = [Sample(id="a", messages=[user("What colour?"), assistant("red")], images=["a.png"]),
               Sample(id="b", messages=[user("And this much longer question?"), assistant("blue, with more words")],
                      images=["b.png"]),
               Sample(id="c", messages=[user("Which shape?"), assistant("a green circle")], images=["c.png"])]
    def image(seed, width, height):  # noise: a plain colour gives every image token the same features
        return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))

    images = [[image(0, 40, 40)], [image(1, 48, 32)], [image(2, 32, 56)]]
    if family.multi_image:
        samples.append(Sample(id="m", messages=[user("Both?", 2), assistant("red, then a wider green")],
                              images=["d.png", "e.png"]))
        images.append([image(3, 56, 40), image(4, 64, 24)])
    if family.text_only:
        samples.append(Sample(id="t", messages=[user("No image", 0), assistant("fine")], images=[]))
        images.append([])
    return family.encode(tiny.processor, samples, images, "train", 512)


def _per_sample_losses(family, tiny, batch):
    from vlmtune.models.loss import forward_losses

    inputs = dict(batch.inputs)
    labels = inputs.pop("labels")
    with torch.no_grad():
        return forward_losses(tiny.model.eval(), family, inputs, labels, False, 0, batch.segments)


PACKABLE = sorted(n for n, f in FAMILIES.items() if f.packing)


@pytest.mark.parametrize("name", PACKABLE)
def test_a_packed_row_gives_each_sample_its_padded_loss(name):
    from vlmtune.train.collate import pack

    family = FAMILIES[name]
    tiny = family.tiny()
    batch = _batch(family, tiny)
    packed = pack(batch, family, tiny.model)
    assert packed.inputs["input_ids"].shape == (1, int(batch.inputs["attention_mask"].sum()))
    assert not hasattr(packed.inputs.get("attention_mask"), "shape")  # no padding mask (Gemma 3: its own mapping)
    padded_sums, padded_counts = _per_sample_losses(family, tiny, batch)
    sums, counts = _per_sample_losses(family, tiny, packed)
    assert counts.tolist() == padded_counts.tolist()
    torch.testing.assert_close(sums, padded_sums, rtol=1e-5, atol=1e-5)


def _sharpened(family):
    """The family's tiny model with its decoder's attention sharpened: its random init attends almost uniformly, so
    a wrong mask or position would barely show in the loss. Seeded: the same weights every run."""
    torch.manual_seed(0)
    tiny = family.tiny()
    with torch.no_grad():
        for name, p in tiny.model.named_parameters():
            if ".language_model." in name and (".q_proj." in name or ".k_proj." in name):
                p.mul_(30)
    return tiny


def _with(batch, **inputs):
    return type(batch)(dict(batch.inputs, **inputs), batch.ids, batch.n_target_tokens, batch.segments)


def test_paligemma_packing_keeps_each_samples_prefix_mask():
    """PaliGemma packs: packed == padded, three samples in one row, with attention sharpened (the tiny model's random
    init attends almost uniformly, so masks would barely show). The equality means something: the loss depends on
    the bidirectional image + prompt prefix (a causal-only prefix gives another loss) and on each sample seeing only
    its own prefix (one prefix block over the whole row, as transformers < 5.25 built it, gives another loss)."""
    from transformers import masking_utils

    from vlmtune.train.collate import pack

    family = FAMILIES["paligemma"]
    tiny = _sharpened(family)
    batch = _batch(family, tiny)
    padded, _ = _per_sample_losses(family, tiny, batch)
    packed = pack(batch, family, tiny.model)
    packed_sums = _per_sample_losses(family, tiny, packed)[0]
    torch.testing.assert_close(packed_sums, padded, rtol=1e-5, atol=1e-5)

    causal = _with(packed, token_type_ids=torch.ones_like(packed.inputs["token_type_ids"]))
    causal_sums = _per_sample_losses(family, tiny, causal)[0]
    prefix = packed.inputs["token_type_ids"] == 0
    real = masking_utils.packed_sequence_mask_function

    def one_prefix_block(mask):  # a prefix token may attend to every prefix token of the row, earlier or later
        inside = real(mask)
        return lambda b, h, q, kv: inside(b, h, q, kv) | (prefix[b, q] & prefix[b, kv])

    masking_utils.packed_sequence_mask_function = one_prefix_block
    try:
        leaky_sums = _per_sample_losses(family, tiny, packed)[0]
    finally:
        masking_utils.packed_sequence_mask_function = real
    noise = (packed_sums - padded).abs().max().item()
    causal_gap, leak_gap = (causal_sums - padded).abs(), (leaky_sums - padded).abs()
    print(f"packed vs padded {noise:.2e}; causal prefix {causal_gap.tolist()}; one prefix block {leak_gap.tolist()}")
    assert (causal_gap > 50 * noise + 1e-4).all()
    assert (leak_gap > 50 * noise + 1e-4).all()


@pytest.mark.parametrize("name", ["gemma4", "qwen3_5"])
def test_families_that_cannot_pack_say_so_and_would_get_another_loss(name, tmp_path, fashion_dir):
    """Gemma 4 (its image blocks' two-way attention, Gemma 3's case, not wired) and Qwen3.5 (its linear-attention
    layers ignore sample boundaries without the flash-linear-attention kernels) refuse packing, and would get another
    loss from the generic packed row."""
    from vlmtune.train.collate import pack

    family = FAMILIES[name]
    assert not family.packing
    tiny = family.tiny()
    batch = _batch(family, tiny)
    padded, _ = _per_sample_losses(family, tiny, batch)
    packed, _ = _per_sample_losses(family, tiny, pack(batch, family, tiny.model))
    assert not torch.allclose(packed, padded, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=f"the {name} family cannot pack"):
        check_run(RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir, model={"family": name, "path": "x"},
                                                train={"packing": True})))


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v", "glm4v_moe",
                                  "glm46v"])
def test_qwen_vl_packing_keeps_each_samples_rope_positions_and_attention(name):
    """Qwen2-VL/2.5-VL/3-VL and GLM-4.xV pack with each sample's M-RoPE positions from the model's `get_rope_index`
    under the text positions (qwen2_vl.pack_inputs): packed == padded with attention sharpened. The equality means
    something: with the three M-RoPE rows alone (no text row) the decoder sees one sequence, and every sample after
    the first gets another loss (it sees the samples before it); with 1-D positions in the M-RoPE rows (what the
    generic packed row gives) every sample with an image of more than one token gets another loss, and the
    text-only one the same."""
    from vlmtune.train.collate import pack

    family = FAMILIES[name]
    tiny = _sharpened(family)
    batch = _batch(family, tiny)
    padded, _ = _per_sample_losses(family, tiny, batch)
    packed = pack(batch, family, tiny.model)
    positions = packed.inputs["position_ids"]
    assert positions.shape == (4, *packed.inputs["input_ids"].shape)
    starts = (positions[0, 0] == 0).nonzero().flatten().tolist()
    assert len(starts) == len(batch.ids) and (positions[1:, 0, starts] == 0).all()  # every sample from 0
    sums = _per_sample_losses(family, tiny, packed)[0]
    torch.testing.assert_close(sums, padded, rtol=1e-5, atol=1e-5)

    one_sequence = _per_sample_losses(family, tiny, _with(packed, position_ids=positions[1:]))[0]
    flat = _per_sample_losses(family, tiny, _with(packed, position_ids=positions[:1].expand(4, -1, -1)))[0]
    noise = (sums - padded).abs().max().item()
    leak_gap, flat_gap = (one_sequence - padded).abs(), (flat - padded).abs()
    print(f"packed vs padded {noise:.2e}; one sequence {leak_gap.tolist()}; 1-D rope rows {flat_gap.tolist()}")
    assert leak_gap[0] <= 1e-4 and (leak_gap[1:] > 50 * noise + 1e-4).all()
    # 1-D positions are the M-RoPE ones for text and for an image of one merged token (Qwen3-VL's 32x32 blocks):
    # the samples with a larger image get another loss, the others the same
    ids = batch.inputs["input_ids"]
    is_image = ids == tiny.model.config.image_token_id
    runs = (is_image & ~torch.nn.functional.pad(is_image, (1, 0))[:, :-1]).sum(1)
    spread = is_image.sum(1) > runs
    assert spread.any()
    assert (flat_gap[spread] > 50 * noise + 1e-4).all() and (flat_gap[~spread] <= 1e-4).all()


def test_gemma3_packing_keeps_each_images_block_in_its_sample(monkeypatch):
    """Gemma 3 packs with the attention masks `gemma3.pack_inputs` builds: packed == padded with attention sharpened.
    It means something: with the masks transformers 5.25 builds itself for the packed row (its sliding layers look
    up image blocks at the wrong tokens) the samples after the first get another loss; with causal images (no
    `token_type_ids` blocks) every sample with an image does; and without the sample boundaries in those masks
    every sample after the first does."""
    import dataclasses

    from transformers import masking_utils

    from vlmtune.train.collate import pack

    family = FAMILIES["gemma3"]
    tiny = _sharpened(family)
    with torch.no_grad():  # initialised to zeros: every image token would get the same (zero) features
        torch.nn.init.normal_(tiny.model.model.multi_modal_projector.mm_input_projection_weight,
                              generator=torch.Generator().manual_seed(0))
    batch = _batch(family, tiny)
    padded, _ = _per_sample_losses(family, tiny, batch)
    packed = pack(batch, family, tiny.model)
    assert set(packed.inputs["attention_mask"]) == {"full_attention", "sliding_attention"}
    sums = _per_sample_losses(family, tiny, packed)[0]
    torch.testing.assert_close(sums, padded, rtol=1e-5, atol=1e-5)

    generic = pack(batch, dataclasses.replace(family, pack_inputs=None), tiny.model)
    transformers_own = _per_sample_losses(family, tiny, generic)[0]
    causal = pack(_with(batch, token_type_ids=torch.zeros_like(batch.inputs["token_type_ids"])), family, tiny.model)
    causal_images = _per_sample_losses(family, tiny, causal)[0]
    real = masking_utils.packed_sequence_mask_function
    monkeypatch.setattr(masking_utils, "packed_sequence_mask_function", lambda segments: lambda b, h, q, kv: q >= 0)
    leaky = _per_sample_losses(family, tiny, pack(batch, family, tiny.model))[0]  # no sample boundaries
    monkeypatch.setattr(masking_utils, "packed_sequence_mask_function", real)
    noise = (sums - padded).abs().max().item()
    gaps = {k: (v - padded).abs() for k, v in
            {"transformers' own": transformers_own, "causal images": causal_images, "leaky": leaky}.items()}
    print(f"packed vs padded {noise:.2e}; " + "; ".join(f"{k} {v.tolist()}" for k, v in gaps.items()))
    has_image, big = torch.tensor([i != "t" for i in batch.ids]), 50 * noise + 1e-4
    assert (gaps["transformers' own"][1:] > big).all()
    assert (gaps["causal images"][has_image] > big).all() and (gaps["causal images"][~has_image] <= 1e-4).all()
    assert (gaps["leaky"][1:] > big).all() and gaps["leaky"][0] <= 1e-4


def test_families_that_cannot_pack_say_so(tmp_path, fashion_dir):
    assert not FAMILIES["mllama"].packing  # cross-attention to the images: a row would need one image set
    with pytest.raises(ValueError, match="the mllama family cannot pack"):
        check_run(RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir, model={"family": "mllama", "path": "x"},
                                                train={"packing": True})))


def test_training_packed_gives_the_same_losses_with_no_padding(tmp_path):
    rows = _shapes_runs(tmp_path, "packing", (False, True), max_steps=6, micro_batch_size=4)
    assert all(r["padding"] == 0 for r in rows[True]) and all(r["padding"] > 0 for r in rows[False])
    _same_losses(rows[True], rows[False])


def test_training_qwen2_vl_packed_gives_the_same_losses_also_with_the_vision_cache(tmp_path):
    """A LoRA run of the tiny Qwen2-VL: packed (with and without the frozen-vision cache) == padded, step by step."""
    tiny = FAMILIES["qwen2_vl"].tiny()
    tiny.model.save_pretrained(tmp_path / "base")
    tiny.processor.save_pretrained(tmp_path / "base")
    sections = {"model": {"family": "qwen2_vl", "path": str(tmp_path / "base")},
                "lora": {"enabled": True, "r": 4, "dropout": 0.0}}  # dropout would draw other masks for a packed row
    options = dict(max_steps=4, micro_batch_size=4, freeze_projector=True, lr=1e-2)
    rows = _shapes_runs(tmp_path, "packing", (False, True), sections, vision_cache="off", **options)
    cached = _shapes_runs(tmp_path / "cached", "packing", (True,), sections, vision_cache="auto", **options)[True]
    assert list((tmp_path / "cached" / "True" / "runs").rglob("vision_cache/*/*/*.safetensors")), "the cache was used"
    assert all(r["padding"] == 0 for r in rows[True] + cached) and all(r["padding"] > 0 for r in rows[False])
    _same_losses(rows[True], rows[False])
    _same_losses(cached, rows[False])


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm4v", "glm4v_moe", "glm46v", "gemma3"])
def test_a_packed_row_gives_each_sample_its_padded_loss_under_flash_attention(name):
    """`make test-gpu`: on CUDA in bf16 with flash-attention-2 the packed row runs varlen (transformers reads the
    sample boundaries from the 1-D text positions: Qwen's first position row, Gemma 3's positions, whose masks
    `pack_inputs` leaves to flash attention) and gives each sample its padded loss, to bf16 rounding."""
    from vlmtune.train.collate import pack

    assert torch.cuda.is_available(), "the gpu-marked tests need a CUDA device"
    import flash_attn  # noqa: F401  # the test is about its varlen path: it fails where flash-attn is missing

    family = FAMILIES[name]
    tiny = _sharpened(family)
    tiny.model.to("cuda", torch.bfloat16).set_attn_implementation("flash_attention_2")
    batch = _batch(family, tiny)
    packed = pack(batch, family, tiny.model)
    assert not isinstance(packed.inputs.get("attention_mask"), dict)  # flash attention: no masks, varlen
    padded, counts = _per_sample_losses(family, tiny, batch.to("cuda", torch.bfloat16))
    sums, packed_counts = _per_sample_losses(family, tiny, packed.to("cuda", torch.bfloat16))
    assert packed_counts.tolist() == counts.tolist()
    print(f"padded {padded.tolist()} packed {sums.tolist()}")
    torch.testing.assert_close(sums / counts, padded / counts, rtol=2e-2, atol=2e-2)
