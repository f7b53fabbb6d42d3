"""FLOPs of a training step and the time of an epoch on a named GPU at a stated MFU.

Matmul FLOPs per token (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", section 2.1: a forward pass
costs 2·N FLOPs per token for N non-embedding parameters, the backward pass twice that):
  * 6·N for parameters that train (forward, gradient of the input, gradient of the weight);
  * 4·N for frozen parameters a gradient passes through (a LoRA run's base language model: forward + input gradient);
  * 2·N for frozen parameters no gradient reaches (a frozen vision tower under LoRA: forward only).
Attention adds 4·s·h per token and layer forward (QKᵀ and AV, 2·s·h each, s the row length; the causal half is not
subtracted: sdpa's math and memory-efficient kernels compute it), x3 with its backward. The LM head runs on the
answer positions only (vlmtune's `logits_to_keep`). The vision tower's parameters run once per patch.

GPU_PEAK: dense (no 2:4 sparsity) bf16 tensor-core peak FLOP/s from each vendor datasheet, whose headline figures are
"with sparsity" and twice these: NVIDIA H100 datasheet (SXM 1,979 / PCIe 1,513 TFLOPS with sparsity), H200 datasheet
(1,979 with sparsity, the same Hopper die as H100 SXM), A100 datasheet (312 dense), L40S datasheet (362.05 dense /
733 sparse), L4 datasheet (242 with sparsity -> 121), A10 datasheet (125 dense / 250 sparse), NVIDIA Ada GPU
architecture whitepaper (RTX 4090: 165.2 dense FP16/BF16 with FP32 accumulate), T4 datasheet (no bf16: 65 FP16
mixed precision). Memory is the card's.
"""

from __future__ import annotations

GPU_PEAK: dict[str, tuple[float, float]] = {
    # name: (dense bf16 FLOP/s, memory bytes)
    "h100-sxm": (989e12, 80e9),
    "h100-pcie": (756e12, 80e9),
    "h200": (989e12, 141e9),
    "a100-80gb": (312e12, 80e9),
    "a100-40gb": (312e12, 40e9),
    "l40s": (362e12, 48e9),
    "l4": (121e12, 24e9),
    "a10": (125e12, 24e9),
    "rtx4090": (165e12, 24e9),
    "t4": (65e12, 16e9),
}
ALIASES = {"h100": "h100-sxm", "a100": "a100-80gb", "4090": "rtx4090", "rtx-4090": "rtx4090"}
MFU = 0.35
"""Model FLOPs utilisation assumed for the time estimates (printed with them): a typical well-fed bf16 fine-tune on
one GPU reaches 30-45%; LoRA runs with small micro-batches and many image tokens often less."""


def gpu_spec(name: str) -> tuple[str, float, float]:
    """(canonical name, peak FLOP/s, memory bytes) of a GPU name; ValueError naming the known ones."""
    key = name.strip().lower().replace(" ", "-").replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in GPU_PEAK:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(sorted(GPU_PEAK))} (or give --gpu-memory)")
    return (key, *GPU_PEAK[key])


def step_flops(counts: dict, d, n_tokens: int, n_patches: int, n_targets: int, row_len: int, lang_mode: str,
               adapters: int, vision_mode: str) -> dict:
    """FLOPs of one optimizer step's worth of samples: `n_tokens` language positions (padding included), `n_patches`
    vision positions, `n_targets` LM-head positions. Modes: "frozen" (2N), "passes" (4N: frozen, a gradient flows
    through), "trained" (6N); `adapters`: LoRA parameters (6N on every position)."""
    factor = {"frozen": 2, "passes": 4, "trained": 6}
    towers = counts["towers"]
    lang_matmul = towers["language"] - counts["embedding"]
    lang = factor[lang_mode] * lang_matmul * n_tokens + 6 * adapters * n_tokens
    backward = 3 if lang_mode != "frozen" else 1
    attention = 4 * row_len * d.hidden * d.layers * n_tokens * backward
    head = 2 * d.vocab * d.hidden * n_targets * backward
    vision = factor[vision_mode] * (towers["vision"] + towers["projector"]) * n_patches
    total = lang + attention + head + vision
    return {"language": lang, "attention": attention, "lm_head": head, "vision": vision, "total": total}
