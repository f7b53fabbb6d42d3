"""The model sections of a run: `ModelCfg` (with the built-in model's `BuiltinCfg` and QLoRA's `QuantCfg`) and
`LoraCfg`; `check_model_path`, which refuses a local-looking model path that does not exist.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass
class BuiltinCfg:
    """The built-in model: an HF LLaVA-architecture model (CLIP vision tower + Llama decoder) built from a config."""

    image_size: int = 64
    patch_size: int = 8
    vision_dim: int = 128
    vision_layers: int = 4
    text_dim: int = 128
    text_layers: int = 2
    heads: int = 4
    vocab_size: int = 640
    """Size of the byte-level BPE vocabulary trained at build time (special tokens included)."""


@dataclass
class QuantCfg:
    """A 4- or 8-bit quantised base model (QLoRA, through bitsandbytes): the language model's linear layers are
    stored quantised and frozen, LoRA adapters train in `compute_dtype`. The vision tower, projector and LM head stay
    in `model.dtype` (their weights are few; quantising them costs accuracy for no memory worth having)."""

    bits: int = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type; NF4 is the QLoRA paper's."""
    double_quant: bool = True
    """Quantise the quantisation constants too (QLoRA: ~0.4 bit per parameter saved)."""
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    skip_modules: list[str] | None = None
    """Module names (prefixes) kept unquantised; None: the family's vision and projector groups and the LM head."""

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise ValueError(f"model.quantization.bits must be 4 or 8, got {self.bits}")


@dataclass
class ModelCfg:
    family: str = "llava"
    path: str = "builtin"
    """A local directory or hub id loaded with the Auto classes; "builtin" builds the built-in model from `builtin`
    with random weights (for training from scratch)."""
    builtin: BuiltinCfg = field(default_factory=BuiltinCfg)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: str | None = None
    """"sdpa", "eager", "flash_attention_2", ...; None: what transformers picks (sdpa where the model supports it)."""
    trust_remote_code: bool = False
    revision: str | None = None
    quantization: QuantCfg | None = None
    """Load the base quantised to 4 or 8 bits (QLoRA; needs `lora.enabled` and the bitsandbytes package)."""
    max_pixels: int | None = None
    """The most pixels an image may have after the processor's resize, for the families whose image tokens follow the
    image's size: fewer pixels, fewer image tokens, less memory and time (LLaMA-Factory's `image_max_pixels`).
    Qwen2-VL/2.5-VL: the `smart_resize` budget (each 28x28 block is one image token); Idefics3/SmolVLM: the longest
    edge, in whole tiles; Mistral 3: the longest edge, in whole 28 px tokens; LLaVA-NeXT/OneVision: the grid
    resolutions up to that area (set into the model's config too, which tiles by them); Mllama, InternVL: whole
    tiles; LFM2-VL: image tokens and tiles; Pix2Struct: the patches; Gemma 4: the largest soft-token budget
    (70/140/280/560/1120, one token per 48x48 block) that fits. Set into the processor at load time, so it is saved
    with every checkpoint and export: inference, eval and serving see images as training did. None: the processor's
    own setting. A family that resizes every image to one size (LLaVA-1.5, BLIP-2, PaliGemma, Gemma 3, ...) refuses
    it."""

    def __post_init__(self):
        if self.max_pixels is not None and (isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int)
                                             or self.max_pixels < 1):
            raise ValueError(f"model.max_pixels must be a positive whole number of pixels, got {self.max_pixels!r}")


LOCAL_PREFIXES = ("./", "../", "~", "runs/")


def check_model_path(path: str | Path) -> None:
    """Refuse a model path that looks local but does not exist, before anything asks the Hugging Face hub for it.
    Without this, `runs/shop-clip` (when the run is `runs/fashion-clip`) ends in "We couldn't connect to
    'https://huggingface.co'" offline, or a 404 for a repository nobody meant online.

    Looks local: absolute, starting with ./ ../ ~ or runs/, inside a directory that exists (`models/x` with a
    `models/` here), or holding a path separator while not being a hub id (`owner/name`: one slash, letters, digits,
    `-_.`). A hub id or a plain name (`gpt2`, `builtin`) passes, and so does any path that exists. Every command that
    loads a model calls this where it resolves the path (runs, checkpoints, `model.path`, dual encoders, compose,
    translate, chart reasoners)."""
    text = str(path)
    p = Path(text).expanduser()
    if p.exists():
        return
    local = p.is_absolute() or text.startswith(LOCAL_PREFIXES) or text.replace(os.sep, "/").startswith(LOCAL_PREFIXES)
    has_parent = len(p.parts) > 1
    local = local or (has_parent and p.parent.is_dir())
    if not local and (os.sep in text or "/" in text):
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(text)
        except HFValidationError:
            local = True
    if not local:
        return
    hint = ""
    if has_parent and p.parent.is_dir():
        names = sorted(x.name for x in p.parent.iterdir() if x.is_dir() and not x.name.startswith("."))
        shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
        hint = f" ({p.parent} holds: {shown})" if names else f" ({p.parent} is empty)"
    raise FileNotFoundError(f"no such run directory: {text}{hint}")


@dataclass
class LoraCfg:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: list[str] | None = None
    """Module-name suffixes; None: the family's `lora_targets`."""
