"""`ModelFamily`: what vlmtune needs to know about one family of VLMs, and nothing more.

A family turns `Sample`s into tensors (`encode`), names the modules LoRA adapts (`lora_targets`) and the
parameter groups that can be frozen (`freeze_groups`), loads real checkpoints (`load`) and builds a tiny
random model with an offline processor for tests (`tiny`). The training loop, the Predictor and the CLI
only ever call these fields: family quirks stay in the family's own file. Label masking, which each `encode` does,
is in `models/labels.py`; the training loss in `models/loss.py`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from vlmtune.config import check_model_path

if TYPE_CHECKING:
    from PIL.Image import Image

    from vlmtune.config import ModelCfg
    from vlmtune.data.sample import Sample

Mode = Literal["train", "generate"]


class SampleTooLong(ValueError):
    """A sample does not fit `max_length`. vlmtune never truncates: it names the sample and stops or skips it."""


@dataclass
class Loaded:
    """A model and its processor, as returned by `ModelFamily.load` / `ModelFamily.tiny`."""

    model: Any
    processor: Any
    family: str


@dataclass
class Batch:
    """Tensors ready for `model(**inputs)` (train) or `model.generate(**inputs)` (generate).

    `inputs` holds exactly the keyword arguments of the model (input_ids, attention_mask, pixel_values, labels,
    and family extras such as image_grid_thw); `ids` are the sample ids in batch order.
    """

    inputs: dict[str, Any]
    ids: list[str]
    n_target_tokens: int = 0
    segments: Any = None
    """For a packed batch (`train.packing`): (rows, positions) index of the sample each position belongs to."""

    def to(self, device, dtype=None) -> Batch:
        """The batch on `device`, its floating-point tensors (pixel values, Pix2Struct patches, cached image
        features) in `dtype`: the one place batches reach a model (training, evaluation, the Predictor, serving), so
        a bf16/fp16 model never meets float32 inputs. Integer tensors (ids, masks, grids) keep their dtype."""
        segments = self.segments.to(device) if self.segments is not None else None
        return Batch({k: _moved(v, device, dtype) for k, v in self.inputs.items()}, self.ids, self.n_target_tokens,
                     segments)


def _moved(value, device, dtype=None):
    """Tensors on `device` (floating ones in `dtype`), also inside the lists and outputs of `mm_encoder_outputs`."""
    if hasattr(value, "to"):
        if dtype is not None and getattr(value, "is_floating_point", lambda: False)():
            return value.to(device=device, dtype=dtype)
        return value.to(device)
    if isinstance(value, dict):  # transformers' ModelOutput is a dict too: keep its class
        return type(value)(**{k: _moved(v, device, dtype) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(v, device, dtype) for v in value)
    return value


def autocast_for(model):
    """torch.autocast in the base weights' dtype when a model mixes floating dtypes (float32 trainables on a bf16/fp16
    base, as training keeps them); a null context for a model of one dtype (every model loaded for inference)."""

    import torch

    base = input_dtype(model)
    if base in (torch.bfloat16, torch.float16) and any(
            p.dtype != base for p in model.parameters() if p.is_floating_point()):
        return torch.autocast(next(model.parameters()).device.type, dtype=base)
    return contextlib.nullcontext()


def input_dtype(model):
    """The dtype a model's floating inputs are cast to: its base weights' dtype (the input embeddings': never
    quantised, and frozen in bf16/fp16 while trainable parameters may be kept in float32)."""
    return model.get_input_embeddings().weight.dtype


@dataclass(frozen=True)
class ModelFamily:
    name: str
    description: str
    load: Callable[[ModelCfg], Loaded]
    """Load model + processor from a local directory or hub id (Auto classes)."""
    encode: Callable[..., Batch]
    """encode(processor, samples, images, mode, max_length) -> Batch, every argument given (the budget is the
    caller's: data.max_length in training, Predictor.max_length in inference). In "train" mode labels are -100
    everywhere except the assistant answer tokens and the end token; in "generate" mode the prompt ends with
    the generation prompt and padding is on the left. A family with `video_tokens` also takes `videos=`: per sample,
    the `Video`s of its `{"type": "video"}` slots in order (None or [] for a sample without video)."""
    lora_targets: tuple[str, ...]
    """Module-name suffixes given to peft's target_modules (regex over the language model only)."""
    freeze_groups: dict[str, tuple[str, ...]]
    """Group name (vision, projector, language) -> parameter-name prefixes of that group."""
    tiny: Callable[[], Loaded]
    """A random tiny model + offline processor, in under a second, for tests."""
    image_tokens: Callable[[Any, int, int], int]
    """image_tokens(processor, width, height) -> the sequence positions one image of that size takes (to budget
    `max_length`; `SampleTooLong` messages quote the same number)."""
    tasks: tuple[str, ...] = ("vqa", "caption")
    text_only: bool = True
    """Whether a batch may hold samples without images."""
    multi_image: bool = False
    shift_labels: bool = True
    """Decoder-only models predict token t+1 at position t (logits and labels are shifted against each other);
    encoder-decoder models (labels are the decoder's targets) are not shifted."""
    vision_cache: bool = False
    """Whether the model takes precomputed image features (`mm_encoder_outputs`), so the frozen-vision cache can
    skip its vision tower and projector (`train.vision_cache`); the contract test checks the loss is unchanged."""
    video_cache: Literal["videos", "frames"] | None = None
    """For a family with native video (`video_tokens`) and `vision_cache`: how the frozen-vision cache holds its
    video features. "videos": the model's `get_video_features`, once per video (keyed by the video's files and
    `data.video`), handed back as `mm_encoder_outputs["video"]` beside the images' (Qwen2-VL, 2.5-VL, 3-VL, with
    DeepStack); "frames": the frames are among the images' pixels and features, cached with the sample's images, one
    key per frame (video, policy, timestamp) (SmolVLM2). None: a batch with a native video is encoded and run
    uncached (the training loop says so once). tests/train/test_vision_cache.py checks the loss of each."""
    packing: bool = False
    """Whether samples can be packed back to back into one row (`train.packing`): the language model takes
    per-sample `position_ids` with no attention mask as separate sequences (transformers builds the block-diagonal
    mask, or uses varlen flash attention), and whatever else depends on the row layout is rebuilt by `pack_inputs`;
    tests/train/test_length_grouping.py checks the packed loss equals the padded one, sample by sample."""
    pack_inputs: Callable[[Any, dict, dict], dict] | None = None
    """pack_inputs(model, padded, packed) -> packed: for a packing family whose model needs more than the generic
    packed row (`train.collate.pack`: per-token tensors back to back, 1-D `position_ids` from 0 per sample, no
    attention mask), the row's inputs completed from the padded batch's inputs `padded` and the model (its config
    and own position code; peft-wrapped or not). Qwen2-VL/2.5-VL: each sample's multimodal rotary positions
    (`qwen2_vl.pack_inputs`); Gemma 3: its image-block masks per sample (`gemma3.pack_inputs`). None: the generic
    row is right for the model."""
    vision_features: Literal["per_image", "per_sample"] = "per_image"
    """How the model's `get_image_features` lists its output: one entry per image, or one per sample holding all of
    the sample's images (Idefics3/SmolVLM, whose tiles are split per sample)."""
    logit_prefix: Callable[[Any], int] | None = None
    """logit_prefix(model) -> positions the model puts in front of the text in its logits (GIT prepends the image
    features inside the model, so its logits are that much longer than input_ids); the loss skips them."""
    processor_loader: Callable[..., Any] | None = None
    """processor_loader(path, **options) -> the family's processor from a directory or hub id; None: AutoProcessor.
    Every place vlmtune reloads a processor goes through `load_processor`, never plain AutoProcessor."""
    projector_modules: tuple[str, ...] = ()
    """Module names (the last part of the dotted name) of the projector: under LoRA with the projector not frozen
    (`train.freeze_projector: false`) they are trained in full as peft `modules_to_save`, and in a mixed-dtype run
    their output is cast to the base dtype (`train.trainable.align_dtypes`)."""
    language_model: str | None = None
    """Dotted name, in the HF model, of the decoder that takes `inputs_embeds` with the image features merged in
    (`model.language_model`). The vision dummy of sharded runs (`train.distributed`) hooks there to run the vision
    side (`get_image_features`) on a blank image for a text-only micro-batch. None: no dummy for the family (GIT,
    Pix2Struct and Mllama have no `get_image_features`; Idefics3/SmolVLM's decoder, `model.text_model`, is not
    wired)."""
    vision_tower: str | None = None
    """Dotted name of the vision encoder in the HF model (`model.vision_tower`, Qwen2-VL's `model.visual`); the vision
    dummy's blank image is cast to its dtype."""

    merge_in_model_dtype: str | None = None
    """For a model that casts its image features to `model.dtype` (transformers': its first parameter's, the vision
    tower's) right before merging them into the text embeddings (SmolVLM): the dotted name of the decoder that takes
    the merged `inputs_embeds` (`model.text_model`). When a full fine-tune trains the vision tower that dtype is
    float32: `train.trainable.align_dtypes` merges in it and casts the merged embeddings to the base dtype at this
    decoder's input. None: the model casts its features to the text embeddings' dtype (every other family)."""

    export_extras: Callable[[Any, Path], None] | None = None
    """export_extras(processor, out_dir): writes the files other loaders (vLLM) read that the processor's
    `save_pretrained` does not (SmolVLM's video processor config, BLIP-2's chat template), and never replaces one the
    directory already has; `vlmtune export` calls it after saving the processor. None: the saved files are enough."""
    no_chat_prompt: str | None = None
    """Why the family's prompt is not a chat template's rendering (the processor builds it from task prefixes, or an
    encoder reads it), so an export carries no chat template. None: the export's chat template renders exactly the
    prompt `encode` builds for generation, token for token (tests/test_export.py checks every family)."""

    video_tokens: Callable[[Any, Any], int] | None = None
    """video_tokens(processor, video) -> the sequence positions one `vlmtune.data.video.Video` takes, for a family
    that encodes videos natively (its `encode` takes `videos=`: per sample, the `Video`s of its `{"type": "video"}`
    slots, in order; Qwen2-VL's `pixel_values_videos`). Like `image_tokens`, the positions the features fill
    (Qwen's `<|video_pad|>`, SmolVLM2's frames' `<image>`); wrappers and SmolVLM2's timestamps count as text. Exactly
    what `encode` expands (tests/models/test_video_encode.py). None: the family sees a video as its frames, one image
    slot each (when it takes several images per sample), or takes no video."""

    def load_processor(self, path, **options):
        check_model_path(path)
        if self.processor_loader is not None:
            return self.processor_loader(path, **options)
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path, **options)


