"""BLIP-2 family (`Blip2ForConditionalGeneration`): ViT -> Q-Former (learned queries) -> projection -> OPT decoder.

Checkpoints: Salesforce/blip2-opt-2.7b, blip2-opt-6.7b, blip2-opt-6.7b-coco, ... (decoder-only OPT). The Flan-T5
variants (Salesforce/blip2-flan-t5-xl) are encoder-decoder models: they need `shift_labels=False` and the prompt in
the encoder, the answer in the decoder, so they do not go through this encode and are not supported yet.

Prompt format. The checkpoints have no chat template; BLIP-2 was trained (LAVIS `blip2_opt`) on
"Question: {q} Answer: {a}\\n" for VQA and on the bare caption for captioning, with "\\n" as the end token (the
checkpoints' `eos_token_id`, 50118 in OPT's vocabulary). So a user turn renders as "Question: {text} Answer:", a user
turn with no text as nothing (captioning from the image alone), and an assistant turn as " {answer}\\n"; the loss is
on the answer and that "\\n". Multi-turn conversations chain the turns, and every answer is trained. The export
writes the same format as a chat template (`CHAT_TEMPLATE`), which vLLM needs.

Traps handled:
- The processor prepends `num_query_tokens` image tokens to every text (before BOS) and adds the `<image>` token
  to the tokenizer itself; a tokenizer that already has an `image_token` attribute crashes it, so the tiny tokenizer
  has none. The label mask maps the text tokens into that output with one placeholder standing for the queries.
- One image per sample, always: the query tokens come from exactly one image, and forward needs `pixel_values`.
"""

from __future__ import annotations

from tokenizers import processors

from vlmtune.data.sample import message_text
from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.models.family import Batch, Loaded, ModelFamily, chat_template_export, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, assistant_spans, check_length, expanded_labels

END = "\n"
LANGUAGE_LINEARS = ("q_proj", "k_proj", "v_proj", "out_proj", "o_proj", "fc1", "fc2", "gate_proj", "up_proj",
                    "down_proj")
# the language model's linears only (the ViT and Q-Former have fc1/fc2/dense too); OPT and Llama names
LORA_TARGETS = (r"language_model\..*\.(" + "|".join(LANGUAGE_LINEARS) + ")",)
FREEZE_GROUPS = {
    "vision": ("vision_model.",),
    "projector": ("query_tokens", "qformer.", "language_projection."),  # the Q-Former is the bridge
    "language": ("language_model.",),
}
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
CORPUS = [
    "Question: What colour is the top? Answer: red",
    "Question: Describe the image. Answer: a person wearing a red top and blue trousers",
    "what colour is the shirt? a man wearing a blue shirt and white shoes.",
]


TEXT = ("{%- if message['content'] is string -%}{%- set text = message['content'] | trim -%}"
        "{%- else -%}{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
        " | join(' ') | trim -%}{%- endif -%}")
"""Jinja: a message's text as `message_text(m).strip()` has it (its text parts joined by a space)."""
CHAT_TEMPLATE = ("{{- bos_token -}}{%- set ns = namespace(prompted=false) -%}{%- for message in messages -%}" + TEXT
                 + "{%- if message['role'] == 'system' -%}{{- text + ' ' -}}"
                 "{%- elif message['role'] == 'user' -%}{%- if text -%}{{- 'Question: ' + text + ' Answer:' -}}"
                 "{%- endif -%}{%- set ns.prompted = text | length > 0 -%}"
                 "{%- else -%}{{- (' ' if ns.prompted else '') + text + '\n' -}}{%- endif -%}{%- endfor -%}")
"""`render` as a chat template, for the export (vLLM and transformers' apply_chat_template need one, and the
checkpoints have none). It begins with BOS: a rendered chat prompt is tokenized without adding special tokens (vLLM;
transformers when the text starts with BOS), where `encode`'s tokenizer adds it."""


def load(cfg, family: str = "blip2") -> Loaded:
    return load_pretrained(cfg, family, freeze_groups=FREEZE_GROUPS)


