"""Mistral 3 family (`Mistral3ForConditionalGeneration`): Pixtral ViT (any resolution, 2D RoPE) -> RMSNorm + 2x2 patch
merger + MLP -> Mistral decoder.

Checkpoints: mistralai/Mistral-Small-3.1-24B-Instruct-2503, mistralai/Mistral-Small-3.2-24B-Instruct-2506 (and their
-Base / fine-tunes). 24B: the recipe is QLoRA (configs/mistral3/24b_qlora_vqa.yaml).

Prompt format: the checkpoints' chat template (CHAT_TEMPLATE, Mistral-Small-3.1-24B-Instruct-2503's):

    <s>[SYSTEM_PROMPT]{system}[/SYSTEM_PROMPT][INST][IMG]What colour is the top?[/INST]red</s>

There is no generation prompt: the prompt ends at `[/INST]`, which is exactly the training prefix of the answer. The
trained tokens are the answer and `</s>` (the checkpoints' eos, what generation stops at).

Traps handled here:
- The default system prompt: a conversation without a system turn gets the template's long default one ("You are
  Mistral Small 3, ... The current date is <today> ..."), in training and generation alike, as the checkpoints
  were tuned. It costs ~100+ tokens per sample and its date changes every day (renders of one sample on two days
  differ); a dataset with its own system turn replaces it.
- The template writes `<s>` itself: nothing is tokenized with special tokens added (the tokenizer would add a second
  `<s>`, as the checkpoints' does), neither here nor by the processor.
- Variable resolution: each image keeps its aspect ratio, its longest side at most `size.longest_edge` (1540), both
  sides rounded up to whole merged tokens (patch 14 x spatial merge 2 = 28 px). It becomes rows x cols `[IMG]`, an
  `[IMG_BREAK]` after each row but the last, and `[IMG_END]` after the last: `image_tokens` counts all of these
  positions (rows x (cols + 1)), and `processor.image_token_ids` names the three ids. Only the `[IMG]` positions take
  image features.
- `PixtralProcessor` cannot even be imported without torchvision (its module imports the torchvision image processor):
  `ImageOnlyProcessor` is its image/text code on the PIL image processor (`PixtralImageProcessorPil`), saved under
  the upstream name `PixtralProcessor` so the files load with plain transformers (with torchvision).
- The labels: the `[IMG]` runs are not one repeated id, so `encode` tokenizes the text with each image's exact
  expansion and checks it against the processor's ids token for token (labels.py with no placeholder id).
- transformers 5.25's `get_image_features` fails on a batch whose images make ONE merged token in all (an image of at
  most 28 x 28 px alone: `squeeze(0)` drops the token axis): `encode` refuses it with a clear error.
- A very thin image scaled down (its long side to `longest_edge`, e.g. under a low `model.max_pixels`) can round its
  short side to 0 px, and PixtralImageProcessor then fails deep inside its resize: `encode` names the sample first.
- Tokenizer: Tekken (tiktoken-style byte-level BPE, 131k tokens, ids 0-999 control tokens: `<unk>` 0, `<s>` 1, `</s>` 2,
  `[INST]` 3, `[/INST]` 4, `[IMG]` 10, `<pad>` 11, `[IMG_BREAK]` 12, `[IMG_END]` 13, `[SYSTEM_PROMPT]` 17, ...). The
  tiny model trains a small byte-level BPE in-process with the same control tokens at the same ids.

No real files of these checkpoints are in ../shared/real-models: the tiny model carries the real chat template and
special tokens; the vision settings (patch 14, merge 2, longest edge 1540) are the config defaults of transformers.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from tokenizers import Regex, pre_tokenizers, processors

from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.models.family import Batch, Loaded, ModelFamily, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, assistant_spans, check_length, expanded_labels
from vlmtune.models.qwen2_vl import LANGUAGE_LINEARS, write_upstream_processor_files

UPSTREAM = "PixtralProcessor"
IMG, IMG_BREAK, IMG_END = "[IMG]", "[IMG_BREAK]", "[IMG_END]"

# The chat template of mistralai/Mistral-Small-3.1-24B-Instruct-2503 (its default system prompt included)
_DEFAULT_SYSTEM = (  # jinja source: a string literal with its \\n and \\" escapes
    "You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI, a French startup headquartered in "
    "Paris.\\nYour knowledge base was last updated on 2023-10-01. The current date is \" + today + \".\\n\\n"
    "When you're not sure about some information, you say that you don't have the information and don't make up "
    "anything.\\nIf "
    "the user's question is not clear, ambiguous, or does not provide enough context for you to accurately answer the "
    "question, you do not try to answer it right away and you rather ask the user to clarify their request (e.g. "
    "\\\"What are some good restaurants around me?\\\" => \\\"Where are you?\\\" or "
    "\\\"When is the next flight to Tokyo\\\" => \\\"Where do you travel from?\\\")"
)
CHAT_TEMPLATE = ('{%- set today = strftime_now("%Y-%m-%d") %}\n{%- set default_system_message = "' + _DEFAULT_SYSTEM
                 + '" %}\n') + """
{{- bos_token }}

