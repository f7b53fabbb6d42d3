"""GLM-4.1V family (`Glm4vForConditionalGeneration`): dynamic-resolution ViT (2-D rotary + interpolated absolute
positions) -> 2x2 downsampling conv -> patch merger (SwiGLU) -> GLM-4 decoder with multimodal rotary positions
(M-RoPE on half of each head, `partial_rotary_factor` 0.5).

Checkpoints: zai-org/GLM-4.1V-9B-Thinking, zai-org/GLM-4.1V-9B-Base (and fine-tunes). GLM-4.5V (`glm4v_moe`) is
the glm4v_moe family (glm4v_moe.py): the same processor (registered here for its config too), `encode` and tiny
model builder, with its own chat template and mixture-of-experts decoder.

Prompt format: the checkpoint's chat template (CHAT_TEMPLATE, the real file's text), rendered through the processor:

    [gMASK]<sop><|user|>\\n<|begin_of_image|><|image|><|end_of_image|>What colour is the top?<|assistant|>\\nred

The template writes no token after an assistant turn: the next turn's `<|user|>` follows the answer directly. The
generation prompt is `<|assistant|>\\n`, exactly the training prefix of the answer.

The trained target (a decision, for a plain VQA answer with the real template): the answer exactly as the sample
gives it, then the stop token: `<|endoftext|>` (the tokenizer's eos) after the last assistant turn, `<|user|>` (the
token the template writes next) after an earlier one, as GLM's own fine-tuning does it (LLaMA-Factory's `glm4v`
template, `efficient_eos`). Both are in the config's `eos_token_id` ([<|endoftext|>, <|user|>, <|observation|>,
</answer>]), so generation stops at either. The Thinking checkpoint answers as `<think>...</think><answer>...
</answer>`; vlmtune adds no such structure: a plain answer "red" trains the model to answer "red" without
reasoning, and a dataset whose answers carry the tags (ordinary tokens of the tokenizer) trains that format.

Traps handled here:
- Older config layout: the released config.json (transformers 4.53.0dev, as in ../shared/real-models) is flat: the
  text decoder's keys at the top, M-RoPE as `rope_scaling` {mrope_section} plus `partial_rotary_factor`.
  transformers 5.25 loads it without error but ignores those keys: the decoder gets `Glm4vTextConfig`'s defaults,
  which lose `partial_rotary_factor` (the rotary then spans the whole head and `mrope_section` [8, 12, 12] no longer
  sums to its half: the forward fails) and the 65536 positions. `load_config` nests the text keys into
  `text_config`, where transformers standardises them into `rope_parameters`; `load` loads the weights with it.
- `Glm4vProcessor` insists on a video processor, which needs torchvision (absent here): `ImageOnlyProcessor` is
  Glm4vProcessor without it, saving itself as the upstream class (qwen2_vl.py's approach and file writer), so a
  saved processor reloads with plain transformers.
- The image processor budgets pixels for two frames (`smart_resize` multiplies by `temporal_patch_size` even for an
  image): `size.longest_edge` 9,633,792 means at most 4,816,896 pixels per image; `model.max_pixels`
  (data/resize.py `limit_pixels`) takes that into account.
- The template writes an assistant or system turn's `content` as it is: vlmtune's content lists (parts) would come
  out as their Python repr; `render_with` joins their text parts into the string the template expects.
- `mm_token_type_ids` (from the processor) must reach the model for the 3-D positions; `encode` passes every
  processor output on. Multimodal rotary positions: no packing.
"""

from __future__ import annotations

import functools
from pathlib import Path

from tokenizers import Regex, pre_tokenizers

from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.models import qwen2_vl
from vlmtune.models.family import Batch, Loaded, ModelFamily, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, assistant_spans, check_length, expanded_labels

EOS = "<|endoftext|>"
USER = "<|user|>"
SPECIAL_TOKENS = [EOS, "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", USER, "<|assistant|>",
                  "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
                  "<|end_of_video|>", "<|image|>", "<|video|>"]
PLAIN_ADDED = ["<think>", "</think>", "<answer>", "</answer>", "<|begin_of_box|>", "<|end_of_box|>", "<|sep|>"]
"""Added tokens of the checkpoint's tokenizer that are not special (decoded like text)."""
LANGUAGE_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")