def render(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """BLIP-2's VQA format; the "Answer:" is part of the user turn, so the generation prompt adds nothing."""
    text, prompted = "", False
    for m in messages:
        t = message_text(m).strip()
        if m["role"] == "system":
            text += f"{t} "
        elif m["role"] == "user":
            text += f"Question: {t} Answer:" if t else ""
            prompted = bool(t)
        else:
            text += (" " if prompted else "") + t + END
    return text


def encode_rendered(processor, samples, images, mode: str, max_length: int, render) -> Batch:
    """Samples -> inputs for any processor that puts `num_query_tokens` image tokens before the text (BLIP-2,
    InstructBLIP). `render(messages, add_generation_prompt)` writes the conversation in the family's format."""
    tok = processor.tokenizer
    train = mode == "train"
    n_image = processor.num_query_tokens
    for s in samples:
        if len(s.images) != 1:
            raise ValueError(f"sample {s.id!r}: this family takes exactly one image per sample, got {len(s.images)}")
    texts = [render(s.messages if train else s.prompt_messages, not train) for s in samples]
    tokenized = []  # per sample: (text ids, assistant spans)
    for s, text in zip(samples, texts, strict=True):
        if train:
            ids, spans = assistant_spans(lambda ts: tok(ts).input_ids, render, s.messages, s.id)
        else:
            ids, spans = tok(text).input_ids, []
        check_length(s.id, n_image, len(ids), max_length)
        tokenized.append((ids, spans))
    tok.padding_side = "right" if train else "left"
    out = processor(text=texts, images=load_image_list(samples, images), padding=True, return_tensors="pt")
    inputs = dict(out)
    n_target = 0
    if train:
        image_id = tok.convert_tokens_to_ids(str(processor.image_token))
        # the queries sit before everything: one placeholder in front of the text ids stands for them
        rows = [([image_id, *ids], [(start + 1, end + 1) for start, end in spans], [n_image])
                for ids, spans in tokenized]
        labels = expanded_labels(out["input_ids"], out["attention_mask"], image_id, [s.id for s in samples], rows)
        n_target = int((labels != IGNORE_INDEX).sum())
        inputs["labels"] = labels
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=n_target)


def encode(processor, samples, images, mode: str, max_length: int) -> Batch:
    """Samples -> model inputs. "train": the whole conversation, labels on every answer + its "\\n", right padding.
    "generate": the conversation up to "Answer:" of the last turn, left padding. Never truncates."""
    return encode_rendered(processor, samples, images, mode, max_length, render)


def build_tokenizer(corpus: list[str] = CORPUS, vocab_size: int = 320):
    """A small byte-level BPE that prepends BOS (as OPT's and Llama's tokenizers do), with no `image_token`."""
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_bpe(corpus, [PAD, BOS, EOS], vocab_size)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   model_max_length=512)


def tiny_parts(image_size: int = 32):
    """Vision and Q-Former configs and the PIL image processor shared by the tiny BLIP-2 and InstructBLIP."""
    from transformers import Blip2VisionConfig
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    vision = Blip2VisionConfig(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=64,
                               num_hidden_layers=1, num_attention_heads=4)
    qformer = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                   encoder_hidden_size=32, max_position_embeddings=512)
    image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    return vision, qformer, image_processor


def set_generation_ids(model, tokenizer, eos: str) -> None:
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(eos)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id


def tiny() -> Loaded:
    """A random BLIP-2 (ViT 1 layer dim 32 on 32x32 images, Q-Former 1 layer with 4 queries, OPT 2 layers dim 32)."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, OPTConfig

    vision, qformer, image_processor = tiny_parts()
    processor = Blip2Processor(image_processor=image_processor, tokenizer=build_tokenizer(), num_query_tokens=4)
    tok = processor.tokenizer  # now holds the processor's <image> token
    newline = tok.convert_ids_to_tokens(tok(END, add_special_tokens=False).input_ids)[0]
    text = OPTConfig(vocab_size=len(tok), hidden_size=32, word_embed_proj_dim=32, ffn_dim=64, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.convert_tokens_to_ids(newline))
    config = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer, text_config=text.to_dict(),
                         num_query_tokens=4, image_token_index=tok.convert_tokens_to_ids(str(processor.image_token)))
    model = Blip2ForConditionalGeneration(config)
    set_generation_ids(model, tok, newline)  # "\n" ends an answer, as in the real checkpoints
    return Loaded(model=model, processor=processor, family="blip2")


FAMILY = ModelFamily(
    name="blip2",
    description="BLIP-2 (Salesforce/blip2-opt-*): ViT -> Q-Former -> OPT; 'Question: .. Answer:' prompts",
    load=load,
    encode=encode,
    lora_targets=LORA_TARGETS,
    freeze_groups=FREEZE_GROUPS,
    tiny=tiny,
    image_tokens=lambda processor, width, height: processor.num_query_tokens,  # resized to one fixed size
    tasks=("vqa", "caption"),
    text_only=False,
    multi_image=False,
    projector_modules=("qformer", "language_projection"),
    language_model="language_model",
    vision_tower="vision_model",
    export_extras=chat_template_export(CHAT_TEMPLATE),
)
