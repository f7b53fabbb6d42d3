"""What a run trains and in which precision: LoRA or freezing by group (`make_trainable`), float32 trainables on a
bf16/fp16 base (`upcast_trainables`), the dtype at the seams where model code merges image features into the text
(`align_dtypes`), and the autocast every training forward runs in (`train_autocast`). Used by the loop's setup and by
the recipe check (tests/recipe_trainables.py), which applies the same to a real config on the meta device."""

from __future__ import annotations

from vlmtune.config import RunCfg
from vlmtune.models import ModelFamily
from vlmtune.models.family import base_model, freeze_group_of


def projector_frozen(cfg: RunCfg) -> bool:
    """`train.freeze_projector`, its default (None) resolved: frozen under LoRA, trained in a full fine-tune."""
    return cfg.lora.enabled if cfg.train.freeze_projector is None else cfg.train.freeze_projector


def make_trainable(cfg: RunCfg, family: ModelFamily, model):
    """LoRA (adapters on `lora.targets` or the family's; the projector frozen, or with `train.freeze_projector: false`
    trained in full as `modules_to_save`) or freezing by group, then every trainable parameter in float32. What it
    trains is printed at start-up (`trainable_summary`) and each recipe's `# trains:` line is checked against it
    (tests/test_recipes.py)."""
    frozen = {g for g, on in (("vision", cfg.train.freeze_vision), ("projector", projector_frozen(cfg)),
                              ("language", cfg.train.freeze_language)) if on}
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora.targets or list(family.lora_targets)
        projector = [] if "projector" in frozen else list(family.projector_modules)
        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=targets[0] if len(targets) == 1 else targets,
                          modules_to_save=projector or None)
        model = get_peft_model(model, lora)
    else:
        for name, p in model.named_parameters():
            if freeze_group_of(family, name) in frozen:
                p.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("nothing to train: every parameter group is frozen")
    if upcast_trainables(model):
        import torch

        align_dtypes(model, family, getattr(torch, cfg.model.dtype))
    skip_frozen_vision_backward(model, family)
    return model


def enable_checkpointing(model) -> None:
    """Gradient checkpointing as a run enables it (train/build.py, and the plan's measurement, tests/train/
    plan_measure.py): transformers' non-reentrant checkpointing on the base model, before `make_trainable`, whose
    `skip_frozen_vision_backward` then takes back the input-grad hooks it leaves in a frozen vision tower."""
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


REQUIRE_GRADS_HOOKS = ("make_inputs_require_grads", "make_inputs_require_grad")
"""The forward hooks that make an embedding's output require grad: transformers' `enable_input_require_grads` (called
by `activation_checkpointing_enable` and again by peft's `get_peft_model` on a checkpointed model) and peft's own."""


def skip_frozen_vision_backward(model, family: ModelFamily) -> int:
    """With the vision tower frozen (no trainable parameter in its freeze group 'vision'), remove the require-grads
    hooks inside it; returns how many were removed.

    `activation_checkpointing_enable` calls transformers' `enable_input_require_grads`, which hooks the input
    embeddings of every sub-model, the vision tower's patch embedding included: its output then requires grad, so
    autograd records the frozen tower and the backward runs through all its blocks (recomputing each under
    checkpointing) for gradients nothing uses. Non-reentrant checkpointing (the only kind vlmtune enables) does not
    need inputs that require grad; the language model's hook stays (LoRA's gradients flow as before)."""
    if any(p.requires_grad for n, p in model.named_parameters() if freeze_group_of(family, n) == "vision"):
        return 0
    removed = 0
    for name, module in base_model(model).named_modules():
        if freeze_group_of(family, name + ".") != "vision":
            continue
        for key, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__name__", "") in REQUIRE_GRADS_HOOKS:
                del module._forward_hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)
                removed += 1
    return removed


def align_dtypes(model, family: ModelFamily, dtype) -> None:
    """After `upcast_trainables` a model mixes dtypes: e.g. a full fine-tune's float32 language model beside a frozen
    bf16 vision tower. Autocast covers the matmuls, not the code that merges image features into the text embeddings
    (masked_scatter wants one dtype on both sides): the input embeddings' and the projector's outputs are cast to the
    base dtype (`model.dtype`), as they are in a model loaded for inference. The float32 weights still get their
    gradients through the cast.

    SmolVLM casts its image features to `model.dtype` (transformers': the first parameter's, the vision tower's patch
    embedding) after the projector, right before the merge: float32 once a full fine-tune trains (and upcasts) the
    vision tower. For such a family (`ModelFamily.merge_in_model_dtype`, the decoder's dotted name) the text
    embeddings are cast to that dtype instead, and the merged embeddings to the base dtype at the decoder's input,
    so the language model runs as in every other case."""
    names = family.projector_modules

    def cast_to(target):
        def cast(module, args, output):
            return output.to(target) if hasattr(output, "is_floating_point") and output.is_floating_point() else output
        return cast

    embeds_dtype = dtype
    if family.merge_in_model_dtype:
        hf = base_model(model)
        embeds_dtype = hf.dtype  # what the model casts its image features to before the merge

        def cast_inputs_embeds(module, args, kwargs):
            embeds = kwargs.get("inputs_embeds")
            if embeds is not None and embeds.is_floating_point() and embeds.dtype != dtype:
                kwargs["inputs_embeds"] = embeds.to(dtype)
            return args, kwargs

        if embeds_dtype != dtype:
            hf.get_submodule(family.merge_in_model_dtype).register_forward_pre_hook(cast_inputs_embeds,
                                                                                    with_kwargs=True)
    model.get_input_embeddings().register_forward_hook(cast_to(embeds_dtype))
    for name, module in model.named_modules():
        if names and name.split(".")[-1] in names:
            module.register_forward_hook(cast_to(dtype))


def train_autocast(accelerator):
    """The context every forward of a training run runs in: Accelerate's autocast (train.mixed_precision); with fp16
    on a CPU, where Accelerate has none, torch's CPU autocast to float16."""
    import torch

    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.float16)
    return accelerator.autocast()


def upcast_trainables(model) -> int:
    """Keep every trainable parameter (LoRA adapters, `modules_to_save` such as the projector, all weights of a full
    fine-tune) in float32 while the frozen base stays in bf16/fp16: AdamW on bf16 weights loses most small updates
    (a bf16 weight near 1 cannot move by less than 2^-8), and on fp16 its eps rounds to 0 (NaN at step 2). The forward
    runs under Accelerate's autocast (train.mixed_precision matches model.dtype, checked by the config). Returns the
    number of parameters upcast."""
    import torch

    n = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
            p.data = p.data.float()
            n += p.numel()
    return n
