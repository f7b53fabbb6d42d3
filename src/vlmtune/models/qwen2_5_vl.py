"""Qwen2.5-VL family (`Qwen2_5_VLForConditionalGeneration`): ViT with window attention, SwiGLU MLPs and RMSNorm ->
2x2 patch merger -> Qwen2.5 decoder with multimodal rotary positions (M-RoPE).

Checkpoints: Qwen/Qwen2.5-VL-3B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct, Qwen/Qwen2.5-VL-72B-Instruct (and
fine-tunes).

Prompt format and processing are Qwen2-VL's (qwen2_vl.py): the same ChatML chat template, the same image processor
(dynamic resolution, `<|image_pad|>` expanded to the merged patches), the same trained tokens (answer +
`<|im_end|>`). Only the vision tower differs, so this file reuses qwen2_vl's processor, `encode` and
`image_tokens` and defines the architecture.

Traps handled here (besides Qwen2-VL's):
- Without `mm_token_type_ids` Qwen2.5-VL does not raise but silently computes wrong rotary positions; `encode`
  always passes it.
- Window attention: `window_size` is in pixels and must cover whole merged patches (patch x merge); the layers in
  `fullatt_block_indexes` attend over the whole image.
"""

from __future__ import annotations

from vlmtune.models import qwen2_vl
from vlmtune.models.family import Loaded, ModelFamily


def load(cfg) -> Loaded:
    return qwen2_vl.load(cfg, family="qwen2_5_vl")


def tiny() -> Loaded:
    """A random Qwen2.5-VL: ViT 2 layers dim 32 (layer 0 attends within windows of 2x2 merged patches, layer 1 over
    the whole image), merger into qwen2_vl's tiny decoder."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=8,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=32, fullatt_block_indexes=[1])
    return qwen2_vl.build_tiny(Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, vision, "qwen2_5_vl")


FAMILY = ModelFamily(
    name="qwen2_5_vl",
    description="Qwen2.5-VL (Qwen/Qwen2.5-VL-*-Instruct): window-attention ViT -> patch merger -> Qwen2.5 with M-RoPE",
    load=load,
    encode=qwen2_vl.encode,
    lora_targets=qwen2_vl.FAMILY.lora_targets,  # the vision MLPs are gate/up/down_proj too: the regex keeps them out
    freeze_groups=qwen2_vl.FREEZE_GROUPS,
    tiny=tiny,
    image_tokens=qwen2_vl.image_tokens,
    video_tokens=qwen2_vl.video_tokens,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    processor_loader=lambda path, **options: qwen2_vl.load_processor(path, "qwen2_5_vl", **options),
    projector_modules=("merger",),
    vision_cache=True,  # takes mm_encoder_outputs (images; videos per get_video_features, video_cache)
    video_cache="videos",
    packing=True,  # with each sample's M-RoPE positions, as Qwen2-VL
    pack_inputs=qwen2_vl.pack_inputs,
    language_model="model.language_model",
    vision_tower="model.visual",
)
