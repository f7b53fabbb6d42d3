"""LLaVA-NeXT / LLaVA-1.6 family (`LlavaNextForConditionalGeneration`): CLIP -> MLP projector -> Mistral/Vicuna/...

Checkpoints: llava-hf/llava-v1.6-mistral-7b-hf, llava-hf/llava-v1.6-vicuna-7b-hf, llava-hf/llava-v1.6-34b-hf.
Prompt format: the checkpoint's own chat template (Mistral checkpoints: "[INST] <image>\\nQ [/INST] A</s>";
Vicuna checkpoints: "USER: <image>\\nQ ASSISTANT: A</s>", which the tiny model uses too).

Differences from LLaVA-1.5 (llava.py), handled here:
- "anyres": each image is resized to the best of `image_grid_pinpoints`, cut into crop-size tiles plus one
  downscaled overview, so the number of `<image>` tokens depends on the image's size. `image_tokens` asks the
  processor's own feature count (`_get_number_of_features`, the function its placeholder expansion uses), and
  `encode` maps labels with the per-image counts.
- The model takes `image_sizes` next to `pixel_values` (the processor returns both; they pass through as is).
- Mistral checkpoints' template writes "</s> " after each answer: labels stop at the `</s>`; a template that writes
  no end token (early revisions of llava-v1.6-mistral-7b-hf wrote a literal "<\\s>") is refused with an error.
- `model.image_newline` (a learned row separator of the image features) is a parameter outside every submodule:
  it belongs to the projector group.
"""

from __future__ import annotations

from vlmtune.models.builtin import CHAT_TEMPLATE, IMAGE, build_tokenizer
from vlmtune.models.family import Batch, Loaded, ModelFamily, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, assistant_spans, check_length, expanded_labels
from vlmtune.models.llava import LANGUAGE_LINEARS


def load(cfg) -> Loaded:
    return load_pretrained(cfg, "llava_next", freeze_groups=FAMILY.freeze_groups)


def image_token_count(processor, width: int, height: int) -> int:
    """`<image>` tokens for one image of this size, exactly as LlavaNextProcessor expands the placeholder."""
    ip = processor.image_processor  # tiles are square: crop_size, else size (as the image processor picks them)
    tile = (ip.crop_size and ip.crop_size.height) or ip.size.height or ip.size.shortest_edge
    n = processor._get_number_of_features(height, width, tile, tile)
    return n - 1 if processor.vision_feature_select_strategy == "default" else n


def end_at_eos(ids, span, eos_id, sample_id):
    """An assistant turn's span, cut just after its last end token. The llava-v1.6-mistral template ends turns with
    "</s> " (the space after the end token is not trained); its early revisions wrote a literal "<\\s>" instead, with
    no end token at all: refused, since the model would never learn to stop."""
    ends = [i for i in range(*span) if ids[i] == eos_id]
    if not ends:
        raise ValueError(f"sample {sample_id!r}: the chat template ends an assistant turn without the end token "
                         f"(id {eos_id}); fix the processor's chat_template")
    return span[0], ends[-1] + 1


def encode(processor, samples, images, mode: str, max_length: int) -> Batch:
    """Samples -> model inputs, as llava.encode, with a per-image token count. "train": the whole conversation,
    labels only on assistant turns (+ end token), right padding. "generate": the conversation up to the last
    assistant turn plus the generation prompt, left padding. Too long (image tokens included): SampleTooLong."""
    tok = processor.tokenizer

    def render(messages, add_generation_prompt):
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    train = mode == "train"
    texts = [render(s.messages if train else s.prompt_messages, not train) for s in samples]
    tokenized = []  # per sample: (ids with one placeholder per image, assistant spans, tokens per image)
    for s, text, imgs in zip(samples, texts, images, strict=True):
        if train:
            unexpanded, spans = assistant_spans(lambda ts: tok(ts).input_ids, render, s.messages, s.id)
            spans = [end_at_eos(unexpanded, span, tok.eos_token_id, s.id) for span in spans]
        else:
            unexpanded, spans = tok(text).input_ids, []
        counts = [image_token_count(processor, *img.size) for img in imgs]
        check_length(s.id, sum(counts), len(unexpanded) - len(s.images), max_length, resize=True)
        tokenized.append((unexpanded, spans, counts))
    flat = load_image_list(samples, images)
    tok.padding_side = "right" if train else "left"
    out = processor(text=texts, images=flat or None, padding=True, return_tensors="pt")
    inputs = dict(out)
    n_target = 0
    if train:
        labels = expanded_labels(out["input_ids"], out["attention_mask"], processor.image_token_id,
                                 [s.id for s in samples], tokenized)
        n_target = int((labels != IGNORE_INDEX).sum())
        inputs["labels"] = labels
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=n_target)


def tiny() -> Loaded:
    """A random LLaVA-NeXT: CLIP 1 layer dim 32 on 32x32 tiles (patch 8), pinpoints up to 64x64, Llama 2 layers
    dim 32, with the built-in byte-level BPE tokenizer and Vicuna-style chat template."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tile, patch, pinpoints = 32, 8, [[32, 64], [64, 32], [64, 64]]
    tok = build_tokenizer(640)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(image_size=tile, patch_size=patch, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=1, num_attention_heads=4, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       tie_word_embeddings=False)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids(IMAGE),
                             image_grid_pinpoints=pinpoints, vision_feature_select_strategy="default",
                             vision_feature_layer=-1)
    model = LlavaNextForConditionalGeneration(config).to(torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return Loaded(model=model, processor=processor, family="llava_next")


FAMILY = ModelFamily(
    name="llava_next",
    description="LLaVA-NeXT / 1.6 (llava-hf/llava-v1.6-*): anyres tiles of CLIP features -> MLP -> Mistral/Vicuna",
    load=load,
    encode=encode,
    # regex: the language model's linears only (the CLIP tower has q_proj/k_proj/v_proj too)
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
    packing=True,  # a Llama-style LM with 1-D positions: samples can share a row
    vision_cache=True,  # takes mm_encoder_outputs: the frozen-vision cache applies
    language_model="model.language_model",
    vision_tower="model.vision_tower",
)
