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
* the family's model takes `mm_encoder_outputs` (`ModelFamily.vision_cache`: the "frozen-vision cache" column of
  `vlmtune models`; Qwen3-VL's with its DeepStack features; not blip2, instructblip, florence2, git, mllama,
  pix2struct);
* the vision tower and the projector are frozen (LoRA on the language model, whose default freezes the projector,
  or full fine-tuning with `freeze_vision` and `freeze_projector`);
* images are not augmented (`hflip`) and the frozen modules have no active dropout.

Videos read as frames (families without native video: each frame an image slot) are cached like images, a frame
keyed by the video (its files' paths, sizes and times, its entry), the sampling policy (`data.video`) and its
timestamp. Native videos as the family declares (`ModelFamily.video_cache`): Qwen2-VL / 2.5-VL / 3-VL's and
LLaVA-OneVision's `get_video_features` once per video, keyed by the video and the policy, handed back as
`mm_encoder_outputs["video"]` beside the images' (the model takes precomputed features for all of a batch's vision
inputs or for none); SmolVLM2's frames, global views among the images' pixels, with the sample's images, a key per
frame. Other native-video families (InternVL) run a batch with a video uncached (`video_off` says why).
`with_features` (evaluation) leaves a batch with videos as it is, told them by its caller.

The key of an image is the sha256 of its file; the directory is named by a fingerprint of the family, the frozen
weights, the processor's image and video settings and the transformers version: a change starts a new cache.

A sample seen before costs nothing but its language-model step: besides its images' features, the cache keeps the
sample's encoded tokens (input ids, labels and the per-token, per-image and per-video extras, unpadded), so a later
epoch neither reads, decodes nor preprocesses its images or videos, nor renders its chat template, nor tokenizes it;
the batch is padded from the stored rows, and equals what `family.encode` returns without the pixels (tested for
every family). Features stay in memory up to `MEMORY_BUDGET` bytes (least recently used dropped first) and are read
back from their files beyond it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from vlmtune.config import VideoCfg
from vlmtune.data.images import resolve_inside
from vlmtune.data.sample import visual_slots
from vlmtune.data.video import VideoLoader, video_key
from vlmtune.io import atomic_path, atomic_write_text, file_sha256
from vlmtune.models.family import Batch, base_model, freeze_group_of, input_dtype
from vlmtune.models.labels import IGNORE_INDEX

IMAGE_INPUTS = ("pixel_values", "pixel_attention_mask", "image_position_ids")
"""Processor outputs only the vision side reads (dropped once the features are cached; Gemma 4's patch positions)."""
PER_IMAGE = ("image_grid_thw", "image_sizes")
"""Processor outputs with one row per image (kept: the language model positions the image tokens with them)."""
VIDEO_INPUTS = ("pixel_values_videos",)
"""Processor outputs only the vision side reads of native videos (dropped once their features are cached)."""
PER_VIDEO = ("video_grid_thw", "second_per_grid_ts")
"""Processor outputs with one row (or list element) per native video: kept, as PER_IMAGE."""
PER_SAMPLE = ("batch_num_images",)
"""Processor outputs with one row per sample that has images (LLaVA-OneVision's image counts, which decide whether
its images are tiled)."""
MEMORY_BUDGET = 2 << 30
"""Bytes of features kept in memory; older ones are read back from their safetensors files."""


def frozen_vision_modules(model, family) -> list:
    """Parameters of the vision and projector groups (peft prefixes removed)."""
    return [(n, p) for n, p in model.named_parameters() if freeze_group_of(family, n) in ("vision", "projector")]


def why_not(cfg, family, model) -> str | None:
    """None when the cache is exact for this run, else the reason it stays off."""
    import torch

    if cfg.train.vision_cache == "off":
        return "train.vision_cache is off"
    if not family.vision_cache or "mm_encoder_outputs" not in inspect.signature(base_model(model).forward).parameters:
        return f"the {family.name} family's model does not take precomputed image features"
    if cfg.train.hflip or cfg.train.method == "grpo":
        return "images are augmented (train.hflip)" if cfg.train.hflip else "GRPO encodes its rollouts afresh"
    trainable = [n for n, p in frozen_vision_modules(model, family) if p.requires_grad]
    if trainable:
        return (f"the vision tower or projector is trained ({trainable[0]}, ...); set train.freeze_projector: true "
                "(and freeze_vision for full fine-tuning) to cache their output")

    for name, module in base_model(model).named_modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0 and \
                freeze_group_of(family, name + ".") in ("vision", "projector"):
            return f"{name} applies dropout in training mode"
    return None


