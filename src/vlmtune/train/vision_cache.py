"""Frozen-vision feature cache: a frozen vision tower and projector run once per image, not once per epoch.

    train:
      vision_cache: auto        # on whenever it is exact (below); "off" never

Domain fine-tuning is usually LoRA over many epochs of a small set with the vision side frozen, yet every trainer
re-runs the vision tower on every image every epoch. When the vision tower AND the projector get no gradient, their
output for an image depends only on the image, the frozen weights and the processor settings. vlmtune computes it
the first time an image is seen, keeps it (in memory and as one safetensors file per image under
`<run>/vision_cache/<fingerprint>/`), and afterwards hands it to the model through transformers'
`mm_encoder_outputs`, the model's own entry point for precomputed encoder outputs: the language model gets the same
embeddings, so the loss is the same (tested to 1e-5 for every family that supports it, `ModelFamily.vision_cache`).

`auto` turns the cache on only when all of these hold, and says why when it does not:
* the family's model takes `mm_encoder_outputs` (llava, llava_next, qwen2_vl, qwen2_5_vl, idefics3, smolvlm, gemma3,
  paligemma; not blip2, instructblip, florence2, git, mllama, pix2struct);
* the vision tower and the projector are frozen (LoRA on the language model with `freeze_projector: true`, or full
  fine-tuning with `freeze_vision` and `freeze_projector`);
* images are not augmented (`hflip`) and the frozen modules have no active dropout.

The key of an image is the sha256 of its file; the directory is named by a fingerprint of the family, the frozen
weights, the processor's image settings and the transformers version, so a change to any of them starts a new cache.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path

IMAGE_INPUTS = ("pixel_values", "pixel_attention_mask")
"""Processor outputs only the vision side reads (dropped once the features are cached)."""


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def frozen_vision_modules(model, family) -> list:
    """Parameters of the vision and projector groups (peft prefixes removed)."""
    from vlmtune.models.family import freeze_group_of

    return [(n, p) for n, p in model.named_parameters() if freeze_group_of(family, n) in ("vision", "projector")]


def why_not(cfg, family, model) -> str | None:
    """None when the cache is exact for this run, else the reason it stays off."""
    import torch

    if cfg.train.vision_cache == "off":
        return "train.vision_cache is off"
    if not family.vision_cache or "mm_encoder_outputs" not in inspect.signature(_base(model).forward).parameters:
        return f"the {family.name} family's model does not take precomputed image features"
    if cfg.train.hflip:
        return "images are augmented (train.hflip)"
    trainable = [n for n, p in frozen_vision_modules(model, family) if p.requires_grad]
    if trainable:
        return (f"the vision tower or projector is trained ({trainable[0]}, ...); set train.freeze_projector: true "
                "(and freeze_vision for full fine-tuning) to cache their output")
    from vlmtune.models.family import freeze_group_of

    for name, module in _base(model).named_modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0 and \
                freeze_group_of(family, name + ".") in ("vision", "projector"):
            return f"{name} applies dropout in training mode"
    return None


def fingerprint(model, family, processor) -> str:
    """sha256 of what a cached feature depends on besides the image."""
    import transformers

    h = hashlib.sha256()
    image_processor = getattr(processor, "image_processor", None)
    settings = image_processor.to_dict() if image_processor is not None else {}
    h.update(json.dumps({"family": family.name, "transformers": transformers.__version__,
                         "image_processor": settings}, sort_keys=True, default=str).encode())
    for name, p in frozen_vision_modules(model, family):
        h.update(name.removeprefix("base_model.model.").encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class VisionCache:
    def __init__(self, model, family, processor, directory: str | Path):
        self.family = family
        self.key = fingerprint(model, family, processor)
        self.dir = Path(directory) / self.key[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.memory: dict[str, object] = {}
        layout = self.dir / "layout.json"
        self.stacked = json.loads(layout.read_text())["stacked"] if layout.is_file() else None
        """Whether the model's pooler_output is one (images, ...) tensor rather than a list per image."""
        self.hits = self.misses = 0
        self._file_hash: dict[str, str] = {}

    def image_keys(self, items, roots) -> list[str]:
        """The content hash of every image of (source index, Sample) items, in the batch's image order."""
        from vlmtune.data.images import resolve_inside

        keys = []
        for j, sample in items:
            for rel in sample.images:
                path = str(resolve_inside(roots[j], rel))
                if path not in self._file_hash:
                    self._file_hash[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                keys.append(self._file_hash[path])
        return keys

    def _get(self, key: str):
        if key in self.memory:
            return self.memory[key]
        file = self.dir / key[:2] / f"{key}.safetensors"
        if file.is_file():
            from safetensors.torch import load_file

            self.memory[key] = load_file(file)["features"]
            return self.memory[key]
        return None

    def _put(self, key: str, features) -> None:
        from safetensors.torch import save_file

        features = features.detach().to("cpu").contiguous()
        self.memory[key] = features
        file = self.dir / key[:2] / f"{key}.safetensors"
        if not file.is_file():
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f"{file.name}.tmp-{os.getpid()}")  # ranks may write the same image at once
            save_file({"features": features}, str(tmp))
            tmp.replace(file)

    def inputs(self, model, inputs: dict, keys: list[str]) -> dict:
        """The model inputs with the images' cached features (`mm_encoder_outputs`) in place of their pixels;
        features of images not seen before are computed first (the whole batch's, in one vision forward)."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if not keys:
            return inputs
        found = [self._get(k) for k in keys]
        if any(f is None for f in found):
            self.misses += sum(f is None for f in found)
            base = _base(model)
            wanted = inspect.signature(base.get_image_features).parameters
            with torch.no_grad():
                out = base.get_image_features(**{k: v for k, v in inputs.items() if k in wanted})
            pooled = out.pooler_output
            if self.stacked is None:
                self.stacked = isinstance(pooled, torch.Tensor)
                tmp = self.dir / f"layout.json.tmp-{os.getpid()}"
                tmp.write_text(json.dumps({"stacked": self.stacked}))
                tmp.replace(self.dir / "layout.json")
            per_image = list(pooled.unbind(0)) if self.stacked else list(pooled)
            if len(per_image) != len(keys):
                raise RuntimeError(f"vision cache: {len(per_image)} feature sets for {len(keys)} images")
            for k, f in zip(keys, per_image, strict=True):
                self._put(k, f)
            found = [self.memory[k] for k in keys]
        else:
            self.hits += len(keys)
        device = next(v for v in inputs.values() if hasattr(v, "device")).device
        feats = [f.to(device) for f in found]
        pooled = torch.stack(feats) if self.stacked else feats
        rest = {k: v for k, v in inputs.items() if k not in IMAGE_INPUTS}
        rest["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=pooled)}
        return rest
