"""Full fine-tuning with the vision tower trained on a bf16 base, every family: `make_trainable` upcasts every weight
to float32 and `align_dtypes` casts at the seams where image features meet the text embeddings. SmolVLM crashed at
its first forward ("masked_scatter: expected self and source to have same dtypes"): it casts its image features to
`model.dtype`, the vision tower's float32 once trained, while the text embeddings were cast to bf16."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlmtune.config import RunCfg
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import FAMILIES
from vlmtune.models.family import base_model, freeze_group_of
from vlmtune.models.loss import accepts_logits_to_keep, forward_losses, logit_prefix_of
from vlmtune.train.optim import adamw
from vlmtune.train.trainable import make_trainable

VISION_TRAINABLE = sorted(n for n, f in FAMILIES.items() if "vision" in f.freeze_groups)


@pytest.mark.parametrize("name", VISION_TRAINABLE)
def test_a_bf16_full_fine_tune_trains_the_vision_tower(name):
    family = FAMILIES[name]
    torch.manual_seed(0)
    tiny = family.tiny()
    model = tiny.model
    with torch.no_grad():  # random tiny models zero some weights (Gemma 3's projection, Mllama's gates) that would
        for p in model.parameters():  # stop every gradient before the vision tower
            if p.is_floating_point() and p.ndim and not p.any():
                p.normal_(0, 0.02)
    model = model.to(torch.bfloat16)
    cfg = RunCfg.from_dict({"model": {"family": name, "path": "builtin", "dtype": "bfloat16"},
                            "lora": {"enabled": False},
                            "train": {"freeze_vision": False, "mixed_precision": "bf16"}})
    model = make_trainable(cfg, family, model)
    model.train()
    vision = {n: p.detach().clone() for n, p in model.named_parameters() if freeze_group_of(family, n) == "vision"}
    assert vision and all(p.dtype == torch.float32 for n, p in model.named_parameters() if n in vision)
    decoder_inputs = []
    decoder = family.merge_in_model_dtype or family.language_model
    if decoder:  # the language model runs on base-dtype embeddings, as in every other run
        base_model(model).get_submodule(decoder).register_forward_pre_hook(
            lambda m, a, kw: decoder_inputs.append(kw["inputs_embeds"].dtype) if kw.get("inputs_embeds") is not None
            else None, with_kwargs=True)
    sample = Sample(id="a", messages=[user("What colour is the top?"), assistant("red")], images=["a.png"])
    batch = family.encode(tiny.processor, [sample], [[Image.new("RGB", (40, 40), "red")]], "train", 512)
    inputs = dict(batch.to("cpu", torch.bfloat16).inputs)
    labels = inputs.pop("labels")
    optimizer = adamw(model, 1e-3, 0.0, betas=(0.9, 0.95))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sums, counts = forward_losses(model, family, inputs, labels, accepts_logits_to_keep(model),
                                      logit_prefix_of(family, model))
    loss = sums.sum() / counts.sum()
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    moved = [n for n, p in model.named_parameters() if n in vision and not torch.equal(p.detach(), vision[n])]
    # the gradient reached the bottom of the tower (its first parameter: the patch embedding) and most of it moved
    # (not all: LLaVA's last layer is after the feature layer it reads; BLIP-2's tiny tower has ~1e-10 weights, so
    # its norms see constant inputs)
    assert next(iter(vision)) in moved, sorted(set(vision) - set(moved))
    assert len(moved) >= 0.5 * len(vision), sorted(set(vision) - set(moved))
    assert all(d == torch.bfloat16 for d in decoder_inputs), decoder_inputs
