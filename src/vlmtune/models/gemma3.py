"""Gemma 3 family (`Gemma3ForConditionalGeneration`): SigLIP -> average-pool + linear projector -> Gemma 3 decoder.

Checkpoints: google/gemma-3-4b-it, google/gemma-3-12b-it, google/gemma-3-27b-it (and their -pt bases, which share
the tokenizer and processor; fine-tuning a -pt base teaches it the chat format below).

Prompt format: Gemma 3's chat template, `<bos><start_of_turn>user\\n{image}{text}<end_of_turn>\\n<start_of_turn>model\\n
{answer}<end_of_turn>\\n` ("assistant" is rendered as "model"; a system turn is prefixed to the first user turn).
Each image is a `<start_of_image>` in the text, which the processor expands to
`\\n\\n<start_of_image>` + `<image_soft_token>` x mm_tokens_per_image (256) + `<end_of_image>\\n\\n`.

Traps handled:
- The processor wants images nested per sample (`[[img], [img, img], []]`), not a flat list.
- `token_type_ids` (1 on the soft image tokens) is passed in training and generation: the model uses it to let an
  image's tokens attend to each other both ways; without it they are causal, which the checkpoints never saw.
- The chat template writes `<bos>` itself, so nothing is tokenized with `add_special_tokens` (no second bos).
- The trained end token is `<end_of_turn>` (in the -it checkpoints' `generation_config.eos_token_id` = [<eos>,
  <end_of_turn>]); the "\\n" the template writes after it is never generated, so it is not trained either.
- `processor.image_token_id` is the `<start_of_image>` placeholder (one per image), not the soft token the
  image features replace: the soft tokens are `processor.tokenizer.image_token_id`.
- Pan-and-scan (extra crops, with extra text between them) is switched off, so every image costs the same tokens.
- Packing (`train.packing`): transformers 5.25 builds a packed row's sliding-window masks with the image blocks
  looked up at the wrong tokens; `pack_inputs` builds both masks itself (tested packed == padded).
- A randomly initialised model's projector (`mm_input_projection_weight`) is zeros: every image token gets the same
  features, so a tiny model's loss barely depends on the image (tests that need it to re-initialise it).
"""

from __future__ import annotations

from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.models.family import Batch, Loaded, ModelFamily, input_dtype, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, assistant_spans, check_length, expanded_labels

LANGUAGE_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
END_OF_TURN = "<end_of_turn>"

# Gemma 3's chat template (google/gemma-3-4b-it), image parts included.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = \"\" -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}"
    "{%- else -%}{{ raise_exception(\"Invalid content type\") }}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)


def load(cfg) -> Loaded:
    return load_pretrained(cfg, "gemma3", freeze_groups=FAMILY.freeze_groups)


def encode(processor, samples, images, mode: str, max_length: int) -> Batch:
    """Samples -> model inputs. "train": the whole conversation, labels on every assistant answer + `<end_of_turn>`,
    right padding. "generate": the conversation up to the last assistant turn plus `<start_of_turn>model\\n`, left
    padding. A sample longer than `max_length` (image tokens included) raises SampleTooLong; nothing is cut."""
    tok = processor.tokenizer
    n_soft = processor.image_seq_length
    # The processor's expansion of one image with a single soft token: tokenizing the template's text with this
    # gives the processor's ids except that each run of soft tokens is one placeholder (labels_for_expanded's input).
    one_image = processor.full_image_sequence.replace(tok.image_token * n_soft, tok.image_token)
    end_of_turn = tok.convert_tokens_to_ids(END_OF_TURN)

    def render(messages, add_generation_prompt):
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def tokenize(texts):
        return tok([t.replace(processor.boi_token, one_image) for t in texts], add_special_tokens=False).input_ids

    train = mode == "train"
    texts = [render(s.messages if train else s.prompt_messages, not train) for s in samples]
    tokenized = []  # per sample: (ids with one soft token per image, assistant spans, tokens per image)
    for s, text in zip(samples, texts, strict=True):
        if train:
            unexpanded, spans = assistant_spans(tokenize, render, s.messages, s.id)
            # end each span at <end_of_turn>: the "\n" the template writes after it is never generated
            spans = [(start, unexpanded.index(end_of_turn, start, end) + 1) for start, end in spans]
        else:
            unexpanded, spans = tokenize([text])[0], []
        check_length(s.id, n_soft * len(s.images), len(unexpanded) - len(s.images), max_length)
        tokenized.append((unexpanded, spans, [n_soft] * len(s.images)))
    has_images = bool(load_image_list(samples, images))  # checks each sample got as many images as slots
    nested = [list(imgs) for imgs in images] if has_images else None  # nested per sample, as Gemma3Processor wants
    tok.padding_side = "right" if train else "left"
    out = processor(text=texts, images=nested, padding=True, add_special_tokens=False, do_pan_and_scan=False,
                    return_tensors="pt")
    inputs = {k: out[k] for k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values") if k in out}
    n_target = 0
    if train:
        labels = expanded_labels(out["input_ids"], out["attention_mask"], tok.image_token_id,
                                 [s.id for s in samples], tokenized)
        n_target = int((labels != IGNORE_INDEX).sum())
        inputs["labels"] = labels
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=n_target)