# The chat template of zai-org/GLM-4.1V-9B-Thinking (its chat_template.jinja, character for character).
CHAT_TEMPLATE = (
    "[gMASK]<sop>\n"
    "{%- for msg in messages %}\n"
    "    {%- if msg.role == 'system' %}\n"
    "<|system|>\n"
    "{{ msg.content }}\n"
    "    {%- elif msg.role == 'user' %}\n"
    "<|user|>{{ '\\n' }}\n"
    "\n"
    "        {%- if msg.content is string %}\n"
    "{{ msg.content }}\n"
    "        {%- else %}\n"
    "            {%- for item in msg.content %}\n"
    "                {%- if item.type == 'video' or 'video' in item %}\n"
    "<|begin_of_video|><|video|><|end_of_video|>\n"
    "                {%- elif item.type == 'image' or 'image' in item %}\n"
    "<|begin_of_image|><|image|><|end_of_image|>\n"
    "                {%- elif item.type == 'text' %}\n"
    "{{ item.text }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "    {%- elif msg.role == 'assistant' %}\n"
    "        {%- if msg.metadata %}\n"
    "<|assistant|>{{ msg.metadata }}\n"
    "{{ msg.content }}\n"
    "        {%- else %}\n"
    "<|assistant|>\n"
    "{{ msg.content }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{% if add_generation_prompt %}<|assistant|>\n"
    "{% endif %}"
)


def __getattr__(name: str):
    # built on first use (defining it imports transformers); resolving it here lets pickle find it by name
    if name == "ImageOnlyProcessor":
        return image_only_processor()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def image_only_processor() -> type:
    """`ImageOnlyProcessor`, registered with AutoProcessor for the GLM-4.1V and GLM-4.5V configs."""
    from transformers import AutoProcessor, Glm4vConfig, Glm4vMoeConfig, Glm4vProcessor

    class ImageOnlyProcessor(Glm4vProcessor):
        """Glm4vProcessor without its video processor (which needs torchvision); images and text go through the
        very same code. GLM-4.5V's processor is the same class."""

        upstream = "Glm4vProcessor"

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

        def save_pretrained(self, save_directory, *args, **kwargs):
            out = super().save_pretrained(save_directory, *args, **kwargs)
            qwen2_vl.write_upstream_processor_files(Path(save_directory), self.upstream, self.image_processor)
            return out

    ImageOnlyProcessor.__qualname__ = ImageOnlyProcessor.__name__
    for config_cls in (Glm4vConfig, Glm4vMoeConfig):
        AutoProcessor.register(config_cls, ImageOnlyProcessor, exist_ok=True)
    return ImageOnlyProcessor


def load_processor(path, **options):
    """The processor of a GLM-4.1V / GLM-4.5V checkpoint (or a vlmtune checkpoint of one), image half only."""
    return image_only_processor().from_pretrained(path, **options)


OUTER_KEYS = {"architectures", "model_type", "vision_config", "image_token_id", "video_token_id",
              "image_start_token_id", "image_end_token_id", "video_start_token_id", "video_end_token_id",
              "tie_word_embeddings", "torch_dtype", "dtype", "transformers_version"}
"""The keys of the older flat config.json that stay at the top; the rest are the text decoder's."""


def load_config(path, **options):
    """The model config of a checkpoint, the older flat layout (no `text_config`) converted: its text keys nested
    into `text_config` (where transformers turns `rope_scaling`, `rope_theta`, `partial_rotary_factor` into
    `rope_parameters`); a nested config loads as it is."""
    from transformers import AutoConfig, PretrainedConfig

    raw, _ = PretrainedConfig.get_config_dict(path, **options)
    if "text_config" in raw or raw.get("model_type") not in ("glm4v", "glm4v_moe"):
        return AutoConfig.from_pretrained(path, **options)
    outer = {k: v for k, v in raw.items() if k in OUTER_KEYS}
    return AutoConfig.for_model(**outer, text_config={k: v for k, v in raw.items() if k not in OUTER_KEYS})


