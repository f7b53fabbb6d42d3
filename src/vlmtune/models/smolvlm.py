"""SmolVLM and SmolVLM2 family (`SmolVLMForConditionalGeneration`): SigLIP vision model -> pixel-shuffle connector ->
SmolLM2.

Checkpoints: SmolVLM2 (HuggingFaceTB/SmolVLM2-256M-Video-Instruct, SmolVLM2-500M-Video-Instruct,
SmolVLM2-2.2B-Instruct) and SmolVLM (HuggingFaceTB/SmolVLM-256M-Instruct, SmolVLM-500M-Instruct, SmolVLM-Instruct
(2.2B)): one model class and processor, one prompt format. tests/real checks the family against SmolVLM2-256M-Video-
Instruct's real files; its recipe (configs/smolvlm/256m_lora_vqa.yaml) trains it. Images only here: SmolVLM2's
videos are not taken.

The design, the image splitting and the prompt format are Idefics3's, so `encode` and `image_tokens` are
idefics3.py's. The checkpoints' chat template:

    <|im_start|>User:<image>What colour is the top?<end_of_utterance>\\nAssistant: red<end_of_utterance>\\n

Trained tokens: the answer and `<end_of_utterance>` (SmolVLM's EOS). Traps handled here:
- `SmolVLMProcessor` (what the checkpoints name, and what AutoProcessor builds) needs a video processor, which
  needs torchvision, and `num2words`. Its image-text processing is Idefics3Processor's (same image expansion, same
  tokens), so `load` builds an `Idefics3Processor` from the checkpoint's files; saved again, it reloads with
  AutoProcessor. Videos are not supported; the export still writes `video_preprocessor_config.json` (from the
  image processor's settings) and names SmolVLMProcessor, as the checkpoints do, so that vLLM loads it.
- Unlike Idefics3, the model casts its image features to `model.dtype` (the first parameter's: the vision tower's,
  float32 when a full fine-tune trains it) rather than to the text embeddings' dtype before `masked_scatter`:
  `merge_in_model_dtype` has `align_dtypes` merge in that dtype (a bf16 full fine-tune crashed at its first forward).
- Everything else as in idefics3.py (nested image lists, size-dependent image tokens, wrapper tokens).
"""

from __future__ import annotations

import json
from pathlib import Path

from vlmtune.models import idefics3
from vlmtune.models.family import Loaded, ModelFamily, load_pretrained


def load(cfg) -> Loaded:
    from transformers import Idefics3Processor

    # not AutoProcessor: that builds SmolVLMProcessor, which needs torchvision and num2words (see above)
    loaded = load_pretrained(cfg, "smolvlm", Idefics3Processor, freeze_groups=FAMILY.freeze_groups)
    idefics3.stop_at_end_of_utterance(loaded.model, loaded.processor.tokenizer)
    return loaded


def load_processor(path, **options):
    """Idefics3Processor, which serves SmolVLM's images and text without torchvision or num2words."""
    from transformers import Idefics3Processor

    return Idefics3Processor.from_pretrained(path, **options)


VIDEO_SETTINGS = ("do_convert_rgb", "do_resize", "size", "max_image_size", "resample", "do_rescale", "rescale_factor",
                  "do_normalize", "image_mean", "image_std", "do_pad")
"""The image processor's settings that SmolVLM's video processor shares (its frames are resized like images)."""


def export_files(processor, out: Path) -> None:
    """`export_extras`: the directory as the checkpoints have it, for SmolVLMProcessor (what vLLM and AutoProcessor
    with torchvision build): video_preprocessor_config.json from the image processor's settings, without which it
    refuses the directory (transformers' defaults for the rest: no frame sampling, no metadata), and
    `processor_class` SmolVLMProcessor where `load` saved Idefics3Processor (vlmtune's loaders name their class)."""
    path = out / "video_preprocessor_config.json"
    if not path.exists():
        image = processor.image_processor.to_dict()
        config = {k: image[k] for k in VIDEO_SETTINGS if k in image}
        if "resample" in config:
            config["resample"] = int(config["resample"])  # a PIL resampling enum in some versions
        config |= {"do_sample_frames": False, "return_metadata": False, "video_processor_type": "SmolVLMVideoProcessor"}
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        saved = out / name
        config = json.loads(saved.read_text()) if saved.is_file() else {}
        if config.get("processor_class") == "Idefics3Processor":
            saved.write_text(json.dumps({**config, "processor_class": "SmolVLMProcessor"}, indent=2) + "\n")


def tiny() -> Loaded:
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMVisionConfig
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    image_processor = SmolVLMImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    # SmolVLM-256M-Instruct's special tokens: <|im_start|> BOS, <end_of_utterance> EOS, <|im_end|> padding
    tokens = ("<|im_start|>", idefics3.END, "<|im_end|>")
    return idefics3.build_tiny(SmolVLMConfig, SmolVLMVisionConfig, SmolVLMForConditionalGeneration, image_processor,
                               tokens, "smolvlm", scale_factor=4)  # pixel shuffle 4, as in the checkpoints


FAMILY = ModelFamily(
    name="smolvlm",
    description="SmolVLM2 / SmolVLM (HuggingFaceTB/SmolVLM2-2.2B-Instruct, SmolVLM2-500M-Video-Instruct, "
    "SmolVLM2-256M-Video-Instruct, SmolVLM-*-Instruct; images): SigLIP -> pixel-shuffle connector -> SmolLM2; "
    "Idefics3's image splitting and prompt format",
    load=load,
    encode=idefics3.encode,
    lora_targets=idefics3.FAMILY.lora_targets,
    freeze_groups=idefics3.FAMILY.freeze_groups,
    tiny=tiny,
    image_tokens=idefics3.image_tokens,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    projector_modules=("connector",),
    processor_loader=load_processor,
    packing=True,  # a Llama-style LM with 1-D positions: samples can share a row
    vision_cache=True,  # takes mm_encoder_outputs: the frozen-vision cache applies
    vision_features="per_sample",  # get_image_features lists one entry per sample (all its images' tiles)
    vision_tower="model.vision_model",
    merge_in_model_dtype="model.text_model",  # image features cast to model.dtype (the vision tower's) before the merge
    export_extras=export_files,  # the video processor config and class that vLLM's SmolVLMProcessor needs
)
