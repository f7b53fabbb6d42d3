"""LLaVA-1.5 family (`LlavaForConditionalGeneration`): CLIP/SigLIP vision tower -> MLP projector -> Llama/Mistral/...

Every image is one `<image>` placeholder in the chat template, which the processor expands into a fixed number
of feature tokens ((crop/patch)^2, CLS dropped). The built-in model is an ordinary member of this family.
"""

from __future__ import annotations

from vlmtune.config import BuiltinCfg
from vlmtune.models.builtin import build_builtin
from vlmtune.models.family import Batch, Loaded, ModelFamily, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, assistant_spans, check_length, expanded_labels

LANGUAGE_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GPT2_LINEARS = ("c_attn", "c_proj", "c_fc")
"""A GPT-2-style language model's projections (ruGPT-3 joined to a vision tower by `vlmtune compose`)."""


# LLaVA-1.5's own training format (its "vicuna_v1" conversation): "USER: <image>\nq ASSISTANT: a</s>USER: ...". The hub
# checkpoints' chat template ends an assistant turn with a space instead of </s>, so a model trained on it never learns
# to stop (and "a " tokenises differently before "USER"). vlmtune renders llava-1.5-style templates with this one: the
# same text, each answer ending in the eos token (not in the generation span: the answer is).
VICUNA_V1 = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def load(cfg) -> Loaded:
    return load_pretrained(cfg, "llava", freeze_groups=FAMILY.freeze_groups)


def chat_template(processor) -> str | None:
    """The template `encode` renders with: the processor's own when it ends assistant turns with the eos token (the
    built-in model's, a composed model's); VICUNA_V1 for the hub's LLaVA-1.5 template, which does not; any other
    template without the end token is refused (the model would never learn to stop)."""
    cached = getattr(processor, "_vlmtune_chat_template", False)
    if cached is not False:
        return cached
    tok = processor.tokenizer
    probe = [{"role": "user", "content": [{"type": "text", "text": "q"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]
    text = processor.apply_chat_template(probe, tokenize=False)
    template = "error"
    if tok.eos_token and tok.eos_token in text[text.rindex("a"):]:
        template = None
    elif "ASSISTANT: " in text and "ASSISTANT:" in processor.apply_chat_template(probe[:1], tokenize=False,
                                                                                 add_generation_prompt=True):
        template = VICUNA_V1
    if template != "error":
        processor._vlmtune_chat_template = template
        return template
    raise ValueError(f"the chat template ends an assistant turn without the end token {tok.eos_token!r} (it renders "
                     f"{text!r}); the model would never learn to stop: give the processor a chat_template that does")


def image_token_count(processor) -> int:
    """Feature tokens per image, as LlavaProcessor computes them."""
    # CLIP processors center-crop (crop_size); SigLIP ones resize to a fixed size (a composed SigLIP model)
    crop = getattr(processor.image_processor, "crop_size", None) or processor.image_processor.size
    n = (crop["height"] // processor.patch_size) * (crop["width"] // processor.patch_size)
    n += processor.num_additional_image_tokens
    if processor.vision_feature_select_strategy == "default":
        n -= 1
    return n


def encode(processor, samples, images, mode: str, max_length: int) -> Batch:
    """Samples -> model inputs. "train": the whole conversation, labels only on assistant turns (+ end token),
    right padding. "generate": the conversation up to the last assistant turn plus the generation prompt, left
    padding. A sample longer than `max_length` (image tokens included) raises SampleTooLong; nothing is cut."""
    tok = processor.tokenizer
    template = chat_template(processor)

    def render(messages, add_generation_prompt):
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             chat_template=template)

    train = mode == "train"
    texts = [render(s.messages if train else s.prompt_messages, not train) for s in samples]
    per_image = image_token_count(processor)
    tokenized = []  # per sample: (ids with one placeholder per image, assistant spans, tokens per image)
    for s, text in zip(samples, texts, strict=True):
        if train:
            unexpanded, spans = assistant_spans(lambda ts: tok(ts).input_ids, render, s.messages, s.id)
        else:
            unexpanded, spans = tok(text).input_ids, []
        check_length(s.id, per_image * len(s.images), len(unexpanded) - len(s.images), max_length)
        tokenized.append((unexpanded, spans, [per_image] * len(s.images)))
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
    """A random 2-layer LLaVA (ViT dim 32 on 32x32 images, Llama dim 32) with the built-in offline processor."""
    return build_builtin(BuiltinCfg(image_size=32, patch_size=8, vision_dim=32, vision_layers=2, text_dim=32,
                                    text_layers=2, heads=4, vocab_size=640))


FAMILY = ModelFamily(
    name="llava",
    description="LLaVA-1.5 (llava-hf/*): CLIP/SigLIP -> MLP projector -> Llama-style decoder; also the built-in model",
    load=load,
    encode=encode,
    # regex: the language model's linears only (the CLIP tower has q_proj/k_proj/v_proj too)
    lora_targets=(r".*language_model.*\.(" + "|".join(LANGUAGE_LINEARS + GPT2_LINEARS) + ")",),
    freeze_groups={
        "vision": ("model.vision_tower.",),
        "projector": ("model.multi_modal_projector.",),
        "language": ("model.language_model.", "lm_head."),
    },
    tiny=tiny,
    image_tokens=lambda processor, width, height: image_token_count(processor),  # resized to one fixed size
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    projector_modules=("multi_modal_projector",),
    packing=True,  # a Llama-style LM with 1-D positions: samples can share a row
    vision_cache=True,  # takes mm_encoder_outputs: the frozen-vision cache applies
    language_model="model.language_model",
    vision_tower="model.vision_tower",
)