def load_pretrained(cfg: ModelCfg, family: str, processor_class=None, *, freeze_groups: dict[str, tuple[str, ...]],
                    config=None) -> Loaded:
    """Model + processor of a hub id or local directory through the Auto classes (or `processor_class`, for
    processors AutoProcessor cannot build here), with `cfg`'s revision, remote-code, dtype and attention options.
    `freeze_groups` are the family's (`ModelFamily.freeze_groups`), passed by its `load`: under `cfg.quantization`
    the groups other than the language model stay in full precision (`quantization_config`). `config`: the model
    config to load the weights with, for a family that converts a checkpoint's config (GLM-4.1V's older layout);
    None: the checkpoint's own."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    check_model_path(cfg.path)
    options = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    processor = (processor_class or AutoProcessor).from_pretrained(cfg.path, **options)
    extra = {}  # quantisation and a converted config
    if cfg.quantization is not None:
        from accelerate import PartialState

        # bitsandbytes places the weights itself: on this process's device (its GPU under accelerate launch)
        extra = {"quantization_config": quantization_config(cfg.quantization, freeze_groups),
                 "device_map": {"": PartialState().device}}
    if config is not None:
        extra["config"] = config
    model = AutoModelForImageTextToText.from_pretrained(
        cfg.path, **options, dtype=getattr(torch, cfg.dtype), attn_implementation=cfg.attn_implementation, **extra
    )
    return Loaded(model=model, processor=processor, family=family)


def quantization_config(q, freeze_groups: dict[str, tuple[str, ...]]):
    """transformers' BitsAndBytesConfig for a QuantCfg: the language model quantised, the family's other parameter
    groups (`freeze_groups`: vision tower, projector) and the LM head kept in full precision unless `q.skip_modules`
    says otherwise."""
    import torch
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ValueError("model.quantization needs the bitsandbytes package: pip install 'vlmtune[qlora]'") from None
    skip = q.skip_modules
    if skip is None:
        # freeze-group prefixes ("model.vision_tower.") as module names ("model.vision_tower")
        skip = sorted({p.rstrip(".") for g, ps in freeze_groups.items() if g != "language" for p in ps})
        skip.append("lm_head")
    return BitsAndBytesConfig(
        load_in_4bit=q.bits == 4, load_in_8bit=q.bits == 8, bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant, bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
        llm_int8_skip_modules=skip,
    )


def freeze_group_of(family: ModelFamily, param_name: str) -> str | None:
    """The freeze group a parameter belongs to (peft's `base_model.model.` prefix is ignored)."""
    name = param_name.removeprefix("base_model.model.")
    for group, prefixes in family.freeze_groups.items():
        if any(name.startswith(p) for p in prefixes):
            return group
    return None


def trainable_summary(family: ModelFamily, model) -> dict:
    """What a run trains, by freeze group and kind: {"total": n, "trainable": n, "groups": {"language/lora": n,
    "projector/full": n, ...}}. Kinds: "lora" (adapter matrices), "full" (the parameter itself; under LoRA, a peft
    `modules_to_save` copy). Printed at the start of every training run and checked against each recipe."""
    groups: dict[str, int] = {}
    total = trainable = 0
    for name, p in model.named_parameters():
        n = p.numel()
        if "modules_to_save" in name or "original_module" in name:
            name = name.replace(".modules_to_save.default", "").replace(".original_module", "")
            if not p.requires_grad:  # peft's frozen original of a modules_to_save copy: counted once, as the copy
                continue
        total += n
        if not p.requires_grad:
            continue
        trainable += n
        kind = "lora" if ".lora_" in name else "full"
        key = f"{freeze_group_of(family, name) or 'other'}/{kind}"
        groups[key] = groups.get(key, 0) + n
    return {"total": total, "trainable": trainable, "groups": dict(sorted(groups.items()))}


def describe_trainable(summary: dict) -> str:
    """`trainable_summary` as one line: "trainable 1.23M of 7.06B parameters (0.02%): language/lora 1.2M, ..."."""
    def size(n: int) -> str:
        for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
            if n >= div:
                return f"{n / div:.2f}{unit}"
        return str(n)

    share = 100 * summary["trainable"] / max(1, summary["total"])
    parts = ", ".join(f"{k} {size(v)}" for k, v in summary["groups"].items())
    return f"trainable {size(summary['trainable'])} of {size(summary['total'])} parameters ({share:.2f}%): {parts}"


def load_image_list(samples: list[Sample], images: list[list[Image]]) -> list[Image]:
    """Flatten per-sample image lists, checking each sample got as many images as it has slots."""
    flat = []
    for s, imgs in zip(samples, images, strict=True):
        if len(imgs) != len(s.images):
            raise ValueError(f"sample {s.id!r}: expected {len(s.images)} image(s), got {len(imgs)}")
        flat.extend(imgs)
    return flat


def base_model(model):
    """The HF model under DDP / DeepSpeed / PEFT wrappers (stops at a model with `get_image_features`, whose own
    `module` attributes are not wrappers)."""
    for _ in range(4):
        if hasattr(model, "module") and not hasattr(model, "get_image_features"):
            model = model.module  # DistributedDataParallel, DeepSpeedEngine
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()  # peft
        else:
            break
    return model


def chat_template_export(template: str) -> Callable[[Any, Path], None]:
    """An `export_extras` for a family whose checkpoints have no chat template: writes `template` as the export's
    chat_template.jinja (which transformers' processors and vLLM read) when the processor has none of its own."""

    def write(processor, out: Path) -> None:
        if getattr(processor, "chat_template", None) is None and not (out / "chat_template.jinja").exists():
            (out / "chat_template.jinja").write_text(template)

    return write