def pack_inputs(model, padded: dict, packed: dict) -> dict:
    """A packed row's attention masks (`ModelFamily.pack_inputs`), built here as the model's `{"full_attention",
    "sliding_attention"}` mapping: causal or inside one image's block, within one sample (and, for the sliding
    layers, the window). transformers 5.25 gets the sliding layers wrong in a packed row: the image-block overlay is
    applied before it remaps token indices to per-sample positions, so a query looks up the image block of the token
    at its *position* in the row's first sample. A flash-attention model keeps the generic row (varlen from the
    position ids; flash attention has no image blocks, padded or packed)."""
    import torch
    from transformers.masking_utils import (
        and_masks,
        blockwise_overlay,
        create_causal_mask,
        packed_sequence_mask_function,
        sliding_window_overlay,
    )
    from transformers.models.gemma3.modeling_gemma3 import get_block_sequence_ids_for_mask

    config = model.config.get_text_config()
    if "flash" in (config._attn_implementation or "") or "token_type_ids" not in packed:
        return packed
    segments = (packed["position_ids"] == 0).cumsum(-1) - 1
    shape = dict(config=config, inputs_embeds=torch.empty((*segments.shape, 0), dtype=input_dtype(model)),
                 attention_mask=None, cache=None, position_ids=None,
                 or_mask_function=blockwise_overlay(get_block_sequence_ids_for_mask(packed["token_type_ids"])))
    one_sample = packed_sequence_mask_function(segments)
    masks = {"full_attention": create_causal_mask(**shape, and_mask_function=one_sample),
             "sliding_attention": create_causal_mask(**shape, and_mask_function=and_masks(
                 sliding_window_overlay(config.sliding_window), one_sample))}
    return dict(packed, attention_mask=masks)


SPECIALS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
            "<image_soft_token>"]  # Gemma's order for pad 0, eos 1, bos 2
_CORPUS = [
    "user model What colour is the top? red", "Describe the image. a person wearing a red top and blue trousers",
    "What colour is the shirt? blue green yellow black white", "How many shapes are there? one two three",
]


def build_tokenizer():
    """A byte-level BPE with Gemma 3's special tokens, trained here on a few sentences."""
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_bpe(_CORPUS * 4, SPECIALS, 400)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>"},
    )


def tiny() -> Loaded:
    """A random Gemma 3: SigLIP (2 layers, dim 32) on 32x32 images in 8x8 patches, pooled 2x2 to 4 soft tokens;
    Gemma 3 decoder (one sliding-window and one global layer, dim 32); the real Gemma3Processor (PIL images)."""
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tok = build_tokenizer()
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
                                tokenizer=tok, image_seq_length=4, chat_template=CHAT_TEMPLATE)
    vision = SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=4, vision_use_head=False)
    text = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                            sliding_window=16, layer_types=["sliding_attention", "full_attention"],
                            max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                            eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id,
                          image_token_index=tok.image_token_id)
    model = Gemma3ForConditionalGeneration(config).to(torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids(END_OF_TURN)]
    model.generation_config.bos_token_id = tok.bos_token_id
    return Loaded(model=model, processor=processor, family="gemma3")


FAMILY = ModelFamily(
    name="gemma3",
    description="Gemma 3 (google/gemma-3-*-it/-pt): SigLIP -> pooled linear projector -> Gemma 3, chat template",
    load=load,
    encode=encode,
    # regex: the language model's linears only (SigLIP has q_proj/k_proj/v_proj too)
    lora_targets=(r".*language_model.*\.(" + "|".join(LANGUAGE_LINEARS) + ")",),
    freeze_groups={
        "vision": ("model.vision_tower.",),
        "projector": ("model.multi_modal_projector.",),
        "language": ("model.language_model.", "lm_head."),
    },
    tiny=tiny,
    # soft image tokens (processor.image_token_ids); the <start_of_image>/<end_of_image> and "\n\n" around them
    # count as text tokens. Every image is resized to one fixed size.
    image_tokens=lambda processor, width, height: processor.image_seq_length,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    vision_cache=True,  # takes mm_encoder_outputs: the frozen-vision cache applies
    packing=True,  # with each sample's image-block masks (pack_inputs)
    pack_inputs=pack_inputs,
    language_model="model.language_model",
    vision_tower="model.vision_tower",
)
