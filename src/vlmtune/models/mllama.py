"""Llama 3.2 Vision family (`MllamaForConditionalGeneration`): tiled ViT -> linear projector -> Llama 3.1 decoder
whose interleaved cross-attention layers read the image features.

Checkpoints: meta-llama/Llama-3.2-11B-Vision-Instruct, meta-llama/Llama-3.2-90B-Vision-Instruct (and the base
Llama-3.2-*-Vision models, which ship no chat template: give them one before fine-tuning).
Prompt format: the checkpoint's Llama 3 chat template,
"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\n<|image|>Q<|eot_id|>
<|start_header_id|>assistant<|end_header_id|>\\n\\nA<|eot_id|>" (a conversation without images gets a system header with
the knowledge cut-off date; a system message next to an image is an error of the template). The tiny model's template
is that template without the tool-calling branches.

Traps handled:
- The image is NOT expanded into feature tokens: each image is one `<|image|>` token in input_ids and reaches the text
  through cross-attention (`cross_attention_mask` says which tokens see which image's tiles). So `image_tokens` is 1
  per image, whatever its size: that is what an image costs in the sequence budget (the tiles cost vision compute and
  cross-attention memory, not sequence positions).
- The processor wants one image list per sample (`[[img], [img, img], []]`).
- The chat template writes `<|begin_of_text|>` itself: tokenizer and processor are called with
  `add_special_tokens=False`, or the real Llama 3 tokenizer adds a second one.
- The end token the template writes is `<|eot_id|>` (one of the checkpoint's generation eos ids, with
  `<|end_of_text|>` and `<|eom_id|>`); it is trained.
- `<|image|>` sits past the text vocabulary (id 128256 = text vocab_size, in the embedding's 8 extra rows): the LM
  head never predicts it. The tiny model keeps that layout.
"""

from __future__ import annotations

from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.models.family import Batch, Loaded, ModelFamily, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, assistant_spans, check_length, expanded_labels
from vlmtune.models.llava import LANGUAGE_LINEARS

IMAGE = "<|image|>"
SPECIAL = ("<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|start_header_id|>",
           "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>")

# The Llama 3.2 Vision Instruct template without its tool-calling branches (date fixed, as the template's fallback).
CHAT_TEMPLATE = (
    "{%- macro text(m) -%}{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}"
    "{%- for c in m['content'] -%}{%- if c['type'] == 'image' -%}<|image|>{%- elif c['type'] == 'text' -%}"
    "{{ c['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}{%- endmacro -%}"
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = text(messages[0]) | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{%- set ns = namespace(has_images=false) %}"
    "{%- for m in messages %}{%- if m['content'] is not string %}{%- for c in m['content'] %}"
    "{%- if c['type'] == 'image' %}{%- set ns.has_images = true %}{%- endif %}{%- endfor %}{%- endif %}{%- endfor %}"
    "{%- if ns.has_images and system_message != '' %}"
    "{{- raise_exception('Prompting with images is incompatible with system messages.') }}{%- endif %}"
    "{%- if not ns.has_images %}<|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n{{ system_message }}<|eot_id|>{%- endif %}"
    "{%- for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ text(m) }}<|eot_id|>"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def load(cfg) -> Loaded:
    return load_pretrained(cfg, "mllama", freeze_groups=FAMILY.freeze_groups)


def encode(processor, samples, images, mode: str, max_length: int) -> Batch:
    """Samples -> model inputs (input_ids, attention_mask, pixel_values, aspect_ratio_ids, aspect_ratio_mask,
    cross_attention_mask). "train": the whole conversation, labels only on assistant turns (+ `<|eot_id|>`), right
    padding. "generate": up to the generation prompt, left padding. Too long: SampleTooLong, nothing is cut."""
    tok = processor.tokenizer

    def render(messages, add_generation_prompt):
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def tokenize(texts):
        return tok(texts, add_special_tokens=False).input_ids

    train = mode == "train"
    texts = [render(s.messages if train else s.prompt_messages, not train) for s in samples]
    # per sample: (ids, assistant spans, tokens per image); `<|image|>` stays one token, so ids are the processor's
    tokenized = []
    for s, text, imgs in zip(samples, texts, images, strict=True):
        if len(imgs) != len(s.images):
            raise ValueError(f"sample {s.id!r}: expected {len(s.images)} image(s), got {len(imgs)}")
        ids, spans = assistant_spans(tokenize, render, s.messages, s.id) if train else (tokenize([text])[0], [])
        check_length(s.id, len(s.images), len(ids) - len(s.images), max_length)  # one position per image
        tokenized.append((ids, spans, [1] * len(s.images)))
    nested = [list(imgs) for imgs in images]
    tok.padding_side = "right" if train else "left"
    out = processor(text=texts, images=nested if any(nested) else None, padding=True, add_special_tokens=False,
                    return_tensors="pt")
    inputs = dict(out)
    n_target = 0
    if train:
        labels = expanded_labels(out["input_ids"], out["attention_mask"], processor.image_token_id,
                                 [s.id for s in samples], tokenized)
        n_target = int((labels != IGNORE_INDEX).sum())
        inputs["labels"] = labels
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=n_target)


