"""Gradient checkpointing with a frozen vision tower (LoRA on the language model, the usual recipe): transformers'
`enable_input_require_grads` (called by `activation_checkpointing_enable`, and again by peft) hooks the vision
tower's patch embedding too, so its activations required grad and its blocks ran a backward for nothing.
`make_trainable` now removes those hooks (`skip_frozen_vision_backward`); the loss and LoRA's gradients are
bit-identical, the vision tower no longer takes part in the backward."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch.utils._pytree import tree_leaves

from vlmtune.config import RunCfg
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import FAMILIES
from vlmtune.models.family import base_model
from vlmtune.models.loss import accepts_logits_to_keep, forward_losses, logit_prefix_of
from vlmtune.train import trainable
from vlmtune.train.trainable import enable_checkpointing, make_trainable


def _step(name: str, fixed: bool, monkeypatch) -> dict:
    family = FAMILIES[name]
    torch.manual_seed(0)
    tiny = family.tiny()
    model = tiny.model
    cfg = RunCfg.from_dict({"model": {"family": name, "path": "builtin", "dtype": "float32"},
                            "lora": {"enabled": True, "r": 4, "dropout": 0.0},
                            "train": {"gradient_checkpointing": True, "mixed_precision": "no"}})
    enable_checkpointing(model)  # as train/build.py
    removed = []
    with monkeypatch.context() as m:
        if fixed:
            m.setattr(trainable, "skip_frozen_vision_backward",
                      lambda *a, f=trainable.skip_frozen_vision_backward: removed.append(f(*a)))
        else:  # the code before the fix
            m.setattr(trainable, "skip_frozen_vision_backward", lambda *a: 0)
        model = make_trainable(cfg, family, model)
    model.train()
    vision = base_model(model).get_submodule(family.vision_tower)
    outputs, backward_calls = [], []
    vision.register_forward_hook(lambda mod, a, out: outputs.append(out))
    for module in vision.modules():
        if not list(module.children()) and list(module.parameters()):  # every Linear, conv and norm of the tower
            module.register_full_backward_hook(lambda mod, gi, go: backward_calls.append(mod))
    sample = Sample(id="a", messages=[user("What colour is the top?"), assistant("red")], images=["a.png"])
    batch = family.encode(tiny.processor, [sample], [[Image.new("RGB", (40, 40), "red")]], "train", 512)
    inputs = dict(batch.inputs)
    labels = inputs.pop("labels")
    sums, counts = forward_losses(model, family, inputs, labels, accepts_logits_to_keep(model),
                                  logit_prefix_of(family, model))
    loss = sums.sum() / counts.sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return {"loss": loss.detach(), "grads": grads, "removed": sum(removed),
            "vision_requires_grad": any(t.requires_grad for o in outputs for t in tree_leaves(o)
                                        if isinstance(t, torch.Tensor)),
            "vision_backward_calls": len(backward_calls)}


@pytest.mark.parametrize("name", ["qwen2_vl", "llava", "smolvlm"])
def test_checkpointing_runs_no_backward_through_a_frozen_vision_tower(name, monkeypatch):
    before = _step(name, fixed=False, monkeypatch=monkeypatch)
    after = _step(name, fixed=True, monkeypatch=monkeypatch)
    assert before["vision_requires_grad"] and before["vision_backward_calls"] > 0, "the waste this test is about"
    assert after["removed"] >= 1
    assert not after["vision_requires_grad"]
    assert after["vision_backward_calls"] == 0
    assert torch.equal(after["loss"], before["loss"])
    assert after["grads"].keys() == before["grads"].keys() and any(".lora_" in n for n in after["grads"])
    for n, g in after["grads"].items():
        assert torch.equal(g, before["grads"][n]), n


def test_a_trained_vision_tower_keeps_its_hooks():
    """A full fine-tune trains the vision tower: nothing is removed (its gradients need the backward)."""
    family = FAMILIES["qwen2_vl"]
    model = family.tiny().model
    enable_checkpointing(model)
    cfg = RunCfg.from_dict({"model": {"family": "qwen2_vl", "path": "builtin", "dtype": "float32"},
                            "lora": {"enabled": False}, "train": {"gradient_checkpointing": True,
                                                                  "freeze_vision": False}})
    model = make_trainable(cfg, family, model)
    assert trainable.skip_frozen_vision_backward(model, family) == 0
    hooked = [n for n, mod in model.named_modules() if n.startswith(family.vision_tower)
              and any(getattr(h, "__name__", "") in trainable.REQUIRE_GRADS_HOOKS for h in mod._forward_hooks.values())]
    assert hooked
