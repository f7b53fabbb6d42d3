"""The itemised memory model of one training step, per GPU: weights, gradients, optimizer states, activations,
logits (and the vision cache on disk and in RAM). Each term says how it was obtained.

Weights, gradients and optimizer states are counted from the recipe's model after `make_trainable` (built on the
meta device, so every parameter has its real dtype): frozen weights in `model.dtype`, trainables in float32
(`train.trainable.upcast_trainables` keeps them so: AdamW on bf16 weights loses small updates), so their gradients
are float32 too, and torch's AdamW keeps two float32 states (exp_avg, exp_avg_sq) per trainable parameter. Under
`model.quantization` bitsandbytes stores the language model's Linear weights in 4 bits (0.5 byte per parameter plus
one float32 absmax per 64-weight block, or with double quantisation one byte per block plus a float32 per 256
blocks) or 8 bits (1 byte plus a float32 scale per row, ~1 byte); peft's `prepare_model_for_kbit_training`, which
vlmtune runs for QLoRA, casts every other bf16/fp16 parameter to float32. ZeRO-2 shards gradients and optimizer
states over the GPUs, ZeRO-3 / FSDP the weights too.

Activations: the tensors autograd saves for the backward pass, per decoder layer and token, adapted from Korthikanti
et al. 2022, "Reducing Activation Recomputation in Large Transformer Models" (arXiv:2205.05198, section 4.1: 34·s·b·h
bytes per layer for a GPT layer in 16 bits, plus 5·a·s²·b for the attention scores). Changes: the attention scores
are not stored (sdpa / flash attention keep only q, k, v, the output and a log-sum-exp per row), grouped-query
attention has smaller k and v, the MLP is gated (SwiGLU: gate, up, their activation and product, 4 x intermediate),
a frozen Linear saves nothing for its weight, and LoRA adds the float32 copies of the inputs peft hands its adapters
(see `language_activations`, whose terms were checked tensor by tensor with saved_tensors_hooks).
With gradient checkpointing each layer keeps only its input, and one layer's activations exist at a time during
recomputation. A frozen vision tower (LoRA on the language model, or freeze_vision) saves nothing, with or without
gradient checkpointing: no gradient passes it (`train.trainable.skip_frozen_vision_backward`), only one block's
transient forward exists (see `vision_activations`).

Autocast's copies of float32 trainable weights and AdamW's step temporary: see `predict`.

Logits: vlmtune computes logits only at the positions it trains (`models/loss.py`: `logits_to_keep` = the answer
tokens), n_targets x vocab, in the compute dtype, then a float32 copy for cross-entropy and its float32 log-softmax
(saved for backward) and gradient; full logits are the same for every position of the sequence (sequence x vocab).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmtune.config import RunCfg
from vlmtune.train.plan.params import Dims

GIB = 1 << 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LOGIT_COPIES = 3
"""float32 tensors of n x vocab alive at the cross-entropy's backward: the float32 logits, the saved log-softmax and
its gradient (plus the logits in the compute dtype, counted separately)."""


@dataclass(frozen=True)
class Sharding:
    """How the training state is split over `gpus`: "none" (DDP: every GPU holds everything), "zero2" (gradients
    and optimizer states sharded), "zero3" / "fsdp" (weights too)."""

    mode: str = "none"
    gpus: int = 1

    def share(self, term: str) -> float:
        sharded = {"none": (), "zero2": ("grads", "optimizer"), "zero3": ("weights", "grads", "optimizer"),
                   "fsdp": ("weights", "grads", "optimizer")}[self.mode]
        return 1 / self.gpus if term in sharded else 1.0


@dataclass(frozen=True)
class Shape:
    """What one micro-batch looks like: rows x longest row (positions), trained tokens, vision positions."""

    rows: int
    seq: int
    targets: int
    patches: int
    images: int
    image_tokens: int


def state_bytes(model, q, quantised: int) -> dict:
    """(weights, grads, optimizer) bytes of the model after make_trainable, from each parameter's real dtype;
    under `q` (a QuantCfg or None) the `quantised` parameters (`params.quantised_params`) at their bitsandbytes
    size. Also `step_temp`, the float32 temporary of AdamW's step, and `cast_params`, the trainables that autocast
    copies into the compute dtype (see `predict`)."""
    weights = grads = 0.0
    group_bytes = [0.0, 0.0]  # train/optim.adamw's two groups: matrices (ndim >= 2), the rest
    cast_params = 0
    try:  # an input embedding that is not also the LM head is only looked up (not autocast)
        lookup = model.get_input_embeddings().weight
        head = model.get_output_embeddings()
        if head is not None and head.weight is lookup:
            lookup = None
    except (AttributeError, NotImplementedError):
        lookup = None
    for _, p in model.named_parameters():
        size = p.element_size()
        if p.requires_grad:
            grads += p.numel() * size
            group_bytes[0 if p.ndim >= 2 else 1] += p.numel() * size
            if p.ndim >= 2 and p is not lookup:
                cast_params += p.numel()
        elif q is not None and p.dtype.itemsize == 2:
            size = 4  # prepare_model_for_kbit_training: the unquantised frozen parameters in float32
        weights += p.numel() * size
    if q is not None:
        # the quantised Linear weights were counted above in float32 (as prepare_model_for_kbit_training would
        # leave an unquantised one): count them at their stored size instead
        if q.bits == 4:
            per = 0.5 + ((1 + 4 / 256) / 64 if q.double_quant else 4 / 64)
        else:
            per = 1.0 + 4 / 1024
        weights += quantised * (per - 4)
    return {"weights": weights, "grads": grads, "optimizer": 2 * grads, "step_temp": max(group_bytes),
            "cast_params": cast_params}


LINEAR_INPUTS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def adapted(lora_targets: tuple[str, ...]) -> list[str]:
    """Which of a decoder layer's Linears LoRA adapts: each name that a target (a suffix or a regex) mentions."""
    text = " ".join(lora_targets)
    return [name for name in LINEAR_INPUTS if name in text]


