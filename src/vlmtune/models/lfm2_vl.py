"""LFM2-VL family (`Lfm2VlForConditionalGeneration`): SigLIP2 NaFlex (native resolution) -> pixel-unshuffle MLP ->
LFM2 decoder (gated short-convolution layers between grouped-query attention layers).

Checkpoints: LiquidAI/LFM2-VL-450M, LiquidAI/LFM2-VL-1.6B (and fine-tunes).

Prompt format: the checkpoints' ChatML chat template, with a BOS (`<|startoftext|>`) the template writes itself:

    <|startoftext|><|im_start|>user\\n<image>What colour is the top?<|im_end|>\\n
    <|im_start|>assistant\\nred<|im_end|>\\n

The trained tokens are the answer and `<|im_end|>` (the checkpoints' eos; the template's `\\n` after it is not).

Traps handled here:
- transformers has only a torchvision image processor for LFM2-VL (`Lfm2VlImageProcessor`, no PIL variant), and
  torchvision is absent here: `image_processor_class()` is a PIL/NumPy port of it (same layout, tiles, patches,
  masks and outputs; its resizes are PIL's, so pixel values differ from torchvision's in rounding only). It saves as
  `Lfm2VlImageProcessor`, which plain transformers reloads where torchvision is installed.
- Each image becomes `<|image_start|>`, then either one run of `<image>` (a small image, resized so both sides are
  multiples of patch x downsample) or, for a large one, a `<|img_row_R_col_C|>` marker + `<image>` x tokens-per-tile
  per tile and `<|img_thumbnail|>` + a thumbnail's run, then `<|image_end|>`. The markers depend on the image's
  layout, so the label mapping compares with the fully expanded text (each `<image>` its own placeholder);
  `image_tokens` is the number of `<image>` tokens (the features the model inserts), the markers count as text.
  `model.max_pixels` caps max_image_tokens and max_tiles (data/resize.py `limit_pixels`).
- LFM2's short convolutions look back `conv_L_cache - 1` positions and zero masked positions: right padding (training)
  and left padding (generation) leave each sample's logits unchanged (tests/models/test_lfm2_vl.py checks it), but a
  packed row would leak one sample's tokens into the next one's convolution: `packing` is off.
- `get_image_features` lists one entry per tile, not per image: no frozen-vision cache.
- Not served by vLLM yet (not in tests/vllm_models.py): transformers 5.25 saves SigLIP2 as
  `model.vision_tower.embeddings...` where the checkpoints (and vLLM's loader) have
  `model.vision_tower.vision_model.embeddings...`; the export now writes the hub's keys (export.hub_layout) and
  vLLM 0.32 loads it, but on the widened tiny model its greedy answers differ from transformers' from the first
  token (tests/serve/test_vllm_parity.py with lfm2_vl added: all 6 questions), a mismatch not found yet.
- LoRA targets the decoder's attention (q/k/v/out_proj), convolution (in/out_proj) and MLP (w1, w2, w3) linears;
  SigLIP2 has q/k/v/out_proj too, hence the language-model regex.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.models.family import Batch, Loaded, ModelFamily, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, answer_spans, check_length, expanded_labels

LANGUAGE_LINEARS = ("q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3")
END = "<|im_end|>"
MAX_TILES = 4  # the tiny processor's
SPECIAL_TOKENS = ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", END, "<image>", "<|image_start|>",
                  "<|image_end|>", "<|img_thumbnail|>"] + [
    f"<|img_row_{r}_col_{c}|>" for r in range(1, MAX_TILES + 1) for c in range(1, MAX_TILES + 1)]

# The chat template of LiquidAI/LFM2-VL-450M / -1.6B (chat_template.jinja).
CHAT_TEMPLATE = (
    "{{bos_token}}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<image>' }}{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

LAYOUT = ("downsample_factor", "min_tiles", "max_tiles", "min_image_tokens", "max_image_tokens", "encoder_patch_size",
          "tile_size", "max_pixels_tolerance")


@functools.cache
def image_processor_class() -> type:
    """`Lfm2VlImageProcessorPil`: transformers' Lfm2VlImageProcessor (torchvision) on PIL/NumPy."""
    import torch
    from transformers.image_processing_backends import PilBackend
    from transformers.image_processing_utils import BatchFeature
    from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, PILImageResampling, SizeDict
    from transformers.processing_utils import ImagesKwargs

    class Lfm2VlImageProcessorKwargs(ImagesKwargs, total=False):
        downsample_factor: int
        do_image_splitting: bool
        min_tiles: int
        max_tiles: int
        use_thumbnail: bool
        min_image_tokens: int
        max_image_tokens: int
        encoder_patch_size: int
        tile_size: int
        max_pixels_tolerance: float
        do_pad: bool
        return_row_col_info: bool

    class Lfm2VlImageProcessorPil(PilBackend):
        downsample_factor, do_image_splitting, min_tiles, max_tiles, use_thumbnail = 2, True, 2, 10, True
        min_image_tokens, max_image_tokens, encoder_patch_size, tile_size, max_pixels_tolerance = 64, 256, 16, 512, 2.0
        do_resize, size, resample = True, {"height": 512, "width": 512}, PILImageResampling.BILINEAR
        do_rescale, rescale_factor, do_normalize, do_pad, return_row_col_info = True, 1 / 255, True, True, False
        image_mean, image_std = IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD
        valid_kwargs = Lfm2VlImageProcessorKwargs
        model_input_names = ["pixel_values", "pixel_attention_mask", "spatial_shapes"]

        def _get_grid_layout(self, height, width, min_tiles, max_tiles, tile_size):
            ratios = sorted({(w, h) for n in range(min_tiles, max_tiles + 1) for w in range(1, n + 1)
                             for h in range(1, n + 1) if min_tiles <= w * h <= max_tiles}, key=lambda r: r[0] * r[1])
            best, best_diff = (1, 1), float("inf")  # upstream's find_closest_aspect_ratio
            for r in ratios:
                diff = abs(width / height - r[0] / r[1])
                if diff < best_diff:
                    best, best_diff = r, diff
                elif diff == best_diff and width * height > 0.5 * tile_size * tile_size * r[0] * r[1]:
                    best = r
            return best[0], best[1], tile_size * best[0], tile_size * best[1], best[0] * best[1]

        def smart_resize(self, height, width, downsample_factor, min_image_tokens, max_image_tokens,
                         encoder_patch_size):
            f = encoder_patch_size * downsample_factor
            low, high = min_image_tokens * f**2, max_image_tokens * f**2
            h_bar, w_bar = max(f, round(height / f) * f), max(f, round(width / f) * f)
            if h_bar * w_bar > high:
                beta = math.sqrt(height * width / high)
                h_bar, w_bar = max(f, math.floor(height / beta / f) * f), max(f, math.floor(width / beta / f) * f)
            elif h_bar * w_bar < low:
                beta = math.sqrt(low / (height * width))
                h_bar, w_bar = math.ceil(height * beta / f) * f, math.ceil(width * beta / f) * f
            return w_bar, h_bar

        def _get_split_layout(self, height, width, downsample_factor, min_tiles, max_tiles, min_image_tokens,
                              max_image_tokens, encoder_patch_size, tile_size, max_pixels_tolerance):
            """(split into tiles?, rows, cols, height, width after the single-tile / thumbnail resize)."""
            f = encoder_patch_size * downsample_factor
            h_bar = max(encoder_patch_size, round(height / f) * f)
            w_bar = max(encoder_patch_size, round(width / f) * f)
            large = h_bar * w_bar > max_image_tokens * f**2 * max_pixels_tolerance
            new_w, new_h = self.smart_resize(height, width, downsample_factor, min_image_tokens, max_image_tokens,
                                             encoder_patch_size)
            split = large and not min_tiles == max_tiles == 1
            cols, rows = self._get_grid_layout(height, width, min_tiles, max_tiles, tile_size)[:2] if split else (1, 1)
            return split, rows, cols, new_h, new_w

        def _preprocess(self, images, resample, do_rescale, rescale_factor, do_normalize, image_mean, image_std,
                        downsample_factor, do_image_splitting, min_tiles, max_tiles, use_thumbnail, min_image_tokens,
                        max_image_tokens, encoder_patch_size, tile_size, max_pixels_tolerance, do_pad,
                        return_row_col_info, return_tensors, **kwargs):
            if not do_image_splitting:
                min_tiles = max_tiles = 1
            if min_tiles > max_tiles:
                raise ValueError("min_tiles must be less than or equal to max_tiles")
            p = encoder_patch_size
            max_patches = max(max_image_tokens * downsample_factor**2, (tile_size // p) ** 2 if do_image_splitting
                              else 0)
            tiles, rows, cols, sizes = [], [], [], []
            for image in images:  # channels first
                split, r, c, new_h, new_w = self._get_split_layout(
                    *image.shape[-2:], downsample_factor, min_tiles, max_tiles, min_image_tokens, max_image_tokens,
                    p, tile_size, max_pixels_tolerance)
                if split:
                    grid = self.resize(image, SizeDict(height=tile_size * r, width=tile_size * c), resample)
                    tiles += [grid[:, i * tile_size:(i + 1) * tile_size, j * tile_size:(j + 1) * tile_size]
                              for i in range(r) for j in range(c)]
                if not split or use_thumbnail:
                    tiles.append(self.resize(image, SizeDict(height=new_h, width=new_w), resample))
                rows.append(r), cols.append(c), sizes.append([new_h, new_w])
            values, masks, shapes = [], [], []
            for tile in tiles:
                if do_rescale:
                    tile = self.rescale(tile, rescale_factor)
                if do_normalize:
                    tile = self.normalize(tile, image_mean, image_std)
                ch, h, w = tile.shape  # -> (h/p * w/p, p * p * ch) patches, each row-major (y, x, channel)
                patches = tile.reshape(ch, h // p, p, w // p, p).transpose(1, 3, 2, 4, 0).reshape(-1, p * p * ch)
                mask = np.ones(max_patches if do_pad else len(patches), dtype=np.int32)
                if do_pad:
                    if len(patches) > max_patches:  # upstream's torch pad would silently cut them
                        raise ValueError(f"an image resized to {h}x{w} pixels is {len(patches)} patches, over the "
                                         f"{max_patches} the model takes (aspect ratio too extreme)")
                    mask[len(patches):] = 0
                    patches = np.pad(patches, ((0, max_patches - len(patches)), (0, 0)))
                values.append(torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32)))
                masks.append(torch.from_numpy(mask)), shapes.append([h // p, w // p])
            data = {"pixel_values": torch.stack(values)}
            if do_pad:
                data.update(pixel_attention_mask=torch.stack(masks), spatial_shapes=torch.tensor(shapes))
            if return_row_col_info:
                data.update(image_rows=rows, image_cols=cols, image_sizes=sizes)
            return BatchFeature(data=data, tensor_type=return_tensors)

    Lfm2VlImageProcessorPil.__qualname__ = Lfm2VlImageProcessorPil.__name__
    return Lfm2VlImageProcessorPil


def load_processor(path, **options):
    """The processor of an LFM2-VL checkpoint (or a vlmtune checkpoint of one) on the PIL image processor."""
    from transformers import Lfm2VlProcessor

    image_processor = image_processor_class().from_pretrained(path, **options)
    return Lfm2VlProcessor.from_pretrained(path, image_processor=image_processor, **options)


def load(cfg) -> Loaded:
    return load_pretrained(cfg, "lfm2_vl", type("Loader", (), {"from_pretrained": staticmethod(load_processor)}),
                           freeze_groups=FREEZE_GROUPS)


def _expansion(processor, width: int, height: int) -> tuple[str, int]:
    """(the text the processor writes for one `<image>`, its number of `<image>` tokens), from the processor's own
    layout and token functions."""
    ip = processor.image_processor
    kw = ip._merge_and_standardize_kwargs(**processor._merge_kwargs()["images_kwargs"])
    layout = {k: kw[k] for k in LAYOUT}
    if not kw["do_image_splitting"]:
        layout["min_tiles"] = layout["max_tiles"] = 1
    _, rows, cols, *size = ip._get_split_layout(height, width, **layout)
    per_tile, image = processor._get_image_num_tokens(size, **kw)
    text = processor._build_image_tokens(rows, cols, per_tile, image, kw["use_thumbnail"], True)
    return text, processor._get_num_multimodal_tokens(image_sizes=[(height, width)])["num_image_tokens"][0]


def image_tokens(processor, width: int, height: int) -> int:
    """`<image>` tokens for one image: a resized image's, or its tiles' and thumbnail's (the markers around them are
    text tokens)."""
    return _expansion(processor, width, height)[1]


def encode(processor, samples, images, mode: str, max_length: int) -> Batch:
    """Samples -> model inputs. "train": the whole conversation, labels only on assistant answers + their
    `<|im_end|>`, right padding. "generate": the conversation up to `<|im_start|>assistant\\n`, left padding.
    A sample longer than `max_length` (image tokens included) raises SampleTooLong; nothing is cut."""
    tok = processor.tokenizer
    train = mode == "train"
    end_id = tok.convert_tokens_to_ids(END)

    def render(messages, add_generation_prompt):
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    flat = load_image_list(samples, images)
    texts = [render(s.messages if train else s.prompt_messages, not train) for s in samples]
    tokenized = []  # per sample: (fully expanded ids, assistant spans, [1] per <image> token)
    for s, text, imgs in zip(samples, texts, images, strict=True):
        expansions = [_expansion(processor, img.width, img.height) for img in imgs]

        def tokenize(ts, expansions=expansions):  # each text's k-th <image> as the processor writes image k
            out = []
            for t in ts:
                parts = t.split(processor.image_token)
                out.append("".join(p + (expansions[k][0] if k < len(parts) - 1 else "") for k, p in enumerate(parts)))
            return tok(out, add_special_tokens=False).input_ids

        if train:
            ids, spans = answer_spans(tokenize, render, s.messages, s.id, end_id, END)
        else:
            ids, spans = tokenize([text])[0], []
        n_image = sum(n for _, n in expansions)
        check_length(s.id, n_image, len(ids) - n_image, max_length, resize=True)
        tokenized.append((ids, spans, [1] * n_image))
    tok.padding_side = "right" if train else "left"
    out = processor(text=texts, images=[list(i) for i in images] if flat else None, padding=True,
                    return_tensors="pt")
    inputs = dict(out)  # input_ids, attention_mask (+ pixel_values, pixel_attention_mask, spatial_shapes per tile)
    n_target = 0
    if train:
        labels = expanded_labels(out["input_ids"], out["attention_mask"], processor.image_token_id,
                                 [s.id for s in samples], tokenized)
        n_target = int((labels != IGNORE_INDEX).sum())
        inputs["labels"] = labels
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=n_target)


_CORPUS = [
    "<|im_start|>user\n<|im_start|>assistant\n",
    "What colour is the top? What colour are the trousers? Describe the image.",
    "a person wearing a red top and blue trousers",
    "red blue green yellow white black orange purple pink grey brown",
    "what which who where how many is are the a an of in on at with and or not yes no there this that",
]


def build_processor():
    """Tokenizer + PIL image processor: patches of 8, unshuffled 2x2 (one token per 16x16 pixels), images up to
    4 tokens (32x32) as they are, larger ones (over twice that) in 2-4 tiles of 32x32 + a thumbnail."""
    from transformers import Lfm2VlProcessor, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_byte_bpe(_CORPUS * 20, SPECIAL_TOKENS, 500), bos_token="<|startoftext|>",
        eos_token=END, pad_token="<|pad|>", extra_special_tokens={"image_token": "<image>"}, model_max_length=4096)
    image_processor = image_processor_class()(
        encoder_patch_size=8, downsample_factor=2, tile_size=32, min_tiles=2, max_tiles=MAX_TILES, min_image_tokens=1,
        max_image_tokens=4, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return Lfm2VlProcessor(image_processor, tok, chat_template=CHAT_TEMPLATE)


def tiny() -> Loaded:
    """A random LFM2-VL: SigLIP2 2 layers dim 32 (16 patch positions), projector into a 2-layer LFM2 (one short
    convolution layer, one attention layer, dim 32); special token ids and generation config as in the checkpoints.
    `conv_dim` and `block_dim` (the convolutions' and blocks' width, = hidden_size) are not fields of transformers'
    Lfm2Config, but the checkpoints' config.json has them and vLLM reads them."""
    from transformers import Lfm2VlConfig, Lfm2VlForConditionalGeneration

    processor = build_processor()
    tok = processor.tokenizer
    vision = dict(model_type="siglip2_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, patch_size=8, num_patches=16, vision_use_head=False)
    text = dict(model_type="lfm2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, layer_types=["conv", "full_attention"],
                block_auto_adjust_ff_dim=False, conv_dim=32, block_dim=32, max_position_embeddings=1024,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                tie_word_embeddings=False)
    config = Lfm2VlConfig(vision_config=vision, text_config=text, image_token_id=processor.image_token_id,
                          projector_hidden_size=32, downsample_factor=2, tie_word_embeddings=False)
    model = Lfm2VlForConditionalGeneration(config).float()
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id  # <|im_end|>, as the checkpoints' generation config
    return Loaded(model=model, processor=processor, family="lfm2_vl")


FREEZE_GROUPS = {
    "vision": ("model.vision_tower.",),
    "projector": ("model.multi_modal_projector.",),
    "language": ("model.language_model.", "lm_head."),
}

FAMILY = ModelFamily(
    name="lfm2_vl",
    description="LFM2-VL (LiquidAI/LFM2-VL-450M/1.6B): native-resolution SigLIP2 tiles -> pixel-unshuffle MLP -> "
                "LFM2 (convolution + attention)",
    load=load,
    encode=encode,
    lora_targets=(r".*language_model.*\.(" + "|".join(LANGUAGE_LINEARS) + ")",),
    freeze_groups=FREEZE_GROUPS,
    tiny=tiny,
    image_tokens=image_tokens,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    projector_modules=("multi_modal_projector",),
    processor_loader=load_processor,
    language_model="model.language_model",
    vision_tower="model.vision_tower",
)
