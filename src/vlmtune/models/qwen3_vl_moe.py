"""Qwen3-VL-MoE family (`Qwen3VLMoeForConditionalGeneration`): Qwen3-VL (qwen3_vl.py) with a mixture-of-experts
Qwen3 decoder: each layer's MLP is a router over many small SwiGLU experts, a few of them per token.

Checkpoints: Qwen/Qwen3-VL-30B-A3B-Instruct, Qwen/Qwen3-VL-235B-A22B-Instruct (and fine-tunes).

Prompt format and processing are Qwen3-VL's: the same chat template, processor (`qwen3_vl.Qwen3Processor`, saved as
`Qwen3VLProcessor`), `encode`, `image_tokens` and native video (`video_tokens`: per temporal patch a `<seconds>` text
and its wrapped `<|video_pad|>`s); the vision tower (with DeepStack) is the same too, and so is the frozen-vision
cache.

Traps handled here (besides Qwen3-VL's):
- The experts are fused 3-D parameters (`mlp.experts.gate_up_proj` [experts, 2 x inter, hidden] and
  `mlp.experts.down_proj`), not `nn.Linear` modules: peft's `target_modules` cannot adapt them, so LoRA targets
  the attention linears (`q/k/v/o_proj`, and the dense MLP of any `mlp_only_layers`); the experts and the router
  (`mlp.gate`) stay frozen under LoRA and are trained in full fine-tuning. (peft's `target_parameters` could put
  LoRA on the fused experts; vlmtune's `lora.targets` are module names.)
- `decoder_sparse_step` / `mlp_only_layers` decide which layers are MoE; the tiny model has both kinds.
- The router's auxiliary load-balancing loss is not added (`output_router_logits` off, as in the checkpoints'
  configs): the trained loss is the language-model loss the contract compares.
"""

from __future__ import annotations

from vlmtune.models import qwen3_vl
from vlmtune.models.family import Loaded, ModelFamily


def load(cfg) -> Loaded:
    return qwen3_vl.load(cfg, "qwen3_vl_moe")


def tiny() -> Loaded:
    """A random Qwen3-VL-MoE: qwen3_vl's tiny ViT; decoder layer 0 a dense MLP, layer 1 4 experts (2 per token)."""
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    processor = qwen3_vl.build_processor()
    text = qwen3_vl.text_config(processor.tokenizer, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                decoder_sparse_step=1, mlp_only_layers=[0])
    return qwen3_vl.build_tiny(Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration, processor, text,
                               qwen3_vl.vision_config(deepstack_visual_indexes=[0, 1]), "qwen3_vl_moe")


FAMILY = ModelFamily(
    name="qwen3_vl_moe",
    description="Qwen3-VL-MoE (Qwen/Qwen3-VL-*-A*B-Instruct): Qwen3-VL's ViT -> merger -> mixture-of-experts Qwen3",
    load=load,
    encode=qwen3_vl.FAMILY.encode,
    lora_targets=qwen3_vl.FAMILY.lora_targets,  # matches the attention (and dense MLP) linears; experts are 3-D
    freeze_groups=qwen3_vl.FREEZE_GROUPS,
    tiny=tiny,
    image_tokens=qwen3_vl.FAMILY.image_tokens,
    video_tokens=qwen3_vl.FAMILY.video_tokens,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    projector_modules=("merger",),
    vision_cache=True,  # takes mm_encoder_outputs (pooled + DeepStack features): the frozen-vision cache applies
    video_cache="videos",
    processor_loader=qwen3_vl.load_processor,
    packing=True,  # with each sample's M-RoPE positions, as Qwen2-VL (qwen2_vl.pack_inputs)
    pack_inputs=qwen3_vl.FAMILY.pack_inputs,
    language_model="model.language_model",
    vision_tower="model.visual",
)
