"""LLaVA-OneVision family (`LlavaOnevisionForConditionalGeneration`): SigLIP -> MLP projector -> Qwen2, AnyRes-max-9.

Checkpoints: llava-hf/llava-onevision-qwen2-0.5b-ov-hf, llava-hf/llava-onevision-qwen2-7b-ov-hf (-72b-ov-hf, the
-si-hf single-image ones and the -ov-chat-hf ones share the template and processor).
Prompt format: the -ov-hf checkpoints' chat template (CHAT_TEMPLATE, copied from their chat_template.json):

    <|im_start|>user <image>\\nWhat colour is the top?<|im_end|><|im_start|>assistant\\nred<|im_end|>

(no system prompt, no "\\n" between turns). The trained tokens are the answer and `<|im_end|>` (the checkpoints'
eos, what generation stops at).

Traps handled here:
- The template renders an assistant turn as "<|im_start|>assistant \\n..." (the role, then a space: every role gets
  one) but the generation prompt as "<|im_start|>assistant\\n": trained as rendered, the model would learn answers
  after a prefix it never sees when generating (and the assistant spans are not a prefix of the conversation).
  `render` writes the assistant header as the generation prompt does, which is also how the original LLaVA-OneVision
  training formatted it (the "qwen_1_5" conversation: "<|im_start|>assistant\\n"). Templates without the space are
  untouched.
- AnyRes-max-9: a single image is resized into the best of `image_grid_pinpoints`, cut into tiles plus one overview,
  the tile features unpadded back to the image's aspect ratio, one `image_newline` per row, and the grid scaled down
  (bilinear) when it holds more than 9 tiles' worth of features. `image_tokens` asks the processor's own count
  (`_get_number_of_features`, what its placeholder expansion uses); tests check it for several sizes and ratios.
- A sample with several images is NOT tiled: each image is padded to a square, one tile + one newline feature. The
  processor decides from the nesting of `images` (per sample) and returns `batch_num_images`, which the model needs
  to agree: `encode` passes images nested per sample and counts each image's tokens the same way.
- `LlavaOnevisionProcessor` declares a video processor, which needs torchvision (absent here): `load_processor`
  builds the processor from the checkpoint's PIL image processor and tokenizer without one (images only). Saved,
  the directory has no video_preprocessor_config.json and plain transformers' AutoProcessor reloads it.
- `model.image_newline` is a parameter outside every submodule: it belongs to the projector group.

No real files of these checkpoints are in ../shared/real-models: the tiny model carries the real chat template,
special tokens and processor classes, but the image settings are checked only against transformers' own code.
"""

from __future__ import annotations

import functools
from pathlib import Path

from tokenizers import Regex, pre_tokenizers

from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.models.family import Batch, Loaded, ModelFamily, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, assistant_spans, check_length, expanded_labels, through_end_token
from vlmtune.models.qwen2_vl import _SPLIT, LANGUAGE_LINEARS, write_upstream_processor_files

END = "<|im_end|>"
IMAGE = "<image>"
UPSTREAM = "LlavaOnevisionProcessor"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", END, IMAGE, "<video>"]

# The chat template of llava-hf/llava-onevision-qwen2-{0.5b,7b,72b}-ov-hf (chat_template.json)
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ASSISTANT_AS_TRAINED = ("<|im_start|>assistant \n", "<|im_start|>assistant\n")
"""The template's assistant header -> the generation prompt's (see the docstring's first trap)."""


