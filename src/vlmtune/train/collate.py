"""Packing: a right-padded training batch -> one row holding its samples back to back (`train.packing`).

Label masking, which every family's `encode` does, lives in `vlmtune.models.labels`.
"""

from __future__ import annotations

from vlmtune.models.family import Batch
from vlmtune.models.labels import IGNORE_INDEX


def pack(batch, family, model):
    """A right-padded training Batch of `family` -> one row holding its samples back to back, without padding.

    Per-token tensors (input_ids, labels, ...) keep the attention-masked positions of each row in order; each sample
    gets its own `position_ids` from 0, and there is no attention mask, so transformers treats the row as separate
    sequences (a block-diagonal causal mask, or varlen flash attention). Image tensors are unchanged: image features
    fill the image tokens in order. `segments` says which sample each position belongs to, so the loss is still
    summed per sample. Only for families with `ModelFamily.packing`; a family whose model needs more (Qwen2-VL's
    multimodal positions, Gemma 3's image masks) completes the row with its `ModelFamily.pack_inputs`, which gets
    `model` (the training model, possibly wrapped by peft: its config and position code, never its weights)."""
    import torch

    inputs = batch.inputs
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    lengths = mask.sum(dim=1)
    starts = torch.cumsum(lengths, 0) - lengths
    labels = inputs["labels"][mask]
    if (labels[starts] != IGNORE_INDEX).any():  # the previous sample's last token would be trained to predict it
        raise ValueError("packing: a sample's first token is a training target")
    packed = {name: value[mask].unsqueeze(0) if hasattr(value, "shape") and value.shape[:2] == ids.shape else value
              for name, value in inputs.items() if name != "attention_mask"}
    packed["position_ids"] = (torch.arange(int(lengths.sum())) - torch.repeat_interleave(starts, lengths))[None]
    packed["use_cache"] = False  # with a cache the model would not look for packed sequences
    if family.pack_inputs is not None:
        packed = family.pack_inputs(model, inputs, packed)
    segments = torch.repeat_interleave(torch.arange(len(lengths)), lengths)[None]
    return Batch(packed, batch.ids, batch.n_target_tokens, segments)