def language_activations(d: Dims, cfg: RunCfg, shape: Shape, lora_targets: tuple[str, ...], act_bytes: int) -> dict:
    """Saved activations of the language model for one micro-batch (bytes), with and without checkpointing.

    Per token and layer, in the compute dtype: 5·h + 2·kv + 4·I (the attention's normed input, q, its output twice
    (sdpa's output and o_proj's input), k and v; the MLP's normed input, gate, up, act(gate) and their product).
    Under LoRA each adapted Linear also saves its input as peft hands it to lora_A: cast to the adapters' float32
    (and through dropout), so one float32 copy of h (q/k/v/o/gate/up) or I (down) each, whenever the base is
    bf16/fp16 or lora.dropout > 0. Plus the final norm's float32 input once, and a backward workspace of one
    layer's MLP gradients (T·I in 3 compute-dtype and 1 float32 tensors). Checked with
    torch.autograd.graph.saved_tensors_hooks on a Qwen2-VL layer (tests/train/test_plan_memory.py)."""
    h, inter = d.hidden, d.intermediate
    kv = d.kv_heads * (h // d.heads)
    tokens = shape.rows * shape.seq
    lora, full = cfg.lora.enabled, not cfg.lora.enabled and not cfg.train.freeze_language
    if not lora and not full:
        return {"saved": 0.0, "checkpointed": 0.0, "per_layer": 0.0, "workspace": 0.0}
    per_token = (5 * h + 2 * kv + 4 * inter) * act_bytes
    if lora and (act_bytes != 4 or cfg.lora.dropout > 0):
        widths = {name: inter if name == "down_proj" else h for name in LINEAR_INPUTS}
        per_token += 4 * sum(widths[name] for name in adapted(lora_targets))
    per_layer = per_token * tokens
    final = tokens * h * 4
    workspace = tokens * inter * (3 * act_bytes + 4)
    saved = per_layer * d.layers + final + workspace
    checkpointed = tokens * h * act_bytes * d.layers + per_layer + final + workspace  # inputs + one layer recomputed
    return {"saved": saved, "checkpointed": checkpointed, "per_layer": per_layer, "workspace": workspace}


def vision_activations(d: Dims, cfg: RunCfg, shape: Shape, act_bytes: int) -> dict:
    """Saved activations of the vision tower (bytes): none when it is frozen; else per block and patch LayerNorm
    in/out x2, q, k, v, attention output, projection input, the MLP's hidden and activation: 9 x width + 2 x
    intermediate.

    A frozen tower gets no gradient, with or without gradient checkpointing. (transformers'
    `activation_checkpointing_enable` hooks the vision tower's patch embedding to require grad, which made the
    backward run through every frozen, checkpointed vision block: measured on SmolVLM as the peak of a LoRA step with
    checkpointing, ~50 MB per image above the step without. `make_trainable` removes those hooks
    (`train.trainable.skip_frozen_vision_backward`), so the term is gone for a frozen tower.) A trained tower under
    checkpointing keeps its blocks' inputs and recomputes one block at a time in its backward: `checkpointed` = the
    block inputs + one block's `per_layer`, not added to the language model's (whose backward is over by then): see
    `predict`."""
    w, inter = d.vision_hidden, d.vision_intermediate
    per_layer = shape.patches * (9 * w + 2 * inter) * act_bytes
    trained = not cfg.train.freeze_vision and not cfg.lora.enabled  # the only case a gradient runs through it
    saved = per_layer * d.vision_layers if trained else 0.0
    transient = shape.patches * (4 * w + 2 * inter) * act_bytes  # one block's forward
    inputs = shape.patches * w * act_bytes * d.vision_layers if trained else 0.0
    checkpointed = inputs + per_layer if trained else 0.0
    return {"saved": saved, "checkpointed": checkpointed, "inputs": inputs, "transient": transient,
            "trained": trained}


def logits_bytes(d: Dims, shape: Shape, act_bytes: int) -> dict:
    """Answer-only (vlmtune) and full logits, bytes: positions x vocab x (compute dtype + LOGIT_COPIES x 4)."""
    per = d.vocab * (act_bytes + LOGIT_COPIES * 4)
    return {"answer_only": shape.targets * per, "full": shape.rows * shape.seq * per,
            "answer_positions": shape.targets, "full_positions": shape.rows * shape.seq}


def inputs_bytes(d: Dims, shape: Shape, act_bytes: int) -> float:
    """The micro-batch itself: input ids, attention mask and labels (int64) and the pixel values (3 x patch² per
    vision position, in the compute dtype)."""
    return shape.rows * shape.seq * 8 * 3 + shape.patches * 3 * d.patch_size**2 * act_bytes


def vision_cache_bytes(n_images: int, mean_image_tokens: float, d: Dims, dtype_bytes: int) -> float:
    """The frozen-vision cache's features (train/vision_cache.py): per image, its image tokens x the language model's
    width in the base dtype (get_image_features' output), one safetensors file each."""
    return n_images * mean_image_tokens * d.hidden * dtype_bytes


def predict(cfg: RunCfg, d: Dims, state: dict, shape: Shape, sharding: Sharding, lora_targets: tuple[str, ...]
            ) -> dict:
    """The itemised peak of one step per GPU (bytes) and its total under `train.gradient_checkpointing`.

    Two moments compete for the peak of a steady-state step (AdamW's states exist from the second step on): the end
    of the forward / start of the backward (weights, grads and states, the activations, autocast's weight copies,
    the logits) and AdamW's step (weights, grads, states and the step's float32 temporary). Both were missed before
    full fine-tuning was measured (Qwen2-VL-2B cut to 2+2 layers, 18% under):
    - `weight_casts`: under bf16/fp16 autocast every float32 trainable matrix (all of a full fine-tune's; LoRA's
      adapters) is cast to the compute dtype once per forward, and autocast keeps that copy (its cache holds casts
      of leaf tensors that require grad) until the autocast context ends, the backward's saved tensors after it.
      An input embedding that is only looked up (not tied to the LM head) is not cast.
    - `optim_step`: torch's AdamW on a GPU (foreach) computes sqrt(exp_avg_sq) for a whole parameter group at once:
      one float32 temporary the size of the largest group's trainables (train/optim.py: the matrices), at a moment
      when the activations are gone; the item is what it adds above the backward's activations + casts + logits."""
    act_bytes = DTYPE_BYTES[cfg.model.dtype]
    lang = language_activations(d, cfg, shape, lora_targets, act_bytes)
    vis = vision_activations(d, cfg, shape, act_bytes)
    ckpt = cfg.train.gradient_checkpointing
    # under checkpointing a trained vision tower's backward (recomputing one block) comes after the language model's
    with_ckpt = max(lang["checkpointed"] + vis["inputs"], vis["checkpointed"])
    activations = with_ckpt if ckpt else lang["saved"] + vis["saved"]
    activations = max(activations, vis["transient"])
    logits = logits_bytes(d, shape, act_bytes)
    casts = state.get("cast_params", 0) * act_bytes if act_bytes < 4 else 0.0
    casts *= sharding.share("weights")
    step_temp = state.get("step_temp", 0.0) * sharding.share("optimizer")
    items = {
        "weights": state["weights"] * sharding.share("weights"),
        "grads": state["grads"] * sharding.share("grads"),
        "optimizer": state["optimizer"] * sharding.share("optimizer"),
        "activations": activations,
        "weight_casts": casts,
        "logits": logits["answer_only"],
        "optim_step": max(0.0, step_temp - (activations + casts + logits["answer_only"])),
        "inputs": inputs_bytes(d, shape, act_bytes),
    }
    return {"items": items, "total": sum(items.values()),
            "activations_without_checkpointing": lang["saved"] + vis["saved"],
            "activations_with_checkpointing": with_ckpt,
            "full_logits": logits["full"], "answer_logits": logits["answer_only"],
            "logit_positions": {"answer_only": logits["answer_positions"], "full": logits["full_positions"]},
            "vision_trained": vis["trained"], "gradient_checkpointing": ckpt, "sharding": sharding.mode,
            "micro_batch": {"rows": shape.rows, "seq": shape.seq, "targets": shape.targets,
                            "patches": shape.patches}}
