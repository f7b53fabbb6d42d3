"""Compose a VLM from parts: a CLIP/SigLIP vision tower + a causal language model + a new projector -> an ordinary
Hugging Face LLaVA-architecture model directory (how ClipCap and LLaVA stage 1 are built; not FROMAGe, which also
trains a [RET] token mapped into a retrieval space: vlmtune's retrieval is a separate dual encoder).

    vlmtune compose --vision openai/clip-vit-large-patch14-336 --lm lmsys/vicuna-7b-v1.5 --projector mlp2x --out m

What is written:
* `LlavaForConditionalGeneration` whose `vision_tower` holds the vision checkpoint's weights (from a CLIP/SigLIP
  vision model or the vision half of a full CLIP/SigLIP model), whose language model and LM head hold the causal
  LM's weights, and whose projector is new (random, seeded);
* a `LlavaProcessor`: the vision checkpoint's image processor (the PIL one: no torchvision), the LM's tokenizer with
  an `<image>` token added (the embedding matrix grows by one row, initialised to the mean of the others), and the
  LM's chat template or, without one, LLaVA-1.5's `USER: ... ASSISTANT:` template.

Projectors: `mlp2x` is LLaVA-1.5's Linear-GELU-Linear; `linear` (LLaVA v1, ClipCap's simplest form) is the same two
layers with no activation and the second one initialised to the identity, i.e. one linear map, kept in LLaVA's
module layout so that the result loads with the Auto classes.

Image features: CLIP's second-to-last layer without its CLS token (LLaVA-1.5's choice); SigLIP has no CLS token, so
all of its patches. The recipe `configs/llava/compose-stage1_full_captions.yaml` then trains the projector alone
(`freeze_vision`, `freeze_language`); stage 2 adds LoRA on the language model (docs/compose.md).
"""

from __future__ import annotations

from pathlib import Path

from vlmtune.config import check_model_path
from vlmtune.io import atomic_dir
from vlmtune.models.builtin import CHAT_TEMPLATE

IMAGE = "<image>"
VISION_TYPES = ("clip", "clip_vision_model", "siglip", "siglip_vision_model")


def _vision(path: str):
    """(vision config, vision model with weights, whether it has a CLS token) of a CLIP/SigLIP checkpoint."""
    from transformers import AutoConfig, CLIPVisionModel, SiglipVisionModel

    check_model_path(path)
    config = AutoConfig.from_pretrained(path)
    if config.model_type not in VISION_TYPES:
        raise ValueError(f"compose --vision {path}: a CLIP or SigLIP checkpoint is needed, got model_type "
                         f"{config.model_type!r}")
    clip = config.model_type.startswith("clip")
    model = (CLIPVisionModel if clip else SiglipVisionModel).from_pretrained(path)
    return model.config, model, clip


def _chat_template(tokenizer) -> str:
    return tokenizer.chat_template or CHAT_TEMPLATE


def compose(vision: str, lm: str, out: str | Path, projector: str = "mlp2x", seed: int = 0) -> dict:
    """Write the composed model + processor to `out` (which must not exist); returns a summary."""
    import torch
    from transformers import (
        AutoImageProcessor,
        AutoModelForCausalLM,
        AutoTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"compose --out {out}: already exists (never overwritten)")
    if projector not in ("linear", "mlp2x"):
        raise ValueError(f"compose --projector: linear or mlp2x, got {projector!r}")
    vision_config, vision_model, clip = _vision(vision)
    try:
        image_processor = AutoImageProcessor.from_pretrained(vision, use_fast=False)
    except OSError as e:
        raise ValueError(f"compose --vision {vision}: no image processor config (preprocessor_config.json)") from e
    check_model_path(lm)
    language = AutoModelForCausalLM.from_pretrained(lm, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(lm)
    if tokenizer.pad_token is None:  # batching needs one; the EOS is the usual choice
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE]}, replace_extra_special_tokens=False)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)
    torch.manual_seed(seed)
    language.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    if getattr(language.config, "tie_word_embeddings", False) and not hasattr(language.base_model, "embed_tokens"):
        # LLaVA ties its lm_head to `language_model.embed_tokens` by that name; GPT-2-style LMs (ruGPT-3, GPT-2)
        # call the matrix `wte`, and tying would fail. The head becomes its own copy of the embedding matrix instead
        # (the same values: the composed model computes what the LM did; they train apart from here on).
        language.config.tie_word_embeddings = False
    config = LlavaConfig(
        vision_config=vision_config, text_config=language.config, image_token_id=image_token_id,
        vision_feature_layer=-2, vision_feature_select_strategy="default" if clip else "full",
        projector_hidden_act="gelu" if projector == "mlp2x" else "linear",
        tie_word_embeddings=getattr(language.config, "tie_word_embeddings", False),
    )
    model = LlavaForConditionalGeneration(config).to(torch.float32)
    model.model.vision_tower.load_state_dict(vision_model.state_dict())
    model.model.language_model.load_state_dict(language.base_model.state_dict())
    model.lm_head.load_state_dict(language.get_output_embeddings().state_dict())
    if projector == "linear":  # one linear map: linear_2 starts as the identity
        with torch.no_grad():
            model.model.multi_modal_projector.linear_2.weight.copy_(torch.eye(language.config.hidden_size))
            model.model.multi_modal_projector.linear_2.bias.zero_()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1 if clip else 0, chat_template=_chat_template(tokenizer),
    )
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    n = sum(p.numel() for p in model.parameters())
    return {"out": str(out), "vision": vision, "lm": lm, "projector": projector, "parameters": n,
            "image_token_id": image_token_id}
