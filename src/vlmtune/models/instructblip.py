"""InstructBLIP family (`InstructBlipForConditionalGeneration`): ViT -> Q-Former that also reads the instruction
(`qformer_input_ids`) -> projection -> Vicuna (Llama) decoder.

Checkpoints: Salesforce/instructblip-vicuna-7b, instructblip-vicuna-13b (decoder-only Vicuna). The Flan-T5 variants
(Salesforce/instructblip-flan-t5-xl, -xxl) are encoder-decoder models (`shift_labels=False`, answer in the decoder),
so they do not go through this encode and are not supported yet.

Prompt format. The checkpoints have no chat template; InstructBLIP (LAVIS `blip2_vicuna_instruct`) was trained on
the instruction as plain text followed by the answer and the tokenizer's end token: "{instruction} {answer}</s>",
the loss on "{answer}</s>". A user turn renders as its text, an assistant turn as " {answer}</s>"; multi-turn
conversations chain the turns and every answer is trained. The instruction is the sample's own text (a VQA
dataset's "Question: {q} Short answer:" template, if wanted, belongs in the data, not here).

Traps handled:
- The processor feeds the Q-Former whatever text it is given: in training that text holds the answer, so the
  Q-Former would read the target. Here the Q-Former reads the user turns only (as in LAVIS, where it gets the
  instruction), the same text in training and generation.
- As for BLIP-2: the processor adds `num_query_tokens` image tokens before BOS and its own `<image>` token (a
  tokenizer with an `image_token` attribute crashes it); exactly one image per sample.
"""

from __future__ import annotations

from vlmtune.data.sample import message_text
from vlmtune.models import blip2
from vlmtune.models.family import Batch, Loaded, ModelFamily, chat_template_export


def render_with(eos: str):
    """InstructBLIP's format with the tokenizer's end token; the generation prompt adds nothing."""

    def render(messages: list[dict], add_generation_prompt: bool = False) -> str:
        text, prompted = "", False
        for m in messages:
            t = message_text(m).strip()
            if m["role"] == "assistant":
                text += (" " if prompted else "") + t + eos
            else:
                text += t
                prompted = bool(t)
        return text

    return render


CHAT_TEMPLATE = ("{%- set ns = namespace(prompted=false) -%}{%- for message in messages -%}" + blip2.TEXT
                 + "{%- if message['role'] == 'assistant' -%}{{- (' ' if ns.prompted else '') + text + eos_token -}}"
                 "{%- else -%}{{- text -}}{%- set ns.prompted = text | length > 0 -%}{%- endif -%}{%- endfor -%}")
"""`render_with(eos)` as a chat template, for the export (the checkpoints have none). No BOS in it, unlike BLIP-2's:
the processor then adds it, as `encode`'s tokenizer does, and the Q-Former reads the instruction without it."""


def qformer_text(messages: list[dict]) -> str:
    """What the Q-Former reads: the user turns (the instructions), never an answer."""
    return " ".join(message_text(m).strip() for m in messages if m["role"] == "user")


def encode(processor, samples, images, mode: str, max_length: int) -> Batch:
    """Samples -> model inputs (see blip2.encode_rendered), with the Q-Former reading the instructions only."""
    render = render_with(processor.tokenizer.eos_token)
    batch = blip2.encode_rendered(processor, samples, images, mode, max_length, render)
    train = mode == "train"
    qtok = processor.qformer_tokenizer
    qtok.padding_side = "right"  # the Q-Former is bidirectional: the side does not matter, the mask does
    q = qtok([qformer_text(s.messages if train else s.prompt_messages) for s in samples], padding=True,
             return_tensors="pt")
    batch.inputs["qformer_input_ids"] = q["input_ids"]
    batch.inputs["qformer_attention_mask"] = q["attention_mask"]
    return batch


def tiny() -> Loaded:
    """A random InstructBLIP (ViT 1 layer dim 32 on 32x32 images, Q-Former 1 layer with 4 queries and its own
    tokenizer, Llama 2 layers dim 32)."""
    from transformers import InstructBlipConfig, InstructBlipProcessor, LlamaConfig
    from transformers import InstructBlipForConditionalGeneration as Model

    vision, qformer, image_processor = blip2.tiny_parts()
    qformer_tokenizer = blip2.build_tokenizer()
    processor = InstructBlipProcessor(image_processor=image_processor, tokenizer=blip2.build_tokenizer(),
                                      qformer_tokenizer=qformer_tokenizer, num_query_tokens=4)
    tok = processor.tokenizer  # now holds the processor's <image> token
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    qformer |= dict(vocab_size=len(qformer_tokenizer), pad_token_id=qformer_tokenizer.pad_token_id)
    config = InstructBlipConfig(vision_config=vision.to_dict(), qformer_config=qformer, text_config=text.to_dict(),
                                num_query_tokens=4,
                                image_token_index=tok.convert_tokens_to_ids(str(processor.image_token)))
    model = Model(config)
    blip2.set_generation_ids(model, tok, tok.eos_token)
    return Loaded(model=model, processor=processor, family="instructblip")


FAMILY = ModelFamily(
    name="instructblip",
    description="InstructBLIP (Salesforce/instructblip-vicuna-*): ViT -> instruction-aware Q-Former -> Vicuna",
    load=lambda cfg: blip2.load(cfg, family="instructblip"),
    encode=encode,
    lora_targets=blip2.LORA_TARGETS,
    freeze_groups=blip2.FREEZE_GROUPS,
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