def build_tokenizer(vocab_size: int = 400):
    """A byte-level BPE with Llama 3's special tokens, trained here; `<|image|>` is added last (id = text vocab)."""
    from transformers import PreTrainedTokenizerFast

    corpus = ["system user assistant Cutting Knowledge Date: December 2023 Today Date: 26 Jul 2024",
              "What colour is the top? Describe the image. What is in the picture? How many are there?",
              "a person wearing a red top and blue trousers", "red green blue yellow black white yes no one two three"]
    tok = train_byte_bpe(corpus * 10, list(SPECIAL), vocab_size)
    tok.add_special_tokens([IMAGE])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|finetune_right_pad_id|>", model_max_length=2048)


def tiny() -> Loaded:
    """A random Mllama: ViT 2 layers (+1 global) dim 32 on 16x16 tiles (patch 8, up to 4 tiles), Llama 2 layers
    dim 32 with layer 1 a cross-attention layer, a Llama-3-style tokenizer trained here."""
    import torch
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaProcessor,
        MllamaTextConfig,
        MllamaVisionConfig,
    )
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    tok = build_tokenizer()
    processor = MllamaProcessor(MllamaImageProcessorPil(size={"height": 16, "width": 16}, max_image_tiles=4), tok,
                                chat_template=CHAT_TEMPLATE)
    vision = MllamaVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                                attention_heads=4, image_size=16, patch_size=8, max_num_tiles=4,
                                intermediate_layers_indices=[0], vision_output_dim=64)
    ids = {t: tok.convert_tokens_to_ids(t) for t in (*SPECIAL, IMAGE)}
    text = MllamaTextConfig(vocab_size=ids[IMAGE], hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, cross_attention_layers=[1],
                            max_position_embeddings=1024, bos_token_id=ids["<|begin_of_text|>"],
                            eos_token_id=ids["<|end_of_text|>"], pad_token_id=ids["<|finetune_right_pad_id|>"])
    model = MllamaForConditionalGeneration(
        MllamaConfig(vision_config=vision, text_config=text, image_token_index=ids[IMAGE])
    ).to(torch.float32)
    model.generation_config.bos_token_id = ids["<|begin_of_text|>"]
    model.generation_config.eos_token_id = [ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]]
    model.generation_config.pad_token_id = ids["<|finetune_right_pad_id|>"]
    return Loaded(model=model, processor=processor, family="mllama")


FAMILY = ModelFamily(
    name="mllama",
    description="Llama 3.2 Vision (meta-llama/Llama-3.2-*-Vision*): tiled ViT -> cross-attention layers in Llama 3.1",
    load=load,
    encode=encode,
    # regex: the language model's linears (self- and cross-attention, MLP); the ViT has q/k/v/o_proj too
    lora_targets=(r".*language_model.*\.(" + "|".join(LANGUAGE_LINEARS) + ")",),
    freeze_groups={
        "vision": ("model.vision_model.",),
        "projector": ("model.multi_modal_projector.",),
        "language": ("model.language_model.", "lm_head."),
    },
    tiny=tiny,
    image_tokens=lambda processor, width, height: 1,  # one `<|image|>` position; the image enters by cross-attention
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    projector_modules=("multi_modal_projector",),
    vision_tower="model.vision_model",
)
