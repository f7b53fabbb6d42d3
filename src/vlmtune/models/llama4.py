"""Llama 4 family (`Llama4ForConditionalGeneration`): a 2-D-RoPE ViT on 336x336 tiles -> pixel-shuffle MLP ->
linear projector -> Llama 4 mixture-of-experts decoder (chunked-attention RoPE layers, NoPE full-attention layers).

Checkpoints: meta-llama/Llama-4-Scout-17B-16E-Instruct (109B parameters, 16 experts, every layer MoE),
meta-llama/Llama-4-Maverick-17B-128E-Instruct (400B, 128 experts on every other layer).

Prompt format: the checkpoints' chat template (transformers' `Llama4Processor` default, copied below):

    <|begin_of_text|><|header_start|>user<|header_end|>\\n\\n<|image|>What colour is the top?<|eot|>
    <|header_start|>assistant<|header_end|>\\n\\nred<|eot|>

The trained tokens are the answer and `<|eot|>` (one of the checkpoints' eos ids); nothing follows it.

Traps handled here:
- transformers has only a torchvision image processor for Llama 4 (`Llama4ImageProcessor`), and torchvision is absent
  here: `image_processor_class()` is a PIL/NumPy port (same best-fit canvas, aspect-kept resize never upscaling past
  one tile, zero padding bottom/right, row-major tiles, a global 336x336 thumbnail after them when there are several;
  rescale and normalise in bfloat16 as upstream does). Its resizes are PIL's, so pixel values differ from torchvision's
  by rounding only (tests/golden/make_llama4_golden.py, tests/models/test_llama4.py). It saves as
  `Llama4ImageProcessor`, which plain transformers reloads where torchvision is installed.
- The processor returns bfloat16 `pixel_values` (upstream normalises in bf16): `encode` hands them on as float32 (the
  same values), so a float32 model does not meet bf16 inputs; `Batch.to` casts them to the model's dtype.
- `processor.image_token_id` is `<|image|>` (one per image, a text token), not the placeholder the features replace:
  that is `<|patch|>` (`config.image_token_index`). Each image becomes `<|image_start|>`, then for a tiled image each
  tile's `<|patch|>` run with `<|tile_x_separator|>` between columns and `<|tile_y_separator|>` after each row, then
  `<|image|>` + the global tile's (or the one tile's) run, then `<|image_end|>`. `image_tokens` counts the `<|patch|>`
  tokens (`processor.image_token_ids`, set here); the markers are text. The label mapping compares with the fully
  expanded text.
- The experts are fused 3-D parameters (`Llama4TextExperts.gate_up_proj` / `down_proj`, not `nn.Linear`): LoRA cannot
  adapt them (nor can bitsandbytes quantise them: under QLoRA they stay in bf16). LoRA targets the attention linears
  (q/k/v/o_proj), the shared expert's and the dense layers' MLP linears (gate/up/down_proj); the router is left alone
  (adapting it reshuffles which expert sees each token). The vision tower has q/k/v/o_proj too: language-model regex.
- `get_image_features` lists one entry per tile, not per image: no frozen-vision cache.
- Chunked attention (the RoPE layers attend within chunks of 8192 tokens in the checkpoints): transformers cuts the
  chunks per sample, from its first real token, so left padding (generation) and a packed row (`train.packing`, the
  generic one: per-sample positions, no mask) leave each sample's logits unchanged. The tiny model's chunks are 16
  tokens, shorter than its samples, so the contract and packing tests run through chunk boundaries
  (tests/models/test_llama4.py checks the chunks are in effect).
- vLLM serves an export with the same greedy answers (tests/serve/test_vllm_parity.py) when its config says which
  layers are MoE by `interleave_moe_layer_step` (vLLM ignores `moe_layers`; the tiny model's 2 gives Maverick's
  dense/MoE alternation) and its chunk size is whole KV blocks (vLLM asserts a multiple of 128: the parity test's
  model has 128-token chunks).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from tokenizers import Regex, pre_tokenizers

from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.models.family import Batch, Loaded, ModelFamily, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, answer_spans, check_length, expanded_labels

LANGUAGE_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
END = "<|eot|>"
PATCH = "<|patch|>"
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad|>", "<|header_start|>",
                  "<|header_end|>", "<|eom|>", END, "<|python_start|>", "<|python_end|>", "<|image_start|>",
                  "<|image_end|>", "<|tile_x_separator|>", "<|tile_y_separator|>", "<|image|>", PATCH]

# The chat template of meta-llama/Llama-4-Scout-17B-16E-Instruct (= transformers' Llama4Processor default).
CHAT_TEMPLATE = (
    "{{- bos_token }}\n{%- if custom_tools is defined %}\n    {%- set tools = custom_tools %}\n{%- endif %}\n{%"
    "- if not tools_in_user_message is defined %}\n    {%- set tools_in_user_message = true %}\n{%- endif %}\n{"
    "%- if not date_string is defined %}\n    {%- if strftime_now is defined %}\n        {%- set date_string = "
    "strftime_now(\"%d %b %Y\") %}\n    {%- else %}\n        {%- set date_string = \"26 Jul 2024\" %}\n    {%- "
    "endif %}\n{%- endif %}\n{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n\n{#- T"
    "his block extracts the system message, so we can slot it into the right place. #}\n{%- if messages[0]['rol"
    "e'] == 'system' %}    \n    {%- if messages[0]['content'] is string %}\n        {%- set system_message = m"
    "essages[0]['content']|trim %}\n    {%- else %}\n        {#- FIXME: The processor requires an array, always"
    ". #}\n        {%- set system_message = messages[0]['content'][0]['text']|trim %}\n    {%- endif %}\n    {%"
    "- set messages = messages[1:] %}\n    {%- set user_supplied_system_message = true %}\n{%- else %}\n    {%-"
    " set system_message = \"\" %}\n    {%- set user_supplied_system_message = false %}\n{%- endif %}\n\n{#- Sy"
    "stem message if the user supplied one #}\n{%- if user_supplied_system_message %}\n    {{- \"<|header_start"
    "|>system<|header_end|>\n\n\" }}\n    {%- if tools is not none %}\n        {{- \"Environment: ipython\n\" }"
    "}\n    {%- endif %}\n    {%- if tools is not none and not tools_in_user_message %}\n        {{- \"You have"
    " access to the following functions. To call a function, please respond with JSON for a function call.\" }}"
    "\n        {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name"
    " and its value}.' }}\n        {{- \"Do not use variables.\n\n\" }}\n        {%- for t in tools %}\n       "
    "     {{- t | tojson(indent=4) }}\n            {{- \"\n\n\" }}\n        {%- endfor %}\n    {%- endif %}\n  "
    "  {{- system_message }}\n    {{- \"<|eot|>\" }}\n{%- endif %}\n\n{#- Custom tools are passed in a user mes"
    "sage with some extra guidance #}\n{%- if tools_in_user_message and not tools is none %}\n    {#- Extract t"
    "he first user message so we can plug it in here #}\n    {%- if messages | length != 0 %}\n        {%- set "
    "first_user_message = messages[0]['content']|trim %}\n        {%- set messages = messages[1:] %}\n    {%- e"
    "lse %}\n        {{- raise_exception(\"Cannot put tools in the first user message when there's no first use"
    "r message!\") }}\n{%- endif %}\n    {{- '<|header_start|>user<|header_end|>\n\n' -}}\n    {{- \"Given the "
    "following functions, please respond with a JSON for a function call \" }}\n    {{- \"with its proper argum"
    "ents that best answers the given prompt.\n\n\" }}\n    {{- 'Respond in the format {\"name\": function name"
    ", \"parameters\": dictionary of argument name and its value}.' }}\n    {{- \"Do not use variables.\n\n\" }"
    "}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\n\n\" }}\n    {%- endfor"
    " %}\n    {{- first_user_message + \"<|eot|>\"}}\n{%- endif %}\n\n{%- for message in messages %}\n    {%- i"
    "f not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n    {{- '<|head"
    "er_start|>' + message['role'] + '<|header_end|>\n\n' }}\n        {%- if message['content'] is string %}\n "
    "           {{- message['content'] }}\n        {%- else %}\n            {%- for content in message['content"
    "'] %}\n                {%- if content['type'] == 'image' %}\n                    {{- '<|image|>' }}\n     "
    "           {%- elif content['type'] == 'text' %}\n                    {{- content['text'] }}\n            "
    "    {%- endif %}\n            {%- endfor %}\n        {%- endif %}\n        {{- \"<|eot|>\" }}\n    {%- eli"
    "f 'tool_calls' in message and message.tool_calls|length > 0 %}\n       {{- '<|header_start|>assistant<|hea"
    "der_end|>\n\n' -}}\n       {{- '<|python_start|>' }}\n        {%- if message['content'] is string %}\n    "
    "        {{- message['content'] }}\n        {%- else %}\n            {%- for content in message['content'] "
    "%}\n                {%- if content['type'] == 'image' %}\n                    {{- '<|image|>' }}\n        "
    "        {%- elif content['type'] == 'text' %}\n                    {{- content['text'] }}\n               "
    " {%- endif %}\n            {%- endfor %}\n        {%- endif %}\n       {{- '<|python_end|>' }}\n        {%"
    "- for tool_call in message.tool_calls %}\n           {{- '{\"name\": \"' + tool_call.function.name + '\", "
    "' }}\n           {{- '\"parameters\": ' }}\n           {{- tool_call.function.arguments | tojson }}\n     "
    "      {{- \"}\" }}\n        {%- endfor %}\n       {{- \"<|eot|>\" }}\n    {%- elif message.role == \"tool\""
    " or message.role == \"ipython\" %}\n        {{- \"<|header_start|>ipython<|header_end|>\n\n\" }}\n        "
    "{%- if message.content is mapping or message.content is iterable %}\n            {{- message.content | toj"
    "son }}\n        {%- else %}\n            {{- message.content }}\n        {%- endif %}\n        {{- \"<|eot"
    "|>\" }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|header_start|>assist"
    "ant<|header_end|>\n\n' }}\n{%- endif %}\n"
)


def supported_resolutions(max_patches: int, tile: int) -> list[tuple[int, int]]:
    """Upstream's `find_supported_resolutions`: every (height, width) canvas of at most `max_patches` tiles, in its
    order (aspect ratios by first appearance from the most tiles down, factor pairs ascending)."""
    by_ratio: dict[float, list[tuple[int, int]]] = {}
    for n in range(max_patches, 0, -1):
        for f in sorted({d for i in range(1, int(n**0.5) + 1) if n % i == 0 for d in (i, n // i)}):
            by_ratio.setdefault(f / (n // f), []).append((f, n // f))
    return [(h * tile, w * tile) for pairs in by_ratio.values() for h, w in pairs]


def best_fit(height: int, width: int, resolutions: list[tuple[int, int]], to_max_canvas: bool) -> tuple[int, int]:
    """Upstream's `get_best_fit` (in float32, as its torch tensors): the canvas needing the least upscaling (or the
    most, `to_max_canvas`), else the least downscaling; among equals the smallest area, the first listed."""
    res = np.array(resolutions, dtype=np.int64)
    scales = np.minimum(res[:, 0].astype(np.float32) / np.float32(height),
                        res[:, 1].astype(np.float32) / np.float32(width))
    up = scales[scales >= 1]
    chosen = (up.max() if to_max_canvas else up.min()) if len(up) else scales[scales < 1].max()
    canvas = res[scales == chosen]
    return tuple(int(v) for v in canvas[int(np.argmin(canvas[:, 0] * canvas[:, 1]))])


def tile_side(size) -> int:
    """The tile side of an image processor's `size` (a dict or transformers' SizeDict)."""
    return size["height"] if isinstance(size, dict) else size.height


def layout(ip, height: int, width: int, **settings) -> tuple[tuple[int, int], tuple[int, int]]:
    """(canvas (height, width) of whole tiles, the aspect-kept size the image is resized to inside it) under image
    processor `ip`'s settings (or `settings`: size, max_patches, resize_to_max_canvas): upstream's `_preprocess`, which
    never upscales past one tile unless `resize_to_max_canvas`."""
    size, max_patches, to_max = (settings.get(k, getattr(ip, k)) for k in ("size", "max_patches",
                                                                            "resize_to_max_canvas"))
    th, tw = best_fit(height, width, supported_resolutions(max_patches, tile_side(size)), to_max)
    if not to_max:
        tile = tile_side(size)
        th_, tw_ = min(max(height, tile), th), min(max(width, tile), tw)
    else:
        th_, tw_ = th, tw
    if tw_ / width < th_ / height:  # upstream's get_max_res_without_distortion
        new_h, new_w = min(math.floor(height * tw_ / width), th_), tw_
    else:
        new_h, new_w = th_, min(math.floor(width * th_ / height), tw_)
    return (th, tw), (max(new_h, 1), max(new_w, 1))


@functools.cache
def image_processor_class() -> type:
    """`Llama4ImageProcessorPil`: transformers' Llama4ImageProcessor (torchvision) on PIL/NumPy."""
    import torch
    from transformers.image_processing_backends import PilBackend
    from transformers.image_processing_utils import BatchFeature
    from transformers.image_utils import PILImageResampling, SizeDict
    from transformers.processing_utils import ImagesKwargs

    class Llama4ImageProcessorKwargs(ImagesKwargs, total=False):
        max_patches: int
        resize_to_max_canvas: bool

    class Llama4ImageProcessorPil(PilBackend):
        resample, image_mean, image_std, size = PILImageResampling.BILINEAR, [0.5] * 3, [0.5] * 3, {"height": 336,
                                                                                                     "width": 336}
        do_resize = do_rescale = do_normalize = do_convert_rgb = True
        max_patches, resize_to_max_canvas = 16, False
        valid_kwargs = Llama4ImageProcessorKwargs
        model_input_names = ["pixel_values"]

        def best_canvas(self, height: int, width: int) -> tuple[int, int]:
            """(height, width) of the canvas of whole tiles an image is resized and padded into (data/resize.py)."""
            return layout(self, height, width)[0]

        def get_number_of_image_patches(self, height: int, width: int, images_kwargs=None) -> int:
            """Tiles of one image, the global tile included when there are several (upstream's)."""
            (th, tw), _ = layout(self, height, width)
            n = (th // tile_side(self.size)) * (tw // tile_side(self.size))
            return n + 1 if n > 1 else 1

        def _normalized(self, image, do_rescale, rescale_factor, do_normalize, image_mean, image_std):
            """Upstream's rescale_and_normalize: in bfloat16 when both are on."""
            x = torch.from_numpy(np.ascontiguousarray(image))
            if do_rescale and do_normalize:
                x = x.to(torch.bfloat16) * rescale_factor
            elif do_rescale:
                x = x.float() * rescale_factor
            if do_normalize:  # torchvision's normalize: mean and std in the image's dtype
                x = x.float() if not x.is_floating_point() else x
                mean = torch.tensor(image_mean, dtype=x.dtype).view(-1, 1, 1)
                x = x.sub(mean).div(torch.tensor(image_std, dtype=x.dtype).view(-1, 1, 1))
            return x

        def _preprocess(self, images, do_resize, size, resample, do_rescale, rescale_factor, do_normalize, image_mean,
                        image_std, max_patches, resize_to_max_canvas, return_tensors=None, **kwargs):
            if not do_resize:
                raise ValueError("Llama 4 always resizes images to one of its canvases; do_resize=False is not "
                                 "supported")
            if size.height != size.width:
                raise ValueError("`size` must be square.")
            tile, norm = size.height, (do_rescale, rescale_factor, do_normalize, image_mean, image_std)
            tiles, ratios = [], []
            for image in images:  # channels first, uint8
                (th, tw), (h, w) = layout(self, *image.shape[-2:], size=size, max_patches=max_patches,
                                          resize_to_max_canvas=resize_to_max_canvas)
                resized = self.resize(image, SizeDict(height=h, width=w), resample)
                canvas = np.pad(resized, ((0, 0), (0, th - h), (0, tw - w)))  # zeros bottom/right
                x = self._normalized(canvas, *norm)
                rh, rw = th // tile, tw // tile
                tiles.append(x.reshape(-1, rh, tile, rw, tile).permute(1, 3, 0, 2, 4).reshape(rh * rw, -1, tile, tile))
                if rh * rw > 1:
                    tiles.append(self._normalized(self.resize(image, size, resample), *norm)[None])
                ratios.append([rh, rw])
            data = {"pixel_values": torch.cat(tiles) if return_tensors else tiles,
                    "aspect_ratios": torch.tensor(ratios) if return_tensors else ratios}
            return BatchFeature(data=data, tensor_type=return_tensors)

    Llama4ImageProcessorPil.__qualname__ = Llama4ImageProcessorPil.__name__
    return Llama4ImageProcessorPil


def load_processor(path, **options):
    """The processor of a Llama 4 checkpoint (or a vlmtune checkpoint of one) on the PIL image processor."""
    from transformers import Llama4Processor

    image_processor = image_processor_class().from_pretrained(path, **options)
    return _with_feature_ids(Llama4Processor.from_pretrained(path, image_processor=image_processor, **options))


def _with_feature_ids(processor):
    """`processor.image_token_ids` = [`<|patch|>`]: the ids the image features replace (what the token budget and
    `vlmtune data lint` count), not `image_token_id` (`<|image|>`, one text token per image). Not saved: an attribute
    Llama4Processor's __init__ does not take."""
    processor.image_token_ids = [processor.tokenizer.convert_tokens_to_ids(PATCH)]
    return processor


def load(cfg) -> Loaded:
    return load_pretrained(cfg, "llama4", type("Loader", (), {"from_pretrained": staticmethod(load_processor)}),
                           freeze_groups=FREEZE_GROUPS)


def _per_tile(processor) -> int:
    return (tile_side(processor.image_processor.size) // processor.patch_size) ** 2 // processor.downsample_ratio


def _expansion(processor, width: int, height: int) -> tuple[str, int]:
    """(the text the processor writes for one `<|image|>`, its number of `<|patch|>` tokens)."""
    (th, tw), _ = layout(processor.image_processor, height, width)
    tile = tile_side(processor.image_processor.size)
    rh, rw, n = th // tile, tw // tile, _per_tile(processor)
    return processor._prompt_split_image((rh, rw), n), n * (rh * rw + (1 if rh * rw > 1 else 0))


def image_tokens(processor, width: int, height: int) -> int:
    """`<|patch|>` tokens for one image: each tile's and the global tile's (the markers around them are text)."""
    return _expansion(processor, width, height)[1]


def encode(processor, samples, images, mode: str, max_length: int) -> Batch:
    """Samples -> model inputs. "train": the whole conversation, labels only on assistant answers + their `<|eot|>`,
    right padding. "generate": the conversation up to `<|header_start|>assistant<|header_end|>\\n\\n`, left padding.
    A sample longer than `max_length` (image tokens included) raises SampleTooLong; nothing is cut."""
    import torch

    tok = processor.tokenizer
    train = mode == "train"
    end_id, patch_id = tok.convert_tokens_to_ids(END), tok.convert_tokens_to_ids(PATCH)

    def render(messages, add_generation_prompt):
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    flat = load_image_list(samples, images)
    texts = [render(s.messages if train else s.prompt_messages, not train) for s in samples]
    tokenized = []  # per sample: (fully expanded ids, assistant spans, [1] per <|patch|> token)
    for s, text, imgs in zip(samples, texts, images, strict=True):
        expansions = [_expansion(processor, img.width, img.height) for img in imgs]

        def tokenize(ts, expansions=expansions):  # each text's k-th <|image|> as the processor writes image k
            out = []
            for t in ts:
                parts = t.split(processor.fake_image_token)
                out.append("".join(p + (expansions[k][0] if k < len(parts) - 1 else "") for k, p in enumerate(parts)))
            return tok(out, add_special_tokens=False).input_ids

        if train:
            ids, spans = answer_spans(tokenize, render, s.messages, s.id, end_id, END)
        else:
            ids, spans = tokenize([text])[0], []
        n_image = sum(n for _, n in expansions)
        check_length(s.id, n_image, len(ids) - n_image, max_length, resize=True)
        tokenized.append((ids, spans, [1] * n_image))
    side = "right" if train else "left"  # given to the call: Llama4Processor's own default (left) beats the tokenizer's
    tok.padding_side = side
    out = processor(text=texts, images=flat or None, padding=True, padding_side=side, add_special_tokens=False,
                    return_tensors="pt")
    inputs = {k: out[k] for k in ("input_ids", "attention_mask") if k in out}
    if flat:
        inputs["pixel_values"] = out["pixel_values"].to(torch.float32)  # bf16 from the processor: the same values
    n_target = 0
    if train:
        labels = expanded_labels(out["input_ids"], out["attention_mask"], patch_id, [s.id for s in samples],
                                 tokenized)
        n_target = int((labels != IGNORE_INDEX).sum())
        inputs["labels"] = labels
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=n_target)


# The pre-tokenizer split of Llama 4's tokenizer (o200k-style): "\n\n" is one piece before a letter as at the end of
# the generation prompt, so the prompt's tokens are a prefix of the conversation's (GPT-2's regex splits them apart).
_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
          r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
          r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_CORPUS = [
    "<|header_start|>user<|header_end|>\n\n<|header_start|>assistant<|header_end|>\n\n",
    "What colour is the top? What colour are the trousers? Describe the image.",
    "a person wearing a red top and blue trousers",
    "red blue green yellow white black orange purple pink grey brown",
    "what which who where how many is are the a an of in on at with and or not yes no there this that",
]


def build_processor():
    """Tokenizer + PIL image processor: tiles of 32x32 in patches of 8, pixel-shuffled to 4 tokens per tile; up to
    4 tiles per image (+ the global tile)."""
    from transformers import Llama4Processor, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_byte_bpe(_CORPUS * 20, SPECIAL_TOKENS, 500, pre_tokenizer=pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])), bos_token="<|begin_of_text|>",
        eos_token=END, pad_token="<|finetune_right_pad|>", model_max_length=4096)
    image_processor = image_processor_class()(size={"height": 32, "width": 32}, max_patches=4)
    return _with_feature_ids(Llama4Processor(image_processor, tok, patch_size=8, pixel_shuffle_ratio=0.5,
                                             chat_template=CHAT_TEMPLATE))


