"""Several processes: keeping every rank's forward pass the same shape when text-only and image samples mix.

The hang (LLaMA-Factory, ms-swift: "ZeRO-3 hangs with mixed text/image data"). Under DeepSpeed ZeRO-3 (and FSDP)
each rank holds a shard of every parameter; a module's parameters are all-gathered, collectively, by every rank when
the module runs, and its gradients reduce-scattered when its backward runs. A micro-batch without images makes the
model skip its vision tower and projector; if another rank's micro-batch has images, that rank all-gathers the vision
parameters while this one is already all-gathering the language model's: the collectives no longer match and the
run hangs (or, with equal sizes, silently mixes shards). vlmtune's mixtures put text-only replay and image samples
in one global batch (`vlmtune.data.mix`), so this is a when, not an if.

The fix: on such a micro-batch, run the vision tower and projector on one blank image anyway and tie the result into
the graph with weight 0, so every rank runs the same modules, in the same order, forward and backward, every step.

* Where: *inside* the forward pass, at the point where the model would have merged image features: a one-shot
  forward pre-hook on the language model adds ``0 * features.sum()`` to its ``inputs_embeds``. Not after the forward
  (``loss + 0 * ...``): the vision all-gathers would then come after the language model's on this rank but before
  them on the others (the order of the collectives has to match, not only their number), and under DDP the vision
  parameters, already marked unused by that forward (``find_unused_parameters``), would get a gradient a second time
  ("Expected to mark a variable ready only once").
* What it changes: nothing in value. ``x + 0.0`` is ``x`` exactly (the features of a blank image are finite), so the
  loss and every language-model gradient are bit-identical; the vision tower and projector get gradients of exactly
  zero (weight decay and Adam's moments still see a step with a zero gradient, as they do for every rank's
  text-only samples under DDP anyway).
* When: a micro-batch with no ``pixel_values`` (and no cached features, ``mm_encoder_outputs``) of a family with a
  vision dummy (``ModelFamily.language_model`` set), under sharded parameters (DeepSpeed ZeRO-3, FSDP) with more
  than one process. Under DDP nothing is needed (``find_unused_parameters=True`` copes) and under ZeRO-1/2 every
  rank holds all parameters; ``always=True`` turns it on for any run of more than one process.

In the training loop (`fit`), around the forward of each micro-batch::

    with train_autocast(acc), vision_dummy(acc, model, state.family, batch.inputs, state.loaded.processor):
        sums, counts = forward_losses(model, state.family, batch.inputs, labels, keep_logits, prefix)

The same rule holds for evaluation under ZeRO-3 (`Predictor.generate` of a text-only batch on one rank while another
generates with images) and for the frozen-vision cache (a cache miss runs the tower on one rank only): see
docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import weakref
from typing import TYPE_CHECKING, Any

from PIL import Image

from vlmtune.models.family import base_model

if TYPE_CHECKING:
    from vlmtune.models.family import ModelFamily

IMAGE_INPUTS = ("pixel_values", "pixel_values_videos", "mm_encoder_outputs")
"""Model inputs that make the forward run the vision side (or stand in for it)."""


def language_model(model, family: ModelFamily):
    """The decoder that receives the merged `inputs_embeds` (`family.language_model`: LLaVA, Qwen2-VL, ...:
    `model.language_model`); None for a family without a vision dummy."""
    return base_model(model).get_submodule(family.language_model) if family.language_model is not None else None


def vision_tower(model, family: ModelFamily):
    """The vision encoder module (`family.vision_tower`: LLaVA `model.vision_tower`, Qwen2-VL `model.visual`), or
    None."""
    return base_model(model).get_submodule(family.vision_tower) if family.vision_tower is not None else None


def shards_parameters(accelerator) -> bool:
    """Whether every rank must run every module every step: DeepSpeed ZeRO stage 3 or FSDP, more than 1 process."""
    if getattr(accelerator, "num_processes", 1) <= 1:
        return False
    kind = getattr(accelerator, "distributed_type", None)
    kind = getattr(kind, "value", kind)  # DistributedType is a str enum
    if kind == "FSDP":
        return True
    if kind == "DEEPSPEED":
        plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
        return getattr(plugin, "zero_stage", None) == 3
    return False


def needs_vision_dummy(family: ModelFamily, batch_inputs: dict, accelerator, always: bool = False) -> bool:
    """Whether this micro-batch must run the vision tower on a blank image (see the module's docstring): it has no
    image input, the family has a vision dummy (`ModelFamily.language_model`: a vision side that `add_dummy_vision`
    can run, `get_image_features` + a decoder), and the run shards parameters (or `always`, with > 1 process)."""
    if any(batch_inputs.get(k) is not None for k in IMAGE_INPUTS):
        return False
    if family.language_model is None:
        return False
    if always:
        return getattr(accelerator, "num_processes", 1) > 1
    return shards_parameters(accelerator)


_BLANK: dict[int, tuple[weakref.ref, dict]] = {}
"""id(processor) -> (a weak reference to that processor, its blank inputs). The reference is checked on a hit: an id
is reused once its object is gone, and a new processor at an old id (another family's) must not get the old one's
inputs (LLaVA-NeXT's would lack `image_sizes`)."""


def blank_image_inputs(processor) -> dict:
    """The image processor's output for one black image (cached per processor): pixel_values and whatever else
    `get_image_features` takes for it (image_grid_thw for Qwen2-VL, image_sizes for LLaVA-NeXT)."""
    key = id(processor)
    hit = _BLANK.get(key)
    if hit is None or hit[0]() is not processor:
        image_processor = getattr(processor, "image_processor", processor)
        size = 64
        for attr in ("crop_size", "size"):  # the processor resizes anyway; start at its own size when it says one
            s = getattr(image_processor, attr, None)
            if isinstance(s, dict) and isinstance(s.get("height"), int):
                size = max(s["height"], s.get("width", s["height"]))
                break
            if isinstance(s, dict) and isinstance(s.get("shortest_edge"), int):
                size = s["shortest_edge"]
                break
        out = image_processor(images=[Image.new("RGB", (size, size))], return_tensors="pt")
        _BLANK[key] = (weakref.ref(processor), dict(out))
    return _BLANK[key][1]


def _tensors(x):
    import torch

    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)


def dummy_vision_term(model, family: ModelFamily, processor, device=None):
    """0 x the sum of the vision side's output (vision tower + projector, `get_image_features`) on one blank image:
    a zero scalar whose backward reaches every vision and projector parameter that the real path reaches."""
    import torch

    base = base_model(model)
    wanted = inspect.signature(base.get_image_features).parameters
    params = [p for p in base.parameters() if p.is_floating_point()]
    device = device if device is not None else (params[0].device if params else "cpu")
    tower = vision_tower(model, family)
    dtype = next((p.dtype for p in tower.parameters()), None) if tower is not None else None
    inputs = {}
    for k, v in blank_image_inputs(processor).items():
        if k not in wanted or not isinstance(v, torch.Tensor):
            continue
        v = v.to(device)
        inputs[k] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
    out = base.get_image_features(**inputs)
    features = getattr(out, "pooler_output", None)
    if features is None:  # older transformers: the projected features themselves
        features = out
    total = sum(t.float().sum() for t in _tensors(features))
    return total * 0.0


@contextlib.contextmanager
def add_dummy_vision(model, family: ModelFamily, processor):
    """Within the block, the model's next forward pass runs its vision tower and projector on one blank image where
    it would have merged image features, adding 0 x their output to the language model's `inputs_embeds` (see the
    module's docstring). The loss is unchanged; vision and projector parameters get zero gradients."""
    lm = language_model(model, family)
    if lm is None:
        raise ValueError("add_dummy_vision: the model has no language_model that takes inputs_embeds")
    fired = []

    def hook(module, args, kwargs):
        if fired:  # one-shot: generate() and friends call the decoder again
            return None
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            return None
        fired.append(True)
        term = dummy_vision_term(model, family, processor, embeds.device)
        return args, {**kwargs, "inputs_embeds": embeds + term.to(embeds.dtype)}

    handle = lm.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield fired
    finally:
        handle.remove()
    if not fired:
        raise RuntimeError("add_dummy_vision: the forward pass did not call the language model with inputs_embeds; "
                           "the vision tower did not run")


def vision_dummy(accelerator, model, family: ModelFamily, batch_inputs: dict, processor, always: bool = False) -> Any:
    """`add_dummy_vision(model, family, processor)` when `needs_vision_dummy(...)`, else a no-op context: the one line
    the training loop wraps each micro-batch's forward in."""
    if needs_vision_dummy(family, batch_inputs, accelerator, always):
        return add_dummy_vision(model, family, processor)
    return contextlib.nullcontext()


def launched() -> bool:
    """Whether this process was started as one of several (torchrun, accelerate launch)."""
    return int(os.environ.get("LOCAL_RANK", -1)) != -1 or int(os.environ.get("WORLD_SIZE", 1)) > 1


def has_accelerator_device() -> bool:
    import torch
    from accelerate.utils import is_mlu_available, is_npu_available, is_xpu_available

    return torch.cuda.is_available() or is_xpu_available() or is_npu_available() or is_mlu_available()


def join_processes():
    """For `vlmtune eval` / `predict` started as several processes: form their process group (gloo when there is no
    GPU, see docs/distributed.md) so that `evaluate` / `predict` shard the samples; returns this process's device,
    or None when started alone."""
    if not launched():
        return None
    from accelerate import PartialState

    return PartialState(cpu=not has_accelerator_device()).device
