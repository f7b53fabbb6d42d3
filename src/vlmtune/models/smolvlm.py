"""SmolVLM family (`SmolVLMForConditionalGeneration`): SigLIP vision model -> pixel-shuffle connector -> SmolLM2.

Checkpoints: HuggingFaceTB/SmolVLM-256M-Instruct, SmolVLM-500M-Instruct, SmolVLM-Instruct (2.2B). SmolVLM2
checkpoints share the model class (images only here; not checked against a real SmolVLM2 checkpoint).

The design, the image splitting and the prompt format are Idefics3's, so `encode` and `image_tokens` are
idefics3.py's. The checkpoints' chat template:

    <|im_start|>User:<image>What colour is the top?<end_of_utterance>\\nAssistant: red<end_of_utterance>\\n

Trained tokens: the answer and `<end_of_utterance>` (SmolVLM's EOS). Traps handled here:
- `SmolVLMProcessor` (what the checkpoints name, and what AutoProcessor builds) needs a video processor, which
  needs torchvision, and `num2words`. Its image-text processing is Idefics3Processor's (same image expansion, same
  tokens), so `load` builds an `Idefics3Processor` from the checkpoint's files; saved again, it reloads with
  AutoProcessor. Videos are not supported.
- Unlike Idefics3, the model casts its image features to `model.dtype` (the first parameter's: the vision tower's,
  float32 when a full fine-tune trains it) rather than to the text embeddings' dtype before `masked_scatter`:
  `merge_in_model_dtype` has `align_dtypes` merge in that dtype (a bf16 full fine-tune crashed at its first forward).
- Everything else as in idefics3.py (nested image lists, size-dependent image tokens, wrapper tokens).
"""

from __future__ import annotations

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
    description="SmolVLM (HuggingFaceTB/SmolVLM-256M-Instruct ... 2.2B, SmolVLM2 images): SigLIP -> pixel-shuffle "
    "connector -> SmolLM2; Idefics3's image splitting and prompt format",
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
)
