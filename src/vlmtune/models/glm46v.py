"""GLM-4.6V family (`Glm46VForConditionalGeneration`): GLM-4.1V's ViT -> downsample + patch merger -> GLM-4 decoder
(the text and vision sub-models built from their own configs, `AutoModel`), as glm4v.py, with GLM-4.6V's processor
and chat template.

Checkpoints: zai-org/GLM-4.6V-Flash (9B, the dense GLM-4 decoder: this family); zai-org/GLM-4.6V (106B, the
GLM-4.5-Air mixture-of-experts decoder) is trained with the glm4v_moe family (its experts and LoRA targets; the same
template handling), whose processor is GLM-4.1V's class: the same image processing, saved as `Glm4vProcessor`.
transformers 5.25 differs from GLM-4.1V here only in the processor's video frame text (`"{t:.1f} seconds"` after
each frame instead of `{int(t)}`; no video in vlmtune) and in `Glm46VModel` building its towers with `AutoModel`:
the parameter names, the image processor (`Glm46VImageProcessorPil` is `Glm4vImageProcessorPil`), `image_tokens`,
M-RoPE, packing and the vision cache are GLM-4.1V's. A checkpoint whose config.json names the glm4v class loads
with this family too (`load` takes whatever model class the config names; the names are the same).

Prompt format: the GLM-4.6V chat template in its non-thinking mode, as GLM-4.5V (glm4v_moe.py: `/nothink` after
each question, `<think></think>` before each answer, `thinking_off` in front of the processor's template):

    [gMASK]<sop><|user|>\\n<|begin_of_image|><|image|><|end_of_image|>What colour is the top?/nothink<|assistant|>
    <think></think>\\nred<|endoftext|>

GLM-4.6V's template writes the empty think block and a newline into its non-thinking generation prompt
(`<|assistant|>\\n<think></think>\\n`), so the trained target is the answer itself + the stop token (`<|endoftext|>`
after the last turn, `<|user|>` after an earlier one). CHAT_TEMPLATE (the tiny model's; a checkpoint brings its
own) is glm4v_moe's with that generation prompt, as GLM-4.6V-family templates publish it (tool parts left out;
not compared character for character with the checkpoint's file, which is not at hand).

Traps handled here (besides GLM-4.1V's and GLM-4.5V's template ones):
- `Glm46VProcessor` needs its torchvision video processor too: `ImageOnlyProcessor` is glm4v's with GLM-4.6V's
  frame text, saving itself as `Glm46VProcessor` (registered with AutoProcessor for Glm46VConfig).
"""

from __future__ import annotations

import functools

from vlmtune.models import glm4v, glm4v_moe
from vlmtune.models.family import Loaded, ModelFamily, load_pretrained

_THINKING_OFF = "(enable_thinking is defined and not enable_thinking)"
_GLM45V_PROMPT = "    <|assistant|>{{- '\\n<think></think>' if " + _THINKING_OFF + " else '' -}}\n"
_GLM46V_PROMPT = "<|assistant|>\n{{'<think></think>\\n' if " + _THINKING_OFF + " else ''}}\n"
assert _GLM45V_PROMPT in glm4v_moe.CHAT_TEMPLATE
CHAT_TEMPLATE = glm4v_moe.CHAT_TEMPLATE.replace(_GLM45V_PROMPT, _GLM46V_PROMPT)


def __getattr__(name: str):
    # built on first use (defining it imports transformers); resolving it here lets pickle find it by name
    if name == "ImageOnlyProcessor":
        return image_only_processor()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def image_only_processor() -> type:
    """`ImageOnlyProcessor`: glm4v's (Glm4vProcessor without its video processor) with Glm46VProcessor's frame text,
    saved as `Glm46VProcessor`; registered with AutoProcessor for the GLM-4.6V config."""
    from transformers import AutoProcessor, Glm46VConfig, Glm46VProcessor

    class ImageOnlyProcessor(glm4v.image_only_processor()):
        upstream = "Glm46VProcessor"
        replace_frame_token_id = Glm46VProcessor.replace_frame_token_id

    ImageOnlyProcessor.__qualname__ = ImageOnlyProcessor.__name__
    AutoProcessor.register(Glm46VConfig, ImageOnlyProcessor, exist_ok=True)
    return ImageOnlyProcessor


def load_processor(path, **options):
    return glm4v_moe.thinking_off(image_only_processor().from_pretrained(path, **options))


def load(cfg) -> Loaded:
    config = glm4v.load_config(cfg.path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    loaded = load_pretrained(cfg, "glm46v", image_only_processor(), freeze_groups=glm4v.FREEZE_GROUPS, config=config)
    glm4v_moe.thinking_off(loaded.processor)
    return loaded


def tiny() -> Loaded:
    """A random GLM-4.6V(-Flash): glm4v's tiny ViT and dense 2-layer decoder in a Glm46VConfig, GLM-4.6V's
    processor classes and template."""
    from transformers import Glm46VConfig, Glm46VForConditionalGeneration
    from transformers.models.glm46v.image_processing_pil_glm46v import Glm46VImageProcessorPil

    base = glm4v.build_processor(CHAT_TEMPLATE, (glm4v_moe.NOTHINK,))
    image_processor = Glm46VImageProcessorPil(**{k: v for k, v in base.image_processor.to_dict().items()
                                                 if k not in ("image_processor_type", "processor_class")})
    processor = image_only_processor()(image_processor, base.tokenizer, chat_template=CHAT_TEMPLATE)
    return glm4v.build_tiny(Glm46VConfig, Glm46VForConditionalGeneration, {}, "glm46v",
                            glm4v_moe.thinking_off(processor))


FAMILY = ModelFamily(
    name="glm46v",
    description="GLM-4.6V-Flash (zai-org/GLM-4.6V-Flash): GLM-4.1V's ViT -> downsample + patch merger -> GLM-4 "
                "with M-RoPE (GLM-4.6V's processor and template)",
    load=load,
    encode=glm4v_moe.encode,  # glm4v's, in the template's non-thinking mode
    lora_targets=glm4v.FAMILY.lora_targets,
    freeze_groups=glm4v.FREEZE_GROUPS,
    tiny=tiny,
    image_tokens=glm4v.FAMILY.image_tokens,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    projector_modules=("downsample", "merger"),
    vision_cache=True,  # takes mm_encoder_outputs, as GLM-4.1V: the frozen-vision cache applies
    packing=True,  # with each sample's M-RoPE positions, as GLM-4.1V (qwen2_vl.pack_inputs)
    pack_inputs=glm4v.FAMILY.pack_inputs,
    processor_loader=load_processor,
    language_model="model.language_model",
    vision_tower="model.visual",
)
