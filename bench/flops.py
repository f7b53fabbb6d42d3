"""The FLOP counter of the benches (bench/train_speed.py, bench/vision_cache.py): torch's FlopCounterMode around
a call, the counts grouped by module, the analytic count of the built-in LLaVA-architecture model, and FLOPs in
words.

FlopCounterMode counts matmuls and convolutions (not CPU SDPA attention, which the analytic count adds).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Counted:
    total: int
    """FLOPs of the whole call."""
    by_module: dict[str, int]
    """Module name (FlopCounterMode's: `Global`, `PeftModelForCausalLM.base_model.model.lm_head`, ...) -> its FLOPs,
    its submodules' included."""
    result: object = None
    """What the call returned."""


def count_flops(fn, *args, **kwargs) -> Counted:
    """FLOPs of `fn(*args, **kwargs)` (a forward, or a forward and its backward), counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        result = fn(*args, **kwargs)
    return Counted(counter.get_total_flops(), {k: sum(v.values()) for k, v in counter.get_flop_counts().items()},
                   result)


def by_group(counted: Counted, groups: dict[str, str]) -> dict[str, int]:
    """Group name -> FLOPs of the outermost module whose name ends with the group's suffix (0 if none does)."""
    out = {}
    for g, suffix in groups.items():
        keys = [k for k in counted.by_module if k.endswith(suffix)]
        out[g] = counted.by_module[min(keys, key=len)] if keys else 0
    return out


def llava_analytic(config, lora_r: int, t_pad: int, kept: float) -> dict[str, float]:
    """Forward FLOPs per sample of a LLaVA-architecture model (fp32) by part, from its config: 2 x (matmul weights x
    tokens) + attention scores/values (2 x 2 T^2 d per layer). `lora_r`: LoRA on q, k, v, o, gate, up, down;
    `t_pad`: positions in the language model; `kept`: positions whose logits are computed (the loss positions)."""
    vc, tc = config.vision_config, config.text_config
    npatch = (vc.image_size // vc.patch_size) ** 2
    tv, dv, dt = npatch + 1, vc.hidden_size, tc.hidden_size
    kv = tc.num_key_value_heads * (dt // tc.num_attention_heads)
    text_w = (2 * dt * dt + 2 * dt * kv + 3 * dt * tc.intermediate_size) * tc.num_hidden_layers
    r, inter = lora_r, tc.intermediate_size  # LoRA on q, k, v, o, gate, up, down: r x (in + out) each
    lora_w = tc.num_hidden_layers * r * (2 * dt + 2 * (dt + kv) + 2 * dt + 3 * (dt + inter))
    vis_w = (4 * dv * dv + 2 * dv * vc.intermediate_size) * vc.num_hidden_layers
    return {
        "vision tower": 2 * (npatch * 3 * vc.patch_size**2 * dv + tv * vis_w),
        "vision attention (sdpa)": 2 * 2 * tv * tv * dv * vc.num_hidden_layers,
        "projector": 2 * npatch * (dv * dt + dt * dt),
        "language model": 2 * t_pad * (text_w + lora_w),
        "language attention (sdpa)": 2 * 2 * t_pad * t_pad * dt * tc.num_hidden_layers,
        "LM head": 2 * kept * dt * tc.vocab_size,
    }


def human_flops(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}FLOP"
    return f"{x:.3g} FLOP"
