"""Model families: FAMILIES is the one registry (adding a family = one file + one line here)."""

from __future__ import annotations

import json
from pathlib import Path

from vlmtune.data.resize import limit_pixels
from vlmtune.models import (
    blip2,
    florence2,
    gemma3,
    gemma4,
    git,
    glm4v,
    idefics3,
    instructblip,
    internvl,
    lfm2_vl,
    llava,
    llava_next,
    llava_onevision,
    mistral3,
    mllama,
    paligemma,
    pix2struct,
    qwen2_5_vl,
    qwen2_vl,
    qwen3_5,
    qwen3_vl,
    qwen3_vl_moe,
    smolvlm,
)
from vlmtune.models.builtin import build_builtin
from vlmtune.models.family import Batch, Loaded, ModelFamily, SampleTooLong

FAMILIES: dict[str, ModelFamily] = {
    "blip2": blip2.FAMILY,
    "florence2": florence2.FAMILY,
    "git": git.FAMILY,
    "gemma3": gemma3.FAMILY,
    "gemma4": gemma4.FAMILY,
    "glm4v": glm4v.FAMILY,
    "idefics3": idefics3.FAMILY,
    "instructblip": instructblip.FAMILY,
    "internvl": internvl.FAMILY,
    "lfm2_vl": lfm2_vl.FAMILY,
    "llava": llava.FAMILY,
    "llava_next": llava_next.FAMILY,
    "llava_onevision": llava_onevision.FAMILY,
    "mistral3": mistral3.FAMILY,
    "mllama": mllama.FAMILY,
    "paligemma": paligemma.FAMILY,
    "pix2struct": pix2struct.FAMILY,
    "qwen2_5_vl": qwen2_5_vl.FAMILY,
    "qwen2_vl": qwen2_vl.FAMILY,
    "qwen3_5": qwen3_5.FAMILY,
    "qwen3_vl": qwen3_vl.FAMILY,
    "qwen3_vl_moe": qwen3_vl_moe.FAMILY,
    "smolvlm": smolvlm.FAMILY,
}


def support_table() -> str:
    """What each family supports, as the markdown table in docs/models.md (generated from FAMILIES, never by hand:
    `vlmtune models --markdown > docs/models.md`; a test keeps the two equal)."""
    yes = {True: "yes", False: "no"}
    # (takes image features, native video not cacheable: ModelFamily.video_cache unset)
    cache = {(True, False): "yes", (True, True): "yes, not its native video", (False, False): "no", (False, True): "no"}
    # (native video input, several images per sample): a video is the model's own video input, or its frames as images
    video = {(True, True): "native", (True, False): "native", (False, True): "as frames", (False, False): "no"}
    lines = [
        "# Model families",
        "",
        "Generated from `FAMILIES` by `vlmtune models --markdown > docs/models.md` (a test fails if it is stale).",
        "Every family passes the same contract test (`tests/models/test_contract.py`) on a tiny random model and",
        "loads a 4/8-bit base for QLoRA with only its language model quantised (`tests/test_quantization.py`).",
        "Video: `native` families encode a video as the model's own video input (`ModelFamily.video_tokens`), `as",
        "frames` ones see its frames as images after their timestamps (docs/video.md), `no` ones refuse video samples.",
        "",
        "| family | models | tasks | architecture | text-only samples | several images per sample | video "
        "| frozen-vision cache | packing | freeze groups | LoRA targets (regex) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, f in sorted(FAMILIES.items()):
        arch = "decoder-only" if f.shift_labels else "encoder-decoder"
        targets = " ".join(f"`{t}`" for t in f.lora_targets).replace("|", "\\|")
        lines.append(f"| `{name}` | {f.description.replace('|', '/')} | {', '.join(f.tasks)} | {arch} "
                     f"| {yes[f.text_only]} | {yes[f.multi_image]} "
                     f"| {video[f.video_tokens is not None, f.multi_image]} "
                     f"| {cache[f.vision_cache, f.video_tokens is not None and not f.video_cache]} | {yes[f.packing]} "
                     f"| {', '.join(sorted(f.freeze_groups))} "
                     f"| {targets} |")
    return "\n".join(lines) + "\n"


def get_family(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


MODEL_TYPES = {"blip-2": "blip2"}
"""transformers `model_type`s whose family has another name (the rest are the family's name)."""


def family_of(model_dir) -> str:
    """The family of a saved model: vlmtune.json's `family` when vlmtune wrote it, else config.json's model_type."""
    meta, config = Path(model_dir) / "vlmtune.json", Path(model_dir) / "config.json"
    if meta.is_file() and json.loads(meta.read_text()).get("family"):
        return json.loads(meta.read_text())["family"]
    if not config.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json (not a model directory)")
    model_type = json.loads(config.read_text()).get("model_type", "")
    name = MODEL_TYPES.get(model_type, model_type)
    if name not in FAMILIES:
        raise ValueError(f"{model_dir}: model type {model_type!r} is not a known family ({sorted(FAMILIES)})")
    return name


def load_model(cfg, seed: int = 0) -> Loaded:
    """Model + processor for a ModelCfg: the built-in model (random weights) or a checkpoint via the family, with
    `cfg.max_pixels` set into the processor (`apply_max_pixels`)."""
    if cfg.path == "builtin":
        if cfg.family != "llava":
            raise ValueError("model.path=builtin is a llava-family model; set model.family: llava")
        loaded = build_builtin(cfg.builtin, seed=seed)
    else:
        loaded = get_family(cfg.family).load(cfg)
    apply_max_pixels(loaded.processor, cfg, loaded.model)
    return loaded


def apply_max_pixels(processor, cfg, model=None) -> str | None:
    """Set `cfg.max_pixels` (a ModelCfg's) into `processor`'s image processor; returns what was set, in words, or
    None when there is no limit. Raises ValueError for a family whose processor gives every image one size.

    LLaVA-NeXT / LLaVA-OneVision models split an image's features by the tile grid they compute from their own
    `config.image_grid_pinpoints`: the grid resolutions the limit keeps are set into `model`'s config too (and so into
    every checkpoint and export), or the model would cut the fewer tiles the processor made into the wrong grid."""
    if cfg.max_pixels is None:
        return None
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        raise ValueError(f"model.max_pixels does not apply to {cfg.family}: its processor has no image processor")
    said = limit_pixels(image_processor, cfg.max_pixels, cfg.family)
    pinpoints = getattr(image_processor, "image_grid_pinpoints", None)
    if model is not None and pinpoints and getattr(model.config, "image_grid_pinpoints", None) is not None:
        model.config.image_grid_pinpoints = [list(g) for g in pinpoints]
    return said


__all__ = ["FAMILIES", "Batch", "Loaded", "ModelFamily", "SampleTooLong", "apply_max_pixels", "family_of", "get_family",
           "load_model", "support_table"]