def __getattr__(name: str):
    # ImageOnlyProcessor is built on first use (defining it imports transformers); resolving it here lets pickle
    # find it by name, as in qwen2_vl.py
    if name == "ImageOnlyProcessor":
        return image_only_processor()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def image_only_processor() -> type:
    """`ImageOnlyProcessor`: LlavaOnevisionProcessor without its video processor (torchvision); saved under the
    upstream class name, so the files load with plain transformers."""
    from transformers import LlavaOnevisionProcessor

    class ImageOnlyProcessor(LlavaOnevisionProcessor):
        """LlavaOnevisionProcessor's image and text code without a video processor: transformers takes the
        sub-processors, and the settings it saves, from the names in this signature."""

        def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                     vision_feature_select_strategy=None, chat_template=None, image_token="<image>",
                     video_token="<video>", vision_aspect_ratio="anyres_max_9", **kwargs):
            super().__init__(image_processor, tokenizer, None, num_image_tokens, vision_feature_select_strategy,
                             chat_template, image_token, video_token, vision_aspect_ratio, **kwargs)

        def save_pretrained(self, save_directory, *args, **kwargs):
            out = super().save_pretrained(save_directory, *args, **kwargs)
            write_upstream_processor_files(Path(save_directory), UPSTREAM, self.image_processor)
            return out

    ImageOnlyProcessor.__qualname__ = ImageOnlyProcessor.__name__
    return ImageOnlyProcessor


def load_processor(path, **options):
    """The processor of a LLaVA-OneVision checkpoint (or a vlmtune checkpoint of one), images and text only."""
    return image_only_processor().from_pretrained(path, **options)


def load(cfg) -> Loaded:
    return load_pretrained(cfg, "llava_onevision", image_only_processor(), freeze_groups=FAMILY.freeze_groups)


def image_token_count(processor, width: int, height: int, alone: bool = True) -> int:
    """`<image>` tokens of one image of this size, exactly as LlavaOnevisionProcessor expands the placeholder: tiled
    (AnyRes-max-9) when the image is its sample's only one (`alone`), else one tile and one newline."""
    ip = processor.image_processor
    tile = ip.size.get("height") if isinstance(ip.size, dict) else ip.size.height
    if alone:
        n = processor._get_number_of_features(height, width, tile, tile)
    else:
        n = processor.num_image_tokens + 1
    return n - 1 if processor.vision_feature_select_strategy == "default" else n


