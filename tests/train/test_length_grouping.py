"""Length-grouped micro-batches and packing: less (or no) padding, the same samples per step and the same losses."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_run_cfg

from vlmtune.config import RunCfg
from vlmtune.models import FAMILIES
from vlmtune.train.checks import check_run


def _rows(run_dir):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _shapes_runs(tmp_path, option: str, values, **train_options) -> dict:
    """Per value of train.`option`: the metrics rows of a tiny run on short questions mixed with long captions."""
    from vlmtune.data.dataset import synthesize
    from vlmtune.train.loop import train

    data = tmp_path / "shapes"
    synthesize(data, "shapes", 80, seed=0, size=32, caption_fraction=0.5)  # short questions and long captions
    rows = {}
    for value in values:
        cfg = RunCfg.from_dict(tiny_run_cfg(
            tmp_path / str(value), data, data={"max_length": 256, "val_split": None},
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
    from PIL import Image

    from vlmtune.data.sample import Sample, assistant, user

    samples = [Sample(id="a", messages=[user("What colour?"), assistant("red")], images=["a.png"]),
               Sample(id="b", messages=[user("And this much longer question?"), assistant("blue, with more words")],
                      images=["b.png"]),
               Sample(id="c", messages=[user("Which shape?"), assistant("a green circle")], images=["c.png"])]
    images = [[Image.new("RGB", (40, 40), "red")], [Image.new("RGB", (48, 32), "blue")],
              [Image.new("RGB", (32, 56), "green")]]
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
    packed = pack(batch)
    assert packed.inputs["input_ids"].shape == (1, int(batch.inputs["attention_mask"].sum()))
    assert "attention_mask" not in packed.inputs
    padded_sums, padded_counts = _per_sample_losses(family, tiny, batch)
    sums, counts = _per_sample_losses(family, tiny, packed)
    assert counts.tolist() == padded_counts.tolist()
    torch.testing.assert_close(sums, padded_sums, rtol=1e-5, atol=1e-5)


def test_paligemma_packing_keeps_each_samples_prefix_mask():
    """PaliGemma packs: packed == padded, three samples in one row, with attention sharpened (the tiny model's random
    init attends almost uniformly, so masks would barely show). The equality means something: the loss depends on
    the bidirectional image + prompt prefix (a causal-only prefix gives another loss) and on each sample seeing only
    its own prefix (one prefix block over the whole row, as transformers < 5.25 built it, gives another loss)."""
    from transformers import masking_utils

    from vlmtune.train.collate import pack

    family = FAMILIES["paligemma"]
    tiny = family.tiny()
    with torch.no_grad():
        for name, p in tiny.model.named_parameters():
            if ".language_model." in name and (".q_proj." in name or ".k_proj." in name):
                p.mul_(30)
    batch = _batch(family, tiny)
    padded, _ = _per_sample_losses(family, tiny, batch)
    packed = pack(batch)
    packed_sums = _per_sample_losses(family, tiny, packed)[0]
    torch.testing.assert_close(packed_sums, padded, rtol=1e-5, atol=1e-5)

    causal = type(packed)(dict(packed.inputs, token_type_ids=torch.ones_like(packed.inputs["token_type_ids"])),
                          packed.ids, packed.n_target_tokens, packed.segments)
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


@pytest.mark.parametrize("name", ["gemma3", "gemma4", "glm4v", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe",
                                  "qwen3_5"])
def test_families_that_cannot_pack_say_so_and_would_get_another_loss(name, tmp_path, fashion_dir):
    from vlmtune.train.collate import pack

    family = FAMILIES[name]
    assert not family.packing
    tiny = family.tiny()
    batch = _batch(family, tiny)
    padded, _ = _per_sample_losses(family, tiny, batch)
    packed, _ = _per_sample_losses(family, tiny, pack(batch))  # image masks / 3-D positions ignore the packing
    assert not torch.allclose(packed, padded, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=f"the {name} family cannot pack"):
        check_run(RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir, model={"family": name, "path": "x"},
                                                train={"packing": True})))


def test_training_packed_gives_the_same_losses_with_no_padding(tmp_path):
    rows = _shapes_runs(tmp_path, "packing", (False, True), max_steps=6, micro_batch_size=4)
    assert all(r["padding"] == 0 for r in rows[True]) and all(r["padding"] > 0 for r in rows[False])
    _same_losses(rows[True], rows[False])
