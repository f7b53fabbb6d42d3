"""Idefics3 family (`Idefics3ForConditionalGeneration`): SigLIP vision model -> pixel-shuffle connector -> Llama 3.

Checkpoints: HuggingFaceM4/Idefics3-8B-Llama3 (and fine-tunes of it). SmolVLM (smolvlm.py) is the same design and
reuses this file's `encode`.

Prompt format (the checkpoints' own chat template, which `encode` renders through the processor):

    <|begin_of_text|>User:<image>What colour is the top?<end_of_utterance>\\nAssistant: red<end_of_utterance>\\n

The generation prompt is `Assistant:`; the answer starts with a space. The trained tokens are the answer and
`<end_of_utterance>`, the token generation stops at (the template's `\\n` after it is not trained).

Traps handled here:
- The processor wants one image list per sample (`[[img], [img]]`), not a flat list.
- Image splitting (`do_image_splitting`): an image becomes rows x cols tiles plus a global view, each
  `image_seq_len` `<image>` tokens wrapped in `<fake_token_around_image>`, `<row_r_col_c>` and `\\n` tokens, so the
  number of image tokens depends on the image size (`image_tokens` computes it). The wrappers count as text tokens.
- Because of those wrappers the placeholder is not a plain run of image tokens: labels are found by rendering the
  conversation and its prefixes with the processor's own expansion of each image and tokenizing them
  (`assistant_spans`), then checking the result equals the processor's `input_ids`.
- A checkpoint's generation config may not stop at `<end_of_utterance>`: `load` adds it to the eos ids.
"""

from __future__ import annotations

from functools import partial

from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.models.family import Batch, Loaded, ModelFamily, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, assistant_spans, check_length

LANGUAGE_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
END = "<end_of_utterance>"
IMAGE_SPECIAL_TOKENS = ["<fake_token_around_image>", "<image>", END, "<global-img>"] + [
    f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)
]


def chat_template(bos: str) -> str:
    """The Idefics3 / SmolVLM chat template, starting with the checkpoint's BOS text."""
    return (
        bos + "{% for message in messages %}{{message['role'] | capitalize}}"
        "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
        "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
        "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    )


def stop_at_end_of_utterance(model, tokenizer) -> None:
    """Make generation stop at `<end_of_utterance>` (the token every assistant turn is trained to end with)."""
    end = tokenizer.convert_tokens_to_ids(END)
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else eos if isinstance(eos, list) else [eos]
    if end not in eos:
        model.generation_config.eos_token_id = eos + [end] if eos else end


def load(cfg) -> Loaded:
    loaded = load_pretrained(cfg, "idefics3", freeze_groups=FAMILY.freeze_groups)
    model, processor = loaded.model, loaded.processor
    stop_at_end_of_utterance(model, processor.tokenizer)
    return loaded


def image_tokens(processor, width: int, height: int) -> int:
    """`<image>` tokens for one image: `image_seq_len` per tile, rows x cols tiles (if split) plus the global view."""
    _, rows, cols = processor.image_processor.get_number_of_image_patches(height, width)
    return processor.image_seq_len * (rows * cols + 1)


def tokenize_expanded(tok, image_token: str, replacements: list[str], texts: list[str]) -> list[list[int]]:
    """Token ids of `texts` with their k-th image placeholder replaced by `replacements[k]`, as the processor does."""
    expanded = []
    for text in texts:
        parts = text.split(image_token)
        expanded.append(parts[0] + "".join(r + p for r, p in zip(replacements, parts[1:], strict=False)))
    return tok(expanded).input_ids


def encode(processor, samples, images, mode: str, max_length: int) -> Batch:
    """Samples -> model inputs. "train": the whole conversation, labels only on assistant answers + their
    `<end_of_utterance>`, right padding. "generate": the conversation up to the generation prompt `Assistant:`, left
    padding. A sample longer than `max_length` (image tokens included) raises SampleTooLong; nothing is cut."""
    import torch

    tok = processor.tokenizer
    train = mode == "train"

    def render(messages, add_generation_prompt):
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    texts = [render(s.messages if train else s.prompt_messages, not train) for s in samples]
    load_image_list(samples, images)  # checks that each sample got as many images as it has slots
    tok.padding_side = "right" if train else "left"
    nested = [list(imgs) for imgs in images]  # one image list per sample
    # no return_tensors yet: the replacement offsets (each image's expanded text) are not tensors
    out = processor(text=texts, images=nested if any(nested) else None, padding=True,
                    return_text_replacement_offsets=True)
    offsets = out.pop("text_replacement_offsets", None) or [[] for _ in samples]
    inputs = dict(out.convert_to_tensors("pt"))
    image_id = processor.image_token_id
    end_id = tok.convert_tokens_to_ids(END)
    labels = torch.full_like(inputs["input_ids"], IGNORE_INDEX)
    for b, s in enumerate(samples):
        ids = inputs["input_ids"][b][inputs["attention_mask"][b].bool()].tolist()
        n_image = ids.count(image_id)
        check_length(s.id, n_image, len(ids) - n_image, max_length)
        if not train:
            continue
        replacements = [o["replacement"] for o in offsets[b]]  # this sample's images, as the processor expanded them
        tokenize = partial(tokenize_expanded, tok, processor.image_token, replacements)
        full, spans = assistant_spans(tokenize, render, s.messages, s.id)
        if full != ids:
            raise ValueError(f"sample {s.id!r}: the processor's tokens differ from the rendered conversation's")
        for start, end in spans:
            turn = full[start:end]
            if end_id not in turn:
                raise ValueError(f"sample {s.id!r}: an assistant turn does not end with {END}")
            end = start + len(turn) - turn[::-1].index(end_id)  # train up to the end token, not the "\n" after it
            labels[b, start:end] = torch.tensor(full[start:end])
    if train:
        inputs["labels"] = labels
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=int((labels != IGNORE_INDEX).sum()))


