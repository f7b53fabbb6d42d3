"""Tiny models vLLM's CPU build accepts, for the parity test (tests/serve/test_vllm_parity.py): a family's `tiny()`
with its language model widened to hidden 128 in 2 heads of 64, since vLLM's CPU attention takes head sizes of
32, 64, 80, ... 512 only (the tiny models have 8; docs/vllm-cpu.md). The vision tower stays tiny (vLLM runs it
through torch's sdpa, any head size), and so does the processor."""

from __future__ import annotations

from pathlib import Path

WIDE_FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm", "blip2", "internvl",
                 "llama4")


def save_wide_tiny(family_name: str, out: Path, seed: int = 0) -> Path:
    """The family's tiny model with a vLLM-sized language model (random weights, `seed`), saved with its processor
    as a plain HF directory."""
    import torch

    from vlmtune.models import get_family

    tiny = get_family(family_name).tiny()
    config = tiny.model.config
    text = config.text_config
    text.hidden_size, text.intermediate_size, text.num_attention_heads = 128, 256, 2
    text.num_key_value_heads = 2
    if hasattr(text, "head_dim"):
        text.head_dim = 64
    rope = getattr(text, "rope_parameters", None) or {}
    if "mrope_section" in rope:  # (t, h, w) sections sum to head_dim / 2
        rope["mrope_section"] = [16, 8, 8]
    vision = config.vision_config
    if family_name == "qwen2_vl":  # the merger's output is the language model's width
        vision.hidden_size = 128
    if family_name == "qwen2_5_vl":
        vision.out_hidden_size = 128
    if hasattr(text, "conv_dim"):  # LFM2: the convolutions' and blocks' widths, which vLLM reads
        text.conv_dim = text.block_dim = 128
    if getattr(text, "attention_chunk_size", None):  # Llama 4: vLLM's chunked attention takes whole KV blocks (128)
        text.attention_chunk_size = 128
    if family_name == "blip2":  # OPT: its own names for the widths
        text.word_embed_proj_dim, text.ffn_dim = 128, 256
    torch.manual_seed(seed)
    generation = tiny.model.generation_config
    model = type(tiny.model)(config).float().eval()
    model.generation_config = generation
    model.save_pretrained(out)
    tiny.processor.save_pretrained(out)
    return out