def fingerprint(model, family, processor, precision: str = "no") -> str:
    """sha256 of what a cached feature depends on besides the image: the family, transformers' version, the image
    processor's settings, the model's config (vision_feature_layer, select strategy, ...), the frozen weights with
    their dtypes, and the autocast precision the features are computed under (train.mixed_precision)."""
    import transformers

    h = hashlib.sha256()
    image_processor = getattr(processor, "image_processor", None)
    settings = image_processor.to_dict() if image_processor is not None else {}
    video_processor = getattr(processor, "video_processor", None)  # the video pixel bounds (Qwen's video_size)
    settings = {**settings, "video_size": getattr(processor, "video_size", None),
                "video_processor": video_processor.to_dict() if video_processor is not None else None}
    config = {k: v for k, v in base_model(model).config.to_dict().items()
              if k not in ("_name_or_path", "transformers_version")}
    h.update(json.dumps({"family": family.name, "transformers": transformers.__version__, "precision": precision,
                         "image_processor": settings, "config": config}, sort_keys=True, default=str).encode())
    for name, p in frozen_vision_modules(model, family):
        h.update(f"{name.removeprefix('base_model.model.')}:{p.dtype}".encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@functools.cache
def deepstack_output() -> type:
    """transformers' BaseModelOutputWithPooling with `deepstack_features`, what Qwen3-VL's `mm_encoder_outputs` reads
    (a ModelOutput dataclass, so `Batch.to` moves its tensors)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    @dataclass
    class DeepstackOutput(BaseModelOutputWithPooling):
        deepstack_features: list | None = None

    return DeepstackOutput


def has_video(sample) -> bool:
    """Whether a sample's messages have a `{"type": "video"}` slot."""
    return any(part.get("type") == "video" for m in sample.messages if not isinstance(m["content"], str)
               for part in m["content"])


def _joint(hashes: list[str]) -> str | None:
    """The key of a sample's images: None without images, the image's own key for one, a hash of the keys else."""
    if not hashes:
        return None
    return hashes[0] if len(hashes) == 1 else hashlib.sha256("+".join(hashes).encode()).hexdigest()


class VisionCache:
    """The frozen vision side's output per sample (its images' features, computed once) and each sample's encoded
    tokens. `batch` is the only entry point of the training loop."""

    def __init__(self, model, family, processor, directory: str | Path, precision: str = "no"):
        self.family = family
        self.pad_id = processor.tokenizer.pad_token_id
        self.key = fingerprint(model, family, processor, precision)
        self.dir = Path(directory) / self.key[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.memory: OrderedDict[str, list] = OrderedDict()
        self.memory_bytes = 0
        layout = json.loads((self.dir / "layout.json").read_text()) if (self.dir / "layout.json").is_file() else {}
        self.stacked, self.video_stacked = layout.get("stacked"), layout.get("video_stacked")
        """Whether the model's image (video) pooler_output is one tensor rather than a list (LLaVA-OneVision: a list,
        one tensor)."""
        self.deepstack = layout.get("deepstack", 0)
        """How many DeepStack feature layers the model's vision output has besides pooler_output (Qwen3-VL's
        `deepstack_features`: per layer, one tensor per image); each image's entry is then its pooled features
        followed by its feature of each layer."""
        self.hits = self.misses = 0
        self._file_hash: dict[str, str] = {}
        self.rows: dict[tuple[int, str], dict] = {}
        """(source index, sample id) -> the sample's unpadded encoded tensors and the key of its images."""
        self.autocast = None
        """A callable returning the training loop's autocast context: features are computed under the same autocast
        as the uncached forward, so the cached path gives the same numbers (set by the loop's setup)."""
        self.rows_off: str | None = None
        """Why encoded rows are not kept (a processor output this file does not know how to pad), if so."""
        self.videos = None
        """The run's VideoLoader (`data.video`): a video's frames are keyed by its files, the sampling policy and
        each frame's timestamp (set by the loop's setup; None: VideoLoader(VideoCfg()))."""
        self.native = family.video_tokens is not None and family.video_cache == "videos"
        """Whether native videos' features are cached per video (`mm_encoder_outputs["video"]`)."""
        self.video_off = (f"the {family.name} family's native video features are not cacheable yet (ModelFamily."
                          "video_cache): batches with a video run uncached"
                          if family.video_tokens is not None and family.video_cache is None else None)
        """Why a batch with a native video is run uncached, if so (the family declares no `video_cache`)."""

    def _frames(self, root, sample, entry) -> list[str]:
        """The keys of a video's frames where the model sees them among the images (a family without native video,
        or SmolVLM2's frames): the video, the policy and each frame's timestamp (from the loader: the video is not
        decoded again); none for a family whose videos are cached per video."""
        if self.native:
            return []
        if self.video_off is not None:
            raise ValueError(f"sample {sample.id!r}: {self.video_off}")
        loader = self.videos = self.videos or VideoLoader(VideoCfg())
        key = video_key(root, entry, loader.policy)
        return [hashlib.sha256(f"{key}@{t!r}".encode()).hexdigest() for t in loader.frame_times(root, entry)]

    def image_count(self, root, sample) -> int:
        """Images the model sees for a sample: its own, and each frame of its videos seen among them."""
        return len(sample.images) + sum(len(self._frames(root, sample, e)) for e in sample.videos)

    def unit_keys(self, items, roots) -> list[str | None]:
        """Per (source index, Sample) item: the key of its images' features (the sha256 of the image file, or of the
        keys of all its images and frames, in slot order), None for a sample without any."""
        keys = []
        for j, sample in items:
            images, frames, hashes = iter(sample.images), iter(sample.videos), []
            for kind in visual_slots(sample.messages):
                if kind == "image":
                    path = str(resolve_inside(roots[j], next(images)))
                    if path not in self._file_hash:
                        self._file_hash[path] = file_sha256(path)
                    hashes.append(self._file_hash[path])
                else:
                    hashes += self._frames(roots[j], sample, next(frames))
            keys.append(_joint(hashes))
        return keys

    def video_keys(self, items, roots) -> list[list[str]]:
        """Per item: the key of each of its native videos' features (the video's files, entry and `data.video`
        policy), in order; none unless the family caches videos per video."""
        if not self.native:
            return [[] for _ in items]
        policy = (self.videos or VideoLoader(VideoCfg())).policy
        return [[hashlib.sha256(f"video:{video_key(roots[j], e, policy)}".encode()).hexdigest() for e in s.videos]
                for j, s in items]

    def image_unit_keys(self, images: list[list]) -> list[str | None]:
        """`unit_keys` for decoded images (evaluation has no file paths): the sha256 of each image's pixels."""
        return [_joint([hashlib.sha256(f"{im.mode}{im.size}".encode() + im.tobytes()).hexdigest() for im in ims])
                for ims in images]

    def _remember(self, key: str, features: list) -> None:
        self.memory[key] = features
        self.memory_bytes += sum(f.numel() * f.element_size() for f in features)
        while self.memory_bytes > MEMORY_BUDGET and len(self.memory) > 1:
            _, old = self.memory.popitem(last=False)
            self.memory_bytes -= sum(f.numel() * f.element_size() for f in old)

    def _get(self, key: str) -> list | None:
        if key in self.memory:
            self.memory.move_to_end(key)
            return self.memory[key]
        file = self.dir / key[:2] / f"{key}.safetensors"
        if file.is_file():
            from safetensors.torch import load_file

            stored = load_file(file)
            self._remember(key, [stored[str(i)] for i in range(len(stored))])
            return self.memory[key]
        return None

    def _put(self, key: str, features: list) -> None:
        from safetensors.torch import save_file

        features = [f.detach().to("cpu").contiguous() for f in features]
        self._remember(key, features)
        file = self.dir / key[:2] / f"{key}.safetensors"
        if not file.is_file():
            with atomic_path(file) as tmp:  # ranks may write the same image at once: each has its own temporary
                save_file({str(i): f for i, f in enumerate(features)}, str(tmp))

    def _vision(self, model, method: str, inputs: dict):
        """`base.<method>` (get_image_features / get_video_features) on the inputs it takes, without gradients, under
        the loop's autocast, inputs cast as on the uncached path (Batch.to, fit); (pooled, DeepStack layers)."""
        import torch

        base = base_model(model)
        run = getattr(base, method)
        wanted = inspect.signature(run).parameters
        device, dtype = next(p for p in base.parameters()).device, input_dtype(base)
        autocast = self.autocast() if self.autocast is not None else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            out = run(**{k: v.to(device, dtype) if v.is_floating_point() else v.to(device)
                         for k, v in inputs.items() if k in wanted})
        pooled, deep = out.pooler_output, list(getattr(out, "deepstack_features", None) or [])
        attr = "video_stacked" if method == "get_video_features" else "stacked"
        if getattr(self, attr) is None:
            setattr(self, attr, isinstance(pooled, torch.Tensor))
            self.deepstack = len(deep)
            layout = {"stacked": self.stacked, "deepstack": self.deepstack, "video_stacked": self.video_stacked}
            atomic_write_text(self.dir / "layout.json", json.dumps(layout))
        return pooled, deep

    def _compute_videos(self, model, inputs: dict, keys: list[str]) -> None:
        """Run the frozen vision side once on the batch's native videos; store each one's features under its key."""
        pooled, deep = self._vision(model, "get_video_features", inputs)
        if len(pooled) != len(keys):
            raise RuntimeError(f"vision cache: {len(pooled)} feature sets for {len(keys)} videos")
        for i, key in enumerate(keys):
            self._put(key, [pooled[i], *(layer[i] for layer in deep)])

    def _compute(self, model, inputs: dict, counts: list[int], keys: list[str | None]) -> None:
        """Run the frozen vision side once on the batch's images; store the features of every sample with images."""
        pooled, deep = self._vision(model, "get_image_features", inputs)
        if self.family.vision_features == "per_sample":  # one entry per sample, all its images' tiles in it
            entries = list(pooled)
            if len(entries) != len(counts):
                raise RuntimeError(f"vision cache: {len(entries)} feature sets for {len(counts)} samples")
            units = [[e] if n else None for e, n in zip(entries, counts, strict=True)]
        else:
            per_image = list(pooled.unbind(0)) if self.stacked else list(pooled)
            if len(per_image) != sum(counts):
                raise RuntimeError(f"vision cache: {len(per_image)} feature sets for {sum(counts)} images")
            layers = [list(layer) for layer in deep]  # per DeepStack layer, one tensor per image
            it = iter([[f, *(layer[i] for layer in layers)] for i, f in enumerate(per_image)])
            units = [[t for _ in range(n) for t in next(it)] if n else None for n in counts]
        for key, unit in zip(keys, units, strict=True):
            if key is not None:
                self._put(key, unit)

    def _model_inputs(self, inputs: dict, units: list, video_units: list | None = None) -> dict:
        """`inputs` without pixels, with the features of `units` (per sample, None when text-only) and of
        `video_units` (per sample, its native videos' features) as `mm_encoder_outputs`."""
        rest = {k: v for k, v in inputs.items() if k not in IMAGE_INPUTS + VIDEO_INPUTS}
        outputs = {}
        for kind, feats in (("image", [f for unit in units if unit is not None for f in unit]),
                            ("video", [f for unit in video_units or [] for video in unit for f in video])):
            if feats:
                outputs[kind] = self._output(feats, self.video_stacked if kind == "video" else self.stacked)
        if outputs:
            rest["mm_encoder_outputs"] = outputs
        return rest

    def _output(self, feats: list, stacked: bool):
        """The model output holding stored features (per image or video: pooled, then one per DeepStack layer)."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if self.deepstack:
            step = 1 + self.deepstack
            deep = [feats[1 + layer::step] for layer in range(self.deepstack)]
            return deepstack_output()(pooler_output=feats[::step], deepstack_features=deep)
        return BaseModelOutputWithPooling(pooler_output=torch.stack(feats) if stacked else feats)

    def batch(self, model, items, roots, encode):
        """The training Batch of (source index, Sample) items: from the stored rows and features when every sample
        was seen before, else `encode()`d (images and videos decoded and preprocessed), with the features of images
        and videos not seen before computed in one vision forward each. A batch with a native video of a family
        without `ModelFamily.video_cache` is `encode()`d and returned as is (`video_off`)."""
        if self.video_off is not None and any(has_video(s) for _, s in items):
            return encode()
        rows = [self.rows.get((j, s.id)) for j, s in items]
        if all(r is not None for r in rows):
            units = [self._get(r["unit"]) if r["unit"] is not None else None for r in rows]
            videos = [[self._get(k) for k in r["videos"]] for r in rows]
            inputs = self._collate(rows) if all(u is not None or r["unit"] is None for u, r in
                                                zip(units, rows, strict=True)) and \
                all(v is not None for vs in videos for v in vs) else None
            if inputs is not None:
                self.hits += sum(r["count"] for r in rows)
                n_target = int((inputs["labels"] != IGNORE_INDEX).sum())
                return Batch(self._model_inputs(inputs, units, videos), [s.id for _, s in items], n_target)
        batch = encode()
        keys, video_keys = self.unit_keys(items, roots), self.video_keys(items, roots)
        counts = [self.image_count(roots[j], s) for j, s in items]
        inputs = self._features(model, batch.inputs, counts, keys, video_keys)
        self._keep_rows(batch.inputs, items, keys, counts, video_keys)
        return Batch(inputs, batch.ids, batch.n_target_tokens)

    def with_features(self, model, inputs: dict, counts: list[int], keys: list[str | None], videos=None) -> dict:
        """Encoded `inputs` (any mode) with the cached features of their samples' images in place of the pixels;
        `counts` are the images per sample, `keys` their unit keys. Missing features are computed first, in one
        vision forward over the batch. A batch with video (`videos`: per sample its `Video`s, as `encode` got them;
        or Qwen's `pixel_values_videos` in `inputs`) is returned as it is: videos are not cached, and SmolVLM's
        frames sit among the images' pixels, which a key of the images alone would not describe."""
        if "pixel_values_videos" in inputs or any(videos or []):
            return inputs
        return self._features(model, inputs, counts, keys, [[] for _ in keys])

    def _features(self, model, inputs: dict, counts: list[int], keys: list[str | None],
                  video_keys: list[list[str]]) -> dict:
        """`with_features` and the features of each sample's native videos (`video_keys`), computed when missing."""
        units = [self._get(k) if k is not None else None for k in keys]
        if any(k is not None and u is None for k, u in zip(keys, units, strict=True)):
            self.misses += sum(n for n, k, u in zip(counts, keys, units, strict=True) if k is not None and u is None)
            self._compute(model, inputs, counts, keys)
            units = [self._get(k) if k is not None else None for k in keys]
        else:
            self.hits += sum(counts)
        flat = [k for ks in video_keys for k in ks]
        missing = sum(self._get(k) is None for k in flat)
        if missing:
            self._compute_videos(model, inputs, flat)
        self.misses, self.hits = self.misses + missing, self.hits + len(flat) - missing
        videos = [[self._get(k) for k in ks] for ks in video_keys]
        return self._model_inputs(inputs, units, videos)

    def _keep_rows(self, inputs: dict, items, keys, counts: list[int], video_keys: list[list[str]]) -> None:
        """Store each sample's unpadded tensors: per-token ones where attention_mask is 1, per-image (per-video) ones
        by its images (videos). Nothing is stored (the reason kept) when the batch has an output of another kind."""
        if self.rows_off is not None:
            return
        ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
        per_token = []
        for name, value in inputs.items():
            if name in IMAGE_INPUTS + VIDEO_INPUTS + PER_IMAGE + PER_VIDEO + PER_SAMPLE or name == "attention_mask":
                continue
            if not (hasattr(value, "shape") and value.shape[:2] == ids.shape):
                self.rows_off = f"{name} is neither per token nor per image"
                return
            per_token.append(name)
        first = with_images = video = 0  # the sample's first image and video in the batch; samples with images
        for b, ((j, s), key, count, vkeys) in enumerate(zip(items, keys, counts, video_keys, strict=True)):
            last = first + count
            self.rows[(j, s.id)] = {
                "unit": key, "videos": vkeys, "count": count + len(vkeys),
                "video": {n: inputs[n][video:video + len(vkeys)] for n in PER_VIDEO if n in inputs and vkeys},
                "token": {n: inputs[n][b][mask[b]].clone() for n in per_token},
                "image": {n: inputs[n][first:last].clone() for n in PER_IMAGE if n in inputs},
                "sample": {n: inputs[n][with_images:with_images + 1].clone() for n in PER_SAMPLE
                           if n in inputs and count},
            }
            first, with_images, video = last, with_images + bool(count), video + len(vkeys)

    def _collate(self, rows: list[dict]) -> dict | None:
        """Right-padded batch tensors from stored rows (what `encode` gives, without the pixels); None when the rows
        hold different outputs (a text-only sample encoded without the per-token extras of image batches)."""
        import torch

        names = rows[0]["token"].keys()
        if any(r["token"].keys() != names for r in rows):
            return None
        length = max(len(r["token"]["input_ids"]) for r in rows)
        pads = {"input_ids": self.pad_id, "labels": IGNORE_INDEX}
        out = {}
        for name in names:
            first = rows[0]["token"][name]
            t = torch.full((len(rows), length), pads.get(name, 0), dtype=first.dtype)
            for b, r in enumerate(rows):
                t[b, : len(r["token"][name])] = r["token"][name]
            out[name] = t
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for b, r in enumerate(rows):
            mask[b, : len(r["token"]["input_ids"])] = 1
        out["attention_mask"] = mask
        for kind, name in [*(("image", n) for n in PER_IMAGE), *(("sample", n) for n in PER_SAMPLE)]:
            parts = [r[kind][name] for r in rows if name in r.get(kind, {})]
            if parts:
                out[name] = torch.cat(parts)
        for name in PER_VIDEO:  # tensors (video_grid_thw) or lists (Qwen2.5-VL's second_per_grid_ts)
            parts = [r["video"][name] for r in rows if name in r["video"]]
            if parts:
                out[name] = torch.cat(parts) if isinstance(parts[0], torch.Tensor) else [x for p in parts for x in p]
        return out