_CORPUS = [
    "User: Assistant: User: Assistant:",
    "What colour is the top? What colour are the trousers? Describe the image.",
    "a person wearing a red top and blue trousers",
    "red blue green yellow white black orange purple pink grey brown",
    "what which who where how many is are the a an of in on at with and or not yes no there this that",
    "shirt dress skirt jacket coat shoes hat shape circle square triangle left right top bottom one two three",
]


def build_tokenizer(bos: str, eos: str, pad: str):
    """A small byte-level BPE trained in-process, with the Idefics3 image tokens and the checkpoint's BOS/EOS/PAD."""
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_bpe(_CORPUS * 20, list(dict.fromkeys([pad, bos, eos] + IMAGE_SPECIAL_TOKENS)), 600)
    # no post-processor: the chat template writes BOS itself
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   model_max_length=4096)


def build_tiny(config_cls, vision_config_cls, model_cls, image_processor, processor_tokens, family: str,
               scale_factor: int = 2) -> Loaded:
    """A random model of the Idefics3 design (vision 1 layer, language 2 layers, dim 32): 32x32 tiles, pixel shuffle
    by `scale_factor` -> 4 tokens per tile. The image processor resizes to a longest edge of 64 and splits into
    32x32 tiles (up to 2x2) plus the global view."""
    from transformers import Idefics3Processor, LlamaConfig

    bos, eos, pad = processor_tokens
    tok = build_tokenizer(bos, eos, pad)
    processor = Idefics3Processor(image_processor, tok, image_seq_len=4, chat_template=chat_template(bos))
    vision = vision_config_cls(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                               image_size=32, patch_size=16 // scale_factor)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       tie_word_embeddings=False)
    config = config_cls(vision_config=vision, text_config=text, scale_factor=scale_factor, tie_word_embeddings=False,
                        image_token_id=processor.image_token_id, pad_token_id=tok.pad_token_id)
    model = model_cls(config).float()
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids(END)
    return Loaded(model=model, processor=processor, family=family)


def tiny() -> Loaded:
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3VisionConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    # Idefics3-8B-Llama3's special tokens: Llama 3 BOS, EOS and its first reserved token as padding
    tokens = ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>")
    return build_tiny(Idefics3Config, Idefics3VisionConfig, Idefics3ForConditionalGeneration, image_processor,
                      tokens, "idefics3")


FAMILY = ModelFamily(
    name="idefics3",
    description="Idefics3 (HuggingFaceM4/Idefics3-8B-Llama3): SigLIP -> pixel-shuffle connector -> Llama 3; "
    "images split into tiles",
    load=load,
    encode=encode,
    # regex: the language model's linears only (the vision model has q_proj/k_proj/v_proj too)
    lora_targets=(r".*text_model.*\.(" + "|".join(LANGUAGE_LINEARS) + ")",),
    freeze_groups={
        "vision": ("model.vision_model.",),
        "projector": ("model.connector.",),
        "language": ("model.text_model.", "lm_head."),
    },
    tiny=tiny,
    image_tokens=image_tokens,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    projector_modules=("connector",),
    packing=True,  # a Llama-style LM with 1-D positions: samples can share a row
    vision_cache=True,  # takes mm_encoder_outputs: the frozen-vision cache applies
    vision_features="per_sample",  # get_image_features lists one entry per sample (all its images' tiles)
    vision_tower="model.vision_model",
)