def render(processor, messages, add_generation_prompt: bool) -> str:
    """The chat template's text, with each assistant header written as the generation prompt writes it."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return text.replace(*ASSISTANT_AS_TRAINED)


def encode(processor, samples, images, mode: str, max_length: int) -> Batch:
    """Samples -> model inputs. "train": the whole conversation, labels only on the answers + `<|im_end|>`, right
    padding. "generate": the conversation up to `<|im_start|>assistant\\n`, left padding. Too long (image tokens
    included): SampleTooLong."""
    tok = processor.tokenizer
    train = mode == "train"
    end_id = tok.convert_tokens_to_ids(END)

    def rendered(messages, add_generation_prompt):
        return render(processor, messages, add_generation_prompt)

    texts = [rendered(s.messages if train else s.prompt_messages, not train) for s in samples]
    tokenized = []  # per sample: (ids with one <image> per image, assistant spans, tokens per image)
    for s, text, imgs in zip(samples, texts, images, strict=True):
        if train:
            unexpanded, spans = assistant_spans(lambda ts: tok(ts).input_ids, rendered, s.messages, s.id)
            spans = [(start, through_end_token(unexpanded, start, end, end_id, s.id, END)) for start, end in spans]
        else:
            unexpanded, spans = tok(text).input_ids, []
        counts = [image_token_count(processor, *img.size, alone=len(imgs) == 1) for img in imgs]
        check_length(s.id, sum(counts), len(unexpanded) - len(imgs), max_length, resize=True)
        tokenized.append((unexpanded, spans, counts))
    has_images = bool(load_image_list(samples, images))
    nested = [list(imgs) for imgs in images] if has_images else None  # per sample: tiled only when alone
    out = processor(text=texts, images=nested, padding=True, padding_side="right" if train else "left",
                    return_tensors="pt")
    inputs = dict(out)  # input_ids, attention_mask (+ pixel_values, image_sizes, batch_num_images)
    n_target = 0
    if train:
        labels = expanded_labels(out["input_ids"], out["attention_mask"], processor.image_token_id,
                                 [s.id for s in samples], tokenized)
        n_target = int((labels != IGNORE_INDEX).sum())
        inputs["labels"] = labels
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=n_target)


_CORPUS = [
    "<|im_start|>user <image>\nWhat colour is the top?<|im_end|><|im_start|>assistant\nred<|im_end|>",
    "What colour is the top? What colour are the trousers? Describe the image.",
    "a person wearing a red top and blue trousers",
    "red blue green yellow white black orange purple pink grey brown",
    "what which who where how many is are the a an of in on at with and or not yes no there this that",
]


def build_tokenizer():
    """A small byte-level BPE trained in-process with Qwen2's pre-tokenizer and the -ov-hf checkpoints' special
    tokens (eos `<|im_end|>`, pad `<|endoftext|>`, `<image>`, `<video>`)."""
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_bpe(_CORPUS * 20, SPECIAL_TOKENS, 600, pre_tokenizer=pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=END, pad_token="<|endoftext|>",
                                   extra_special_tokens={"image_token": IMAGE, "video_token": "<video>"},
                                   model_max_length=4096)


TILE, PATCH = 32, 8
PINPOINTS = [[TILE * i, TILE * j] for i in range(1, 5) for j in range(1, 5)]
"""The tiny model's grid: tiles of 32 px up to 4 x 4 (the checkpoints: 384 px up to 6 x 6), so that large images take
more than 9 tiles and are scaled down as anyres_max_9 does."""


def build_processor():
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    image_processor = LlavaOnevisionImageProcessorPil(size={"height": TILE, "width": TILE},
                                                      image_grid_pinpoints=PINPOINTS)
    return image_only_processor()(image_processor=image_processor, tokenizer=build_tokenizer(),
                                   num_image_tokens=(TILE // PATCH) ** 2, vision_feature_select_strategy="full",
                                   chat_template=CHAT_TEMPLATE, vision_aspect_ratio="anyres_max_9")


def tiny() -> Loaded:
    """A random LLaVA-OneVision: SigLIP 1 layer dim 32 on 32x32 tiles (patch 8, 16 features a tile, no CLS), Qwen2
    2 layers dim 32, with the real chat template and an in-process tokenizer."""
    import torch
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    processor = build_processor()
    tok = processor.tokenizer
    vision = dict(model_type="siglip_vision_model", image_size=TILE, patch_size=PATCH, hidden_size=32,
                  intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vision_use_head=False)
    text = dict(model_type="qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.pad_token_id,
                tie_word_embeddings=False)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_grid_pinpoints=PINPOINTS,
                                  image_token_id=processor.image_token_id, video_token_id=processor.video_token_id,
                                  vision_feature_select_strategy="full", vision_feature_layer=-1,
                                  vision_aspect_ratio="anyres_max_9", tie_word_embeddings=False)
    model = LlavaOnevisionForConditionalGeneration(config).to(torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.pad_token_id
    return Loaded(model=model, processor=processor, family="llava_onevision")


FAMILY = ModelFamily(
    name="llava_onevision",
    description="LLaVA-OneVision (llava-hf/llava-onevision-qwen2-*-ov-hf): AnyRes-max-9 SigLIP tiles -> MLP -> Qwen2",
    load=load,
    encode=encode,
    # regex: the language model's linears only (SigLIP has q_proj/k_proj/v_proj too)
    lora_targets=(r".*language_model.*\.(" + "|".join(LANGUAGE_LINEARS) + ")",),
    freeze_groups={
        "vision": ("model.vision_tower.",),
        "projector": ("model.multi_modal_projector.", "model.image_newline"),
        "language": ("model.language_model.", "lm_head."),
    },
    tiny=tiny,
    image_tokens=image_token_count,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    projector_modules=("multi_modal_projector",),
    processor_loader=load_processor,
    packing=True,  # a Qwen2 LM with 1-D positions: samples can share a row
    vision_cache=True,  # takes mm_encoder_outputs: the frozen-vision cache applies
    language_model="model.language_model",
    vision_tower="model.vision_tower",
)