def tiny() -> Loaded:
    """A random Llama 4: ViT 2 layers dim 32 on 32x32 tiles (patches of 8, pixel shuffle 0.5 -> 4 tokens), decoder of
    2 layers dim 32: a dense RoPE chunked-attention layer (chunks of 16 tokens) and a NoPE full-attention MoE layer (4
    experts, top-1, a shared expert), as Maverick interleaves them; special tokens and generation config as in the
    checkpoints (eos: <|end_of_text|>, <|eom|>, <|eot|>)."""
    from transformers import Llama4Config, Llama4ForConditionalGeneration

    processor = build_processor()
    tok = processor.tokenizer
    vision = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8, pixel_shuffle_ratio=0.5, projector_input_dim=32, projector_output_dim=32,
                  vision_output_dim=32)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=32, intermediate_size_mlp=64,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
                num_experts_per_tok=1, interleave_moe_layer_step=2, no_rope_layers=[1, 0], attention_chunk_size=16,
                max_position_embeddings=2048, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id)
    config = Llama4Config(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids(PATCH),
                          boi_token_index=tok.convert_tokens_to_ids("<|image_start|>"),
                          eoi_token_index=tok.convert_tokens_to_ids("<|image_end|>"))
    model = Llama4ForConditionalGeneration(config).float()
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids(["<|end_of_text|>", "<|eom|>", END])
    return Loaded(model=model, processor=processor, family="llama4")


FREEZE_GROUPS = {
    "vision": ("vision_model.",),
    "projector": ("multi_modal_projector.",),
    "language": ("language_model.",),
}

FAMILY = ModelFamily(
    name="llama4",
    description="Llama 4 (meta-llama/Llama-4-Scout-17B-16E/-Maverick-17B-128E-Instruct): tiled ViT -> pixel-shuffle "
                "MLP -> MoE decoder with chunked attention",
    load=load,
    encode=encode,
    lora_targets=(r".*language_model.*\.(" + "|".join(LANGUAGE_LINEARS) + ")",),
    freeze_groups=FREEZE_GROUPS,
    tiny=tiny,
    image_tokens=image_tokens,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    packing=True,  # the generic packed row: transformers' chunked and full masks follow the per-sample positions
    projector_modules=("multi_modal_projector",),
    processor_loader=load_processor,
    language_model="language_model",
    vision_tower="vision_model",
)