def load(cfg, family: str = "glm4v") -> Loaded:
    config = load_config(cfg.path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    return load_pretrained(cfg, family, image_only_processor(), freeze_groups=FREEZE_GROUPS, config=config)


def render_with(processor, template_kwargs: dict | None = None):
    """render(messages, add_generation_prompt) through the checkpoint's template, the assistant and system turns'
    content as the string the template expects (it writes a list of parts as its Python repr); `template_kwargs`
    (GLM-4.5V's `enable_thinking`) go to the template."""
    def render(messages, add_generation_prompt):
        messages = [m if m["role"] == "user" or isinstance(m["content"], str) else
                    {**m, "content": "".join(p["text"] for p in m["content"] if p.get("type") == "text")}
                    for m in messages]
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             **(template_kwargs or {}))

    return render


def encode(processor, samples, images, mode: str, max_length: int, template_kwargs: dict | None = None) -> Batch:
    """Samples -> model inputs. "train": the whole conversation + `<|endoftext|>`, labels only on each answer and
    the token after it (`<|user|>`, or that `<|endoftext|>` after the last), right padding. "generate": the
    conversation up to `<|assistant|>\\n`, left padding. A sample longer than `max_length` (image tokens included)
    raises SampleTooLong; nothing is cut. `template_kwargs` go to the chat template (render_with)."""
    tok = processor.tokenizer
    train = mode == "train"
    render = render_with(processor, template_kwargs)
    stops = {tok.convert_tokens_to_ids(USER), tok.convert_tokens_to_ids(EOS)}

    flat = load_image_list(samples, images)
    texts = []
    tokenized = []  # per sample: (ids with one <|image|> per image, assistant spans, image tokens per image)
    for s, imgs in zip(samples, images, strict=True):
        per_image = [qwen2_vl.image_tokens(processor, img.width, img.height) for img in imgs]
        if train:
            unexpanded, spans = assistant_spans(lambda ts: tok(ts).input_ids, render, s.messages, s.id)
            text = render(s.messages, False)
            if s.messages[-1]["role"] == "assistant":  # the template ends the last answer with nothing
                text += EOS
                unexpanded = [*unexpanded, tok.convert_tokens_to_ids(EOS)]
            spans = [(start, _through_stop(unexpanded, end, stops, s.id)) for start, end in spans]
        else:
            text = render(s.prompt_messages, True)
            unexpanded, spans = tok(text).input_ids, []
        check_length(s.id, sum(per_image), len(unexpanded) - len(imgs), max_length, resize=True)
        texts.append(text)
        tokenized.append((unexpanded, spans, per_image))
    out = processor(text=texts, images=flat or None, padding=True, padding_side="right" if train else "left",
                    return_tensors="pt")
    inputs = dict(out)  # input_ids, attention_mask, mm_token_type_ids (+ pixel_values, image_grid_thw)
    n_target = 0
    if train:
        labels = expanded_labels(out["input_ids"], out["attention_mask"], processor.image_token_id,
                                 [s.id for s in samples], tokenized)
        n_target = int((labels != IGNORE_INDEX).sum())
        inputs["labels"] = labels
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=n_target)


def _through_stop(ids: list[int], end: int, stops: set[int], sample_id: str) -> int:
    """The end of an assistant span taken one token further, over the stop token right after the answer."""
    if end >= len(ids) or ids[end] not in stops:
        raise ValueError(f"sample {sample_id!r}: an assistant turn is not followed by {USER} or {EOS} (a turn of "
                         "another role after it?)")
    return end + 1


_CORPUS = [
    "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|><|assistant|>\n<|endoftext|>",
    "What colour is the top? What colour are the trousers? Describe the image.",
    "a person wearing a red top and blue trousers",
    "red blue green yellow white black orange purple pink grey brown",
    "what which who where how many is are the a an of in on at with and or not yes no there this that",
    "shirt dress skirt jacket coat shoes hat shape circle square triangle left right top bottom one two three",
]
# GLM-4's pre-tokenizer split (Qwen2's, with digits in runs of up to three)
_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")


