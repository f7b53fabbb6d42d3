"""Tiny random CLIP and SigLIP checkpoints built offline, for tests, the benchmark and trying the pipeline on CPU.

    from vlmtune.retrieval.tiny import build_tiny
    build_tiny("clip", "models/tiny-clip")      # then: vlmtune retrieve train --model models/tiny-clip ...

Each is an ordinary Hugging Face directory (CLIPModel / SiglipModel weights + a CLIPProcessor / SiglipProcessor), so
`DualEncoder.load`, training and indexing treat it exactly like `openai/clip-vit-base-patch32`. The tokenizer is a
byte-level BPE trained in-process on vlmtune's synthetic captions (as for the built-in VLM) with the family's framing:
CLIP `<s> text </s>` (pooled at `</s>`, whose id must not be 2: transformers keeps a legacy argmax pooling for
configs with eos_token_id 2), SigLIP `text </s>` (pooled at the last position). SigLIP's learnable temperature and
bias start where the SigLIP paper starts them (section 3.2: t' = log 10, b = -10), not at transformers' zeros.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from tokenizers import processors

from vlmtune.data.synthetic import WORLDS
from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.io import atomic_dir

PAD, BOS, UNK, EOS = "<pad>", "<s>", "<unk>", "</s>"


def _corpus() -> list[str]:
    """Captions, questions and answers of the fashion and shapes worlds (300 drawn samples each)."""
    lines = []
    for name in ("fashion", "shapes"):
        for sample, _ in WORLDS[name](300, seed=0, caption_fraction=0.5):
            lines += [sample.meta["caption"], sample.question, sample.target]
    return lines


def _tokenizer(family: str, max_length: int):
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_bpe(_corpus(), [PAD, BOS, UNK, EOS], 600)
    single = f"{BOS} $A {EOS}" if family == "clip" else f"$A {EOS}"
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(BOS, tok.token_to_id(BOS)), (EOS, tok.token_to_id(EOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
                                   model_max_length=max_length)


def build_tiny(family: Literal["clip", "siglip"], out: str | Path, image_size: int = 64, patch: int = 8,
               width: int = 64, layers: int = 2, dim: int = 64, max_length: int = 32, seed: int = 0) -> Path:
    """Write a random-weight dual encoder of `family` to `out` (created; an existing directory is refused)."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipProcessor,
    )

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists (never overwritten)")
    tokenizer = _tokenizer(family, max_length)
    tower = {"hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": layers,
             "num_attention_heads": 4}
    ids = {"vocab_size": len(tokenizer), "max_position_embeddings": max_length, "pad_token_id": tokenizer.pad_token_id,
           "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    torch.manual_seed(seed)
    if family == "clip":
        config = CLIPConfig(text_config={**tower, **ids}, projection_dim=dim,
                            vision_config={**tower, "image_size": image_size, "patch_size": patch})
        model = CLIPModel(config)
        processor = CLIPProcessor(image_processor=CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}),
            tokenizer=tokenizer)
    elif family == "siglip":  # SigLIP's text head maps to the vision width: both embeddings have `width` dims
        config = SiglipConfig(text_config={**tower, **ids, "projection_size": width},
                              vision_config={**tower, "image_size": image_size, "patch_size": patch})
        model = SiglipModel(config)
        with torch.no_grad():
            model.logit_scale.fill_(math.log(10.0))
            model.logit_bias.fill_(-10.0)
        processor = SiglipProcessor(image_processor=SiglipImageProcessor(
            size={"height": image_size, "width": image_size}), tokenizer=tokenizer)
    else:
        raise ValueError(f"tiny dual encoder family must be 'clip' or 'siglip', got {family!r}")
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out
