"""What a run trains and in which precision: LoRA or freezing by group (`make_trainable`), float32 trainables on a
bf16/fp16 base (`upcast_trainables`), the dtype at the seams where model code merges image features into the text
(`align_dtypes`), and the autocast every training forward runs in (`train_autocast`). Used by the loop's setup and by
the recipe check (tests/recipe_trainables.py), which applies the same to a real config on the meta device."""

from __future__ import annotations

from vlmtune.config import RunCfg
from vlmtune.models import ModelFamily
from vlmtune.models.family import freeze_group_of


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
    return model


def align_dtypes(model, family: ModelFamily, dtype) -> None:
    """After `upcast_trainables` a model mixes dtypes: e.g. a full fine-tune's float32 language model beside a frozen
    bf16 vision tower. Autocast covers the matmuls, not the code that merges image features into the text embeddings
    (SmolVLM/Idefics3 cast the features to the model's first weight's dtype, then masked_scatter them into the
    embeddings): the input embeddings' and the projector's outputs are cast to the base dtype (`model.dtype`), as
    they are in a model loaded for inference. The float32 weights still get their gradients through the cast."""
    names = family.projector_modules

    def cast(module, args, output):
        return output.to(dtype) if hasattr(output, "is_floating_point") and output.is_floating_point() else output

    model.get_input_embeddings().register_forward_hook(cast)
    for name, module in model.named_modules():
        if names and name.split(".")[-1] in names:
            module.register_forward_hook(cast)


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