{%- if messages[0]['role'] == 'system' %}
    {%- if messages[0]['content'] is string %}
        {%- set system_message = messages[0]['content'] %}
    {%- else %}
        {%- set system_message = messages[0]['content'][0]['text'] %}
    {%- endif %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = default_system_message %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}

{%- for message in loop_messages %}
    {%- if message['role'] == 'user' %}
        {%- if message['content'] is string %}
            {{- '[INST]' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST]' }}
            {%- for block in message['content'] %}
                {%- if block['type'] == 'text' %}
                    {{- block['text'] }}
                {%- elif block['type'] in ['image', 'image_url'] %}
                    {{- '[IMG]' }}
                {%- else %}
                    {{- raise_exception('Only text and image blocks are supported in message content!') }}
                {%- endif %}
            {%- endfor %}
            {{- '[/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'system' %}
        {%- if message['content'] is string %}
            {{- '[SYSTEM_PROMPT]' + message['content'] + '[/SYSTEM_PROMPT]' }}
        {%- else %}
            {{- '[SYSTEM_PROMPT]' + message['content'][0]['text'] + '[/SYSTEM_PROMPT]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {%- if message['content'] is string %}
            {{- message['content'] + eos_token }}
        {%- else %}
            {{- message['content'][0]['text'] + eos_token }}
        {%- endif %}
    {%- else %}
        {{- raise_exception('Only user, system and assistant roles are supported!') }}
    {%- endif %}
{%- endfor %}"""


def __getattr__(name: str):
    # ImageOnlyProcessor is built on first use (defining it imports transformers); resolving it here lets pickle
    # find it by name, as in qwen2_vl.py
    if name == "ImageOnlyProcessor":
        return image_only_processor()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def image_only_processor() -> type:
    """`ImageOnlyProcessor`: PixtralProcessor's image and text code (transformers 5.25) on the PIL image processor."""
    from transformers import ProcessorMixin

    class ImageOnlyProcessor(ProcessorMixin):
        """PixtralProcessor without torchvision: each `[IMG]` becomes rows of `[IMG]` x cols + `[IMG_BREAK]`, the
        last one `[IMG_END]`, for the image's size after the resize to whole merged patches."""

        text_kwargs = {"return_tensors": "pt"}
        images_kwargs = {"return_tensors": "pt"}

        def __init__(self, image_processor=None, tokenizer=None, patch_size: int = 16, spatial_merge_size: int = 1,
                     chat_template=None, image_token=IMG, image_break_token=IMG_BREAK, image_end_token=IMG_END,
                     **kwargs):
            super().__init__(image_processor, tokenizer, chat_template=chat_template)
            self.patch_size, self.spatial_merge_size = patch_size, spatial_merge_size
            self.image_token, self.image_break_token, self.image_end_token = image_token, image_break_token, \
                image_end_token
            ids = tokenizer.convert_tokens_to_ids
            self.image_token_id, self.image_break_token_id, self.image_end_token_id = (
                ids(image_token), ids(image_break_token), ids(image_end_token))

        @property
        def image_token_ids(self) -> list[int]:
            return [self.image_token_id, self.image_break_token_id, self.image_end_token_id]

        def _process_images(self, images, **images_kwargs):
            images_kwargs["patch_size"] = self.patch_size * self.spatial_merge_size
            return super()._process_images(images, **images_kwargs)

        def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
            unit = self.patch_size * self.spatial_merge_size
            height, width = image_inputs["image_sizes"][image_idx]
            return expansion(int(height) // unit, int(width) // unit)

        @property
        def model_input_names(self):
            return self.tokenizer.model_input_names + self.image_processor.model_input_names + ["image_sizes"]

        def save_pretrained(self, save_directory, *args, **kwargs):
            out = super().save_pretrained(save_directory, *args, **kwargs)
            write_upstream_processor_files(Path(save_directory), UPSTREAM, self.image_processor)
            return out

    ImageOnlyProcessor.__qualname__ = ImageOnlyProcessor.__name__
    return ImageOnlyProcessor


def expansion(rows: int, cols: int) -> str:
    """The text one image of rows x cols merged patches becomes (PixtralProcessor.replace_image_token)."""
    return ((IMG * cols + IMG_BREAK) * rows)[: -len(IMG_BREAK)] + IMG_END


def load_processor(path, **options):
    """The processor of a Mistral 3 checkpoint (or a vlmtune checkpoint of one), without torchvision."""
    return image_only_processor().from_pretrained(path, **options)


def load(cfg) -> Loaded:
    return load_pretrained(cfg, "mistral3", image_only_processor(), freeze_groups=FAMILY.freeze_groups)


def longest_edge(processor) -> int:
    size = processor.image_processor.size
    return size["longest_edge"] if isinstance(size, dict) else size.longest_edge


def grid(processor, width: int, height: int) -> tuple[int, int]:
    """(rows, cols) of merged patches of one image: PixtralImageProcessor's resize (longest side at most
    `size.longest_edge`, never enlarged, both sides rounded up to whole merged patches)."""
    from transformers.models.pixtral.image_processing_pil_pixtral import get_resize_output_image_size

    unit = processor.patch_size * processor.spatial_merge_size
    longest = longest_edge(processor)
    shape_only = np.broadcast_to(np.zeros((1, 1, 3), dtype=np.uint8), (height, width, 3))  # no pixels allocated
    h, w = get_resize_output_image_size(shape_only, size=(longest, longest), patch_size=(unit, unit),
                                        input_data_format="channels_last")
    return h // unit, w // unit


def image_tokens(processor, width: int, height: int) -> int:
    """Sequence positions of one image: rows x cols `[IMG]`, rows - 1 `[IMG_BREAK]`, one `[IMG_END]`."""
    rows, cols = grid(processor, width, height)
    return rows * (cols + 1)


def encode(processor, samples, images, mode: str, max_length: int) -> Batch:
    """Samples -> model inputs. "train": the whole conversation, labels only on the answers + `</s>`, right padding.
    "generate": the conversation up to the last `[/INST]`, left padding. Too long (image tokens included):
    SampleTooLong."""
    tok = processor.tokenizer
    train = mode == "train"

    def render(messages, add_generation_prompt):
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    texts = [render(s.messages if train else s.prompt_messages, not train) for s in samples]
    tokenized = []  # per sample: (ids with every image expanded, assistant spans, no placeholder counts)
    for s, text, imgs in zip(samples, texts, images, strict=True):
        grids = [grid(processor, *img.size) for img in imgs]
        if any(0 in g for g in grids):
            w, h = imgs[[0 in g for g in grids].index(True)].size
            raise ValueError(f"sample {s.id!r}: a {w}x{h} image has no pixel left on its short side once its long "
                             f"side is resized to {longest_edge(processor)} px; crop it")
        parts = [expansion(*g) for g in grids]

        def tokenize(ts, parts=parts):  # each [IMG] of the template written as the processor expands it
            return tok([_expanded(t, parts) for t in ts], add_special_tokens=False).input_ids

        if train:
            ids, spans = assistant_spans(tokenize, render, s.messages, s.id)
        else:
            ids, spans = tokenize([text])[0], []
        n_image = sum(image_tokens(processor, *img.size) for img in imgs)
        check_length(s.id, n_image, len(ids) - n_image, max_length, resize=True)
        tokenized.append((ids, spans, []))
    has_images = bool(load_image_list(samples, images))
    if has_images and sum(r * c for r, c in (grid(processor, *im.size) for imgs in images for im in imgs)) == 1:
        raise ValueError(f"sample {samples[0].id!r}: its image is one image token, which transformers' Mistral3 cannot "
                         "take alone in a batch (get_image_features squeezes it away); use a larger image")
    out = processor(text=texts, images=[im for imgs in images for im in imgs] if has_images else None,
                    padding=True, padding_side="right" if train else "left", add_special_tokens=False,
                    return_tensors="pt")
    inputs = dict(out)  # input_ids, attention_mask (+ pixel_values, image_sizes)
    n_target = 0
    if train:  # no placeholder id (-1): the expanded ids must equal the processor's token for token
        labels = expanded_labels(out["input_ids"], out["attention_mask"], -1, [s.id for s in samples], tokenized)
        n_target = int((labels != IGNORE_INDEX).sum())
        inputs["labels"] = labels
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=n_target)


def _expanded(text: str, parts: list[str]) -> str:
    """`text` with its k-th `[IMG]` replaced by `parts[k]` (a prefix of a conversation holds its first images)."""
    pieces = text.split(IMG)
    if len(pieces) - 1 > len(parts):
        raise ValueError(f"{len(pieces) - 1} {IMG} in the text for {len(parts)} image(s)")
    return pieces[0] + "".join(parts[k] + piece for k, piece in enumerate(pieces[1:]))


CONTROL = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
           "[/TOOL_RESULTS]", "[TOOL_CALLS]", IMG, "<pad>", IMG_BREAK, IMG_END, "[PREFIX]", "[MIDDLE]", "[SUFFIX]",
           "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]"]
"""Tekken's first control tokens, at their ids in the checkpoints (0-19)."""
# Tekken's pre-tokenizer split (tiktoken style: words with their leading space, single digits, newlines apart)
_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
          r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
_CORPUS = [
    # the default system prompt (as rendered), so that it takes few tokens as with Tekken (~110 there)
    "You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI, a French startup headquartered in "
    "Paris.\nYour knowledge base was last updated on 2023-10-01. The current date is 2026-12-07.\n\nWhen you're not "
    "sure about some information, you say that you don't have the information and don't make up anything.\nIf the "
    "user's question is not clear, ambiguous, or does not provide enough context for you to accurately answer the "
    "question, you do not try to answer it right away and you rather ask the user to clarify their request (e.g. "
    '"What are some good restaurants around me?" => "Where are you?" or "When is the next flight to Tokyo" => "Where '
    'do you travel from?")',
    "What colour is the top? What colour are the trousers? Describe the image. a person wearing a red top and blue "
    "trousers red blue green yellow white black what which how many is are the a of in on with and yes no",
]


def build_tokenizer():
    """A small byte-level BPE trained in-process with Tekken's split and control tokens (bos `<s>`, which the
    tokenizer adds as the checkpoints' does, eos `</s>`, pad `<pad>`)."""
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_bpe(_CORPUS * 20, CONTROL, 1000, pre_tokenizer=pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", extra_special_tokens=CONTROL[3:], model_max_length=4096)


PATCH, MERGE, LONGEST = 8, 2, 64


def build_processor():
    """Tokenizer + PIL Pixtral image processor: 8 px patches merged 2x2, the longest side at most 64 px."""
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    image_processor = PixtralImageProcessorPil(size={"longest_edge": LONGEST}, patch_size={"height": PATCH,
                                                                                          "width": PATCH})
    return image_only_processor()(image_processor=image_processor, tokenizer=build_tokenizer(), patch_size=PATCH,
                                  spatial_merge_size=MERGE, chat_template=CHAT_TEMPLATE)


def tiny() -> Loaded:
    """A random Mistral 3: Pixtral 1 layer dim 32 (8 px patches, up to 64 px), 2x2 patch merger, Mistral 2 layers
    dim 32; the real chat template and control token ids."""
    import torch
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    processor = build_processor()
    tok = processor.tokenizer
    vision = dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=4, head_dim=8, image_size=LONGEST, patch_size=PATCH)
    text = dict(model_type="mistral", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=4096,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                sliding_window=None, tie_word_embeddings=False)
    config = Mistral3Config(vision_config=vision, text_config=text, image_token_index=processor.image_token_id,
                            spatial_merge_size=MERGE, vision_feature_layer=-1, tie_word_embeddings=False)
    model = Mistral3ForConditionalGeneration(config).to(torch.float32)
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return Loaded(model=model, processor=processor, family="mistral3")


FAMILY = ModelFamily(
    name="mistral3",
    description="Mistral 3 (mistralai/Mistral-Small-3.1-24B-Instruct-2503, 3.2-2506): any-resolution Pixtral -> 2x2 "
    "patch merger -> Mistral",
    load=load,
    encode=encode,
    # regex: the language model's linears only (Pixtral has q_proj/k_proj/v_proj/o_proj too)
    lora_targets=(r".*language_model.*\.(" + "|".join(LANGUAGE_LINEARS) + ")",),
    freeze_groups={
        "vision": ("model.vision_tower.",),
        "projector": ("model.multi_modal_projector.",),
        "language": ("model.language_model.", "lm_head."),
    },
    tiny=tiny,
    image_tokens=image_tokens,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    projector_modules=("multi_modal_projector",),
    processor_loader=load_processor,
    packing=True,  # a Mistral LM with 1-D positions: samples can share a row
    vision_cache=True,  # takes mm_encoder_outputs: the frozen-vision cache applies
    language_model="model.language_model",
    vision_tower="model.vision_tower",
)
