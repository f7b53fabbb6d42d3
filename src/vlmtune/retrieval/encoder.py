"""A dual encoder (CLIP or SigLIP) that turns images and texts into L2-normalised vectors of one shared space.

    enc = DualEncoder.load("openai/clip-vit-base-patch32")     # or a directory written by `vlmtune retrieve train`
    texts = enc.embed_texts(["a red dress"])                   # float32 [1, 512], each row of unit length
    images = enc.embed_images([Path("shop/0001.jpg")])         # decoded by vlmtune.data.images (limits, EXIF, RGB)
    scores = images @ texts.T                                  # cosine similarity

Both families score a pair by the cosine of the two projected embeddings (CLIP, Radford et al. 2021, Fig. 3:
`I_e = l2_normalize(I_f @ W_i)`, `T_e = l2_normalize(T_f @ W_t)`, `logits = I_e @ T_e.T * exp(t)`; SigLIP, Zhai et al.
2023, Alg. 1: the same normalised dot product, `* t + b`). Temperature and bias change neither the ranking nor the
retrieval, so only the normalised embeddings are kept. They are computed with the models' own `get_text_features` /
`get_image_features` (the same projection the models' `forward` uses), in batches, with gradients off.

The two families differ in how text is fed, which is what `DualFamily` records:
* CLIP pools the hidden state at the end-of-text token and masks padding, so `padding="longest"` is exact: a caption
  gets the same vector whatever else is in its batch (the tests check this).
* SigLIP pools the LAST position and was trained on text padded to a fixed 64 tokens with no attention mask (the HF
  model card: "make sure to set padding='max_length' as that's how the model was trained"), so texts are padded to
  the text model's `max_position_embeddings` and no mask is passed.

`fingerprint()` is what an index stores to refuse a different query model: model type, embedding size, a SHA-256 of
the model config and the embeddings of a fixed probe text and a fixed drawn probe image (a config hash alone cannot
tell a fine-tuned model from its base; the probes can, and they also catch a changed tokenizer or image processor).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from vlmtune.config import check_model_path
from vlmtune.data.images import load_image
from vlmtune.models.device import resolve_device

PROBE_TEXT = "a person wearing a red striped t-shirt and blue trousers"
PROBE_MIN_COSINE = 0.999
"""Index and query model must embed the probes to within this cosine (CPU vs GPU float noise is far smaller)."""


@dataclass(frozen=True)
class DualFamily:
    name: str
    padding: Literal["longest", "max_length"]
    text_mask: bool
    """Whether the attention mask is passed to the text tower."""
    towers: dict[str, tuple[str, ...]]
    """"vision" / "text" -> the parameter-name prefixes of that tower (its projection included), for freezing."""
    max_log_scale: float | None
    """Upper clamp of the learnable log-temperature after each optimizer step (CLIP: log 100), None: no clamp."""


FAMILIES: dict[str, DualFamily] = {
    # CLIP paper, 2.5: "clipped to prevent scaling the logits by more than 100" (open_clip clamps after each step)
    "clip": DualFamily("clip", "longest", True,
                       {"vision": ("vision_model.", "visual_projection."), "text": ("text_model.", "text_projection.")},
                       math.log(100.0)),
    # SigLIP: the text projection is `text_model.head`, the vision one the attention-pooling `vision_model.head`
    "siglip": DualFamily("siglip", "max_length", False, {"vision": ("vision_model.",), "text": ("text_model.",)}, None),
}

_VOLATILE = {"transformers_version", "dtype", "torch_dtype", "architectures", "output_attentions",
             "output_hidden_states", "return_dict", "use_cache"}


def config_sha256(config) -> str:
    """SHA-256 of a model config's architecture fields (bookkeeping keys such as `_name_or_path`, the transformers
    version and the dtype left out, at every nesting level), so the same architecture hashes the same anywhere."""
    def clean(d):
        if isinstance(d, dict):
            return {k: clean(v) for k, v in d.items() if not str(k).startswith("_") and k not in _VOLATILE}
        return d

    text = json.dumps(clean(config.to_dict()), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def probe_image(size: int = 224) -> Image.Image:
    """A fixed drawn image (colour gradients and a dark square), the same on every machine."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    rgb = np.stack([x, y, (x + y) / 2], axis=-1) * 255.0
    rgb[size // 4: size // 2, size // 4: size // 2] = 20.0
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


class DualEncoder:
    """A CLIPModel / SiglipModel with its tokenizer and (PIL) image processor."""

    def __init__(self, model, processor, family: DualFamily, name: str):
        self.model, self.processor, self.family, self.name = model, processor, family, name
        self.tokenizer, self.image_processor = processor.tokenizer, processor.image_processor

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> DualEncoder:
        """A CLIP or SigLIP checkpoint: a hub id or a directory (e.g. a `retrieve train` run's `best/`)."""
        import torch
        from transformers import AutoConfig, AutoModel, AutoProcessor

        check_model_path(path)
        path = str(path)
        if Path(path, "best", "config.json").is_file():  # a training run: its best checkpoint
            path = str(Path(path, "best"))
        try:
            config = AutoConfig.from_pretrained(path)
        except OSError as e:
            raise FileNotFoundError(f"{path}: not a model directory or hub id with a config.json ({e})") from None
        family = FAMILIES.get(config.model_type)
        if family is None:
            raise ValueError(f"{path}: a CLIP or SigLIP dual encoder is needed (model_type one of {sorted(FAMILIES)}), "
                             f"got model_type {config.model_type!r}")
        try:
            processor = AutoProcessor.from_pretrained(path)
        except OSError as e:
            raise FileNotFoundError(f"{path}: no tokenizer / image processor files next to the model ({e})") from None
        model = AutoModel.from_pretrained(path, dtype=torch.float32).to(resolve_device(device)).eval()
        return cls(model, processor, family, path)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def max_text_tokens(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    # ------------------------------------------------------------------ inputs (shared with training)

    def text_inputs(self, texts: Sequence[str]) -> dict:
        """Token ids (and the attention mask for CLIP) on the model's device."""
        enc = self.tokenizer(list(texts), padding=self.family.padding, truncation=True,
                             max_length=self.max_text_tokens(), return_tensors="pt")
        keys = ("input_ids", "attention_mask") if self.family.text_mask else ("input_ids",)
        return {k: enc[k].to(self.device) for k in keys}

    def image_inputs(self, images: Sequence[Image.Image]) -> dict:
        pixels = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels.to(self.device)}

    # ------------------------------------------------------------------ embeddings

    def _embed(self, n: int, batch_size: int, features) -> np.ndarray:
        import torch

        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        out = []
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                feats = features(start, min(start + batch_size, n)).pooler_output.float()  # [B, D]
                out.append(torch.nn.functional.normalize(feats, dim=-1).cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """[len(texts), dim] float32, rows of unit L2 norm."""
        texts = list(texts)
        return self._embed(len(texts), batch_size,
                           lambda a, b: self.model.get_text_features(**self.text_inputs(texts[a:b])))

    def embed_images(self, images: Sequence[Image.Image | Path | str], batch_size: int = 64) -> np.ndarray:
        """[len(images), dim] float32, rows of unit L2 norm. Paths are decoded with `vlmtune.data.images.load_image`
        (size limits, EXIF orientation, any mode -> RGB; an `ImageError` names a bad file)."""
        images = list(images)

        def features(a: int, b: int):
            batch = [im if isinstance(im, Image.Image) else load_image(Path(im)) for im in images[a:b]]
            return self.model.get_image_features(**self.image_inputs(batch))

        return self._embed(len(images), batch_size, features)

    @property
    def dim(self) -> int:
        config = self.model.config
        if self.family.name == "clip":
            return int(config.projection_dim)
        return int(config.text_config.projection_size or config.text_config.hidden_size)

    def fingerprint(self) -> dict:
        """What an index records about the model that built it (see the module docstring)."""
        return {
            "model_type": self.family.name,
            "dim": self.dim,
            "config_sha256": config_sha256(self.model.config),
            "probe_text": self.embed_texts([PROBE_TEXT])[0].round(6).tolist(),
            "probe_image": self.embed_images([probe_image()])[0].round(6).tolist(),
        }


def fingerprint_mismatch(index_fp: dict, query_fp: dict) -> str | None:
    """Why a query model cannot search an index built by another one, or None when they agree."""
    for key in ("model_type", "dim", "config_sha256"):
        if index_fp.get(key) != query_fp.get(key):
            return f"{key} differs (index: {index_fp.get(key)!r}, query model: {query_fp.get(key)!r})"
    for key in ("probe_text", "probe_image"):
        cos = float(np.dot(np.asarray(index_fp[key]), np.asarray(query_fp[key])))
        if cos < PROBE_MIN_COSINE:
            return (f"same architecture but different weights or preprocessing: the {key.replace('_', ' ')} embeds "
                    f"to cosine {cos:.4f} with the index's (needs >= {PROBE_MIN_COSINE})")
    return None