def build_tokenizer(extra_special: tuple[str, ...] = ()):
    """A small byte-level BPE trained in-process with GLM-4's pre-tokenizer, special and added tokens (and
    `extra_special` ones, GLM-4.5V's `/nothink`)."""
    from transformers import PreTrainedTokenizerFast

    special = [*SPECIAL_TOKENS, *extra_special]
    tok = train_byte_bpe(_CORPUS * 20, special, 640, pre_tokenizer=pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]))
    # as in the checkpoint: no BOS (the template writes [gMASK]<sop>), eos and pad <|endoftext|>
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS,
                                  extra_special_tokens=[t for t in special if t != EOS], model_max_length=4096)
    out.add_tokens(PLAIN_ADDED)
    return out


def build_processor(chat_template: str = CHAT_TEMPLATE, extra_special: tuple[str, ...] = ()):
    """Tokenizer + PIL image processor: 8x8 patches merged 2x2, images resized to 32x32 .. 64x64 pixels (the
    size limits count two frames)."""
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    image_processor = Glm4vImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2,
                                             size={"shortest_edge": 2 * 32 * 32, "longest_edge": 2 * 64 * 64})
    return image_only_processor()(image_processor, build_tokenizer(extra_special), chat_template=chat_template)


def build_tiny(config_cls, model_cls, text: dict, family: str, processor=None) -> Loaded:
    """A random model: a 2-layer ViT dim 32 and `text` (the decoder's extra keys) around a 2-layer GLM decoder,
    dim 32, 2 heads of 16 (the rotary on half of each, M-RoPE sections (t, h, w) summing to 4), token ids and stop
    tokens as in the checkpoint. `processor`: build_processor()'s by default."""
    processor = processor or build_processor()
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids
    eos = ids(EOS)
    stops = [eos, ids(USER), ids("<|observation|>"), ids("</answer>")]  # the checkpoint's eos_token_id
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=1024, eos_token_id=stops, pad_token_id=eos,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0,
                                 "partial_rotary_factor": 0.5}) | text
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=8,
                  image_size=32, spatial_merge_size=2, temporal_patch_size=2)
    config = config_cls(text_config=text, vision_config=vision, tie_word_embeddings=False,
                        image_token_id=ids("<|image|>"), video_token_id=ids("<|video|>"),
                        image_start_token_id=ids("<|begin_of_image|>"), image_end_token_id=ids("<|end_of_image|>"),
                        video_start_token_id=ids("<|begin_of_video|>"), video_end_token_id=ids("<|end_of_video|>"))
    model = model_cls(config).float()
    model.generation_config.pad_token_id = eos
    model.generation_config.eos_token_id = stops
    return Loaded(model=model, processor=processor, family=family)


def tiny() -> Loaded:
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    return build_tiny(Glm4vConfig, Glm4vForConditionalGeneration, {}, "glm4v")


FREEZE_GROUPS = {
    "vision": ("model.visual.embeddings.", "model.visual.patch_embed.", "model.visual.blocks.",
               "model.visual.post_conv_layernorm.", "model.visual.post_layernorm."),
    "projector": ("model.visual.downsample.", "model.visual.merger."),
    "language": ("model.language_model.", "lm_head."),
}

FAMILY = ModelFamily(
    name="glm4v",
    description="GLM-4.1V (zai-org/GLM-4.1V-9B-Thinking): dynamic-resolution ViT -> downsample + patch merger -> "
                "GLM-4 with M-RoPE",
    load=load,
    encode=encode,
    # regex: the language model's linears only (the vision MLPs and the merger are gate/up/down_proj too)
    lora_targets=(r".*language_model.*\.(" + "|".join(LANGUAGE_LINEARS) + ")",),
    freeze_groups=FREEZE_GROUPS,
    tiny=tiny,
    image_tokens=qwen2_vl.image_tokens,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    projector_modules=("downsample", "merger"),
    vision_cache=True,  # takes mm_encoder_outputs: the frozen-vision cache applies
    packing=True,  # with each sample's M-RoPE positions, as Qwen2-VL (qwen2_vl.pack_inputs)
    pack_inputs=qwen2_vl.pack_inputs,
    processor_loader=load_processor,
    language_model="model.language_model",
    vision_tower="model.visual",
)
