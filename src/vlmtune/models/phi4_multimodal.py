"""Phi-4-multimodal family (`Phi4MultimodalForCausalLM`, model_type "phi4_multimodal", transformers' native layout):
SigLIP (448 px crops, layer -2) -> 2x2 average pool -> 2-layer GELU MLP -> Phi-4-mini decoder (fused qkv/gate_up);
a Conformer audio encoder beside it, which vlmtune never feeds.

Checkpoints: microsoft/Phi-4-multimodal-instruct in transformers' layout (`model.revision: refs/pr/94`, the revision
transformers' own tests load; its `main` branch is the remote-code `Phi4MMForCausalLM`, model_type "phi4mm", which
this family does not load).

Prompt format: the chat template of transformers' Phi4MultimodalProcessor (its tests' template; images as one
`<|image|>` each, which the processor expands to the image's feature tokens):

    <|user|><|image|>What colour is the top?<|end|><|assistant|>red<|end|><|endoftext|>

The generation prompt ends with `<|assistant|>`. The checkpoint's generation config stops at `<|end|>` (200020) or
`<|endoftext|>` (199999); the trained tokens are the answer and `<|end|>`: the `<|endoftext|>` the template writes
after the last turn when no generation prompt is asked for is not generated after an answer, so it is not trained.

The vision and speech LoRA adapters: the original checkpoint merges a "vision" and a "speech" LoRA into its
decoder in its remote code, and its sample fine-tuning script trains the vision adapter itself. transformers'
Phi4MultimodalForCausalLM has no LoRA modules; its documentation loads the checkpoint's `vision-lora/` folder as a
peft adapter (`model.load_adapter(path, adapter_name="vision", adapter_kwargs={"subfolder": "vision-lora"})`),
without which the decoder is the text-only Phi-4-mini. `load` loads the same adapter and merges it into the base
weights (peft `merge_and_unload`; into a 4/8-bit base too, where peft dequantises, adds and requantises) when the
checkpoint has one. What vlmtune trains is then its own LoRA (or a full fine-tune) on top of the vision-adapted
decoder: the same linears as the vision adapter, as a new adapter over the merged weights rather than the shipped
adapter continued. The speech adapter is never loaded. A vlmtune checkpoint or export holds the merged weights (and
no `vision-lora/`), so reloading never merges twice.

Traps handled here:
- transformers' Phi4MultimodalImageProcessor is torchvision-only: `image_processor_class()` is a port on the PIL
  backend that does upstream's tensor operations with torch itself (bilinear antialiased resize of the uint8 image
  to the crop grid, white padding, [-1, 1] normalisation, a bicubic resize without antialias of that to the global
  crop, the crop masks and token counts): tests/models/test_phi4_multimodal.py checks it against a golden made with
  upstream's processor (tests/golden/make_phi4mm_golden.py). It saves as `Phi4MultimodalImageProcessor`, which
  plain transformers reloads where torchvision is installed. Upstream hard-codes the token count of a 448/14 crop
  (256 + 16 + 1 + ...): the port computes it from the crop and patch sizes, the same numbers at 448/14 (the tiny
  processor's 28 px crops need the general form).
- Phi4MultimodalForCausalLM is an AutoModelForCausalLM (and AutoModelForMultimodalLM), not an
  AutoModelForImageTextToText: `register_auto_model()` registers it there for vlmtune's process (load, tiny). Plain
  transformers loads an export with AutoModelForCausalLM.
- The model inserts image features where `input_ids == config.vision_config.image_token_id` (default 200010, not the
  top-level config): the tiny model sets its own token ids there and in `audio_config.audio_token_id`.
- transformers 5.25's `Phi4MultimodalProcessor.from_pretrained` drops the chat template (its `__init__` does not
  name `chat_template`, and `from_dict` keeps only the arguments it names), so plain transformers' processor of a
  saved checkpoint has none; the tokenizer reads the same chat_template.jinja, and `load_processor` takes it there.
- The audio feature extractor needs no torchvision: the processor keeps it (its settings reload as the checkpoint's);
  the audio encoder is its own freeze group ("audio", always frozen, never a LoRA target).
- The image features of all images of a batch are one tensor put in order into the `<|image|>` positions; each image
  is global crop + up to `dynamic_hd` (36) 448 px crops, padded to the batch's largest crop count.
- Packing: the decoder is plain causal attention with rotary positions from `position_ids`, and the image features
  are put into the `<|image|>` positions in order, which a packed row keeps: the generic packed row gives each
  sample its padded loss (tests/train/test_length_grouping.py).
- No frozen-vision cache (the model has no `get_image_features` / precomputed-feature input), and no vision dummy
  for sharded runs (`language_model` is None: the decoder and the image embedding are one module). Not served by
  vLLM from here (not in tests/vllm_models.py: untested).
- LoRA targets the decoder's qkv_proj, o_proj, gate_up_proj and down_proj (`model.layers.N...`); the SigLIP tower and
  the Conformer have their own q/k/v/out projections, hence the anchored regex.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.models.family import Batch, Loaded, ModelFamily, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, answer_spans, check_length, expanded_labels

END = "<|end|>"
EOS = "<|endoftext|>"
IMAGE = "<|image|>"
AUDIO = "<|audio|>"
SPECIAL_TOKENS = [EOS, "<|user|>", "<|assistant|>", "<|system|>", END, IMAGE, AUDIO, "<|tool|>", "<|/tool|>"]
VISION_LORA = "vision-lora"

# transformers' tests/models/phi4_multimodal/test_processor_phi4_multimodal.py (prepare_processor_dict): the template
# of the checkpoint's transformers-layout processor, content lists with image/audio/text parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' }}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<|image|>' }}{% elif content['type'] == 'audio' %}{{ '<|audio|>' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{% if message['role'] == 'system' and 'tools' in message "
    "and message['tools'] is not none %}{{ '<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}{% endif %}"
    "{{ '<|end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)


def crop_layout(height: int, width: int, crop: int, max_crops: int) -> tuple[tuple[int, int], tuple[int, int],
                                                                             tuple[int, int]]:
    """Upstream's `_get_crop_layout`: ((columns, rows) of crops, (width, height) resized to, (right, bottom) pad)."""
    cols, rows = math.ceil(width / crop), math.ceil(height / crop)
    if cols * rows > max_crops:
        ratios = sorted({(i, j) for n in range(1, max_crops + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                         if 1 <= i * j <= max_crops}, key=lambda r: r[0] * r[1])
        best, best_diff = (1, 1), float("inf")  # upstream's find_closest_aspect_ratio
        for r in ratios:
            diff = abs(width / height - r[0] / r[1])
            if diff < best_diff:
                best, best_diff = r, diff
            elif diff == best_diff and width * height > 0.5 * crop * crop * r[0] * r[1]:
                best = r
        cols, rows = best
    target_w, target_h = crop * cols, crop * rows
    if target_w / width < target_h / height:
        new = (target_w, int(height * (target_w / width)))
    else:
        new = (int(width * (target_h / height)), target_h)
    if min(new[1], target_h) < 10 or min(new[0], target_w) < 10:
        raise ValueError(f"a {width}x{height} image: the aspect ratio is too extreme for Phi-4-multimodal "
                         f"(resized to {new[0]}x{new[1]})")
    return (cols, rows), new, (target_w - new[0], target_h - new[1])


def crop_mask(grid: tuple[int, int], padding: tuple[int, int], patch: int, mask_size: int) -> np.ndarray:
    """(rows * mask_size, cols * mask_size) patch mask of the crop grid: 0 on whole patches of padding."""
    mask = np.ones((mask_size * grid[1], mask_size * grid[0]), dtype=np.float32)
    if padding[0] >= patch:
        mask[:, -(padding[0] // patch):] = 0
    if padding[1] >= patch:
        mask[-(padding[1] // patch):, :] = 0
    return mask


def token_count(mask: np.ndarray, mask_size: int) -> int:
    """Feature tokens of one image: the global crop's b x (b + 1) (a separator column per row), 1 separator, the
    crops' kept b x b cells in 2x2-pooled units plus one separator per kept row (b = ceil(mask_size / 2); upstream
    writes 256 + 16 + 1 + ..., its 448/14 value)."""
    b = mask_size // 2 + mask_size % 2
    rows, cols = mask.shape[0] // mask_size, mask.shape[1] // mask_size
    pooled = mask.reshape(rows, mask_size, cols, mask_size)[:, 0::2, :, 0::2].reshape(rows * b, cols * b)
    return b * b + b + 1 + int(pooled.sum()) + int(pooled[:, 0].sum())


@functools.cache
def image_processor_class() -> type:
    """`Phi4MultimodalImageProcessorPil`: transformers' Phi4MultimodalImageProcessor without torchvision."""
    import torch
    from transformers.image_processing_backends import PilBackend
    from transformers.image_processing_utils import BatchFeature
    from transformers.image_utils import PILImageResampling
    from transformers.processing_utils import ImagesKwargs

    class Phi4MultimodalImageProcessorKwargs(ImagesKwargs, total=False):
        patch_size: int
        dynamic_hd: int

    class Phi4MultimodalImageProcessorPil(PilBackend):
        resample, size, patch_size, dynamic_hd = PILImageResampling.BICUBIC, {"height": 448, "width": 448}, 14, 36
        image_mean, image_std, do_rescale, do_normalize, do_convert_rgb = [0.5] * 3, [0.5] * 3, True, True, True
        valid_kwargs = Phi4MultimodalImageProcessorKwargs
        model_input_names = ["image_pixel_values", "image_sizes", "image_attention_mask"]

        def to_dict(self):
            out = super().to_dict()
            out["image_processor_type"] = "Phi4MultimodalImageProcessor"  # upstream's name: plain transformers
            return out

        def get_number_of_image_tokens(self, height: int, width: int, images_kwargs=None) -> int:
            kw = self._merge_and_standardize_kwargs(**(images_kwargs or {}))
            crop, patch = kw["size"]["height"], kw["patch_size"]
            grid, _, padding = crop_layout(height, width, crop, kw["dynamic_hd"])
            return token_count(crop_mask(grid, padding, patch, crop // patch), crop // patch)

        def _preprocess(self, images, size, resample, do_rescale, rescale_factor, do_normalize, image_mean,
                        image_std, patch_size, dynamic_hd, return_tensors, **kwargs):
            from torch.nn.functional import interpolate

            if size.height != size.width:
                raise ValueError("Phi4MultimodalImageProcessor only supports square sizes.")
            crop, mask_size = size.height, size.height // patch_size
            mean = torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1)
            std = torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1)
            crops, masks, tokens, sizes = [], [], [], []
            for image in images:  # channels-first uint8
                grid, (w, h), (pad_w, pad_h) = crop_layout(*image.shape[-2:], crop, dynamic_hd)
                mask = crop_mask(grid, (pad_w, pad_h), patch_size, mask_size)
                x = torch.from_numpy(np.ascontiguousarray(image))[None]
                # torchvision's uint8 resize (bilinear, antialias), then white padding right and bottom
                x = interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)  # uint8 kernel
                x = torch.nn.functional.pad(x.float(), (0, pad_w, 0, pad_h), value=255.0)[0]
                if do_rescale:
                    x = x * rescale_factor
                if do_normalize:
                    x = (x - mean) / std
                full = interpolate(x[None], size=(crop, crop), mode="bicubic", antialias=False,
                                   align_corners=False)  # the global crop
                height, width = x.shape[-2:]
                tiles = x.reshape(3, height // crop, crop, width // crop, crop).permute(1, 3, 0, 2, 4)
                crops.append(torch.cat([full, tiles.reshape(-1, 3, crop, crop)]))
                tile_masks = mask.reshape(height // crop, mask_size, width // crop, mask_size).transpose(0, 2, 1, 3)
                masks.append(torch.from_numpy(np.concatenate([np.ones((1, mask_size, mask_size), np.float32),
                                                              tile_masks.reshape(-1, mask_size, mask_size)])))
                tokens.append(token_count(mask, mask_size))
                sizes.append([height, width])
            n = max(len(c) for c in crops)  # padded to the largest crop count: zero crops, all-ones masks
            pixels = torch.stack([torch.cat([c, c.new_zeros(n - len(c), *c.shape[1:])]) for c in crops])
            masks = torch.stack([torch.cat([m, m.new_ones(n - len(m), *m.shape[1:])]) for m in masks])
            data = {"image_pixel_values": pixels, "image_sizes": torch.tensor(sizes, dtype=torch.long),
                    "image_attention_mask": masks, "num_img_tokens": tokens}
            return BatchFeature(data=data, tensor_type=return_tensors)

    Phi4MultimodalImageProcessorPil.__qualname__ = Phi4MultimodalImageProcessorPil.__name__
    return Phi4MultimodalImageProcessorPil


@functools.cache
def register_auto_model() -> None:
    """AutoModelForImageTextToText -> Phi4MultimodalForCausalLM, in this process (vlmtune loads every family so)."""
    from transformers import AutoModelForImageTextToText, Phi4MultimodalConfig, Phi4MultimodalForCausalLM

    AutoModelForImageTextToText.register(Phi4MultimodalConfig, Phi4MultimodalForCausalLM, exist_ok=True)


def load_processor(path, **options):
    """The processor of a Phi-4-multimodal checkpoint (or a vlmtune checkpoint of one) on the ported image
    processor; the tokenizer and audio feature extractor as saved."""
    from transformers import Phi4MultimodalProcessor

    image_processor = image_processor_class().from_pretrained(path, **options)
    processor = Phi4MultimodalProcessor.from_pretrained(path, image_processor=image_processor, **options)
    if processor.chat_template is None:  # dropped by from_pretrained (see the module docstring)
        processor.chat_template = processor.tokenizer.chat_template
    return processor


def load(cfg) -> Loaded:
    register_auto_model()
    loaded = load_pretrained(cfg, "phi4_multimodal", type("Loader", (), {"from_pretrained": staticmethod(
        load_processor)}), freeze_groups=FREEZE_GROUPS)
    loaded.model = merge_vision_lora(loaded.model, cfg.path, revision=cfg.revision)
    freeze_audio(loaded.model)
    return loaded


def merge_vision_lora(model, path, revision=None):
    """`model` with the checkpoint's `vision-lora/` peft adapter merged into its decoder, when it has one (a hub
    checkpoint, or a directory holding that folder); the model unchanged otherwise."""
    local = Path(str(path)).is_dir()
    if local and not (Path(path) / VISION_LORA / "adapter_config.json").is_file():
        return model
    from peft import PeftModel

    try:
        adapted = PeftModel.from_pretrained(model, str(path), subfolder=VISION_LORA, adapter_name="vision",
                                            revision=revision)
    except (OSError, ValueError):
        if local:
            raise
        return model  # a hub checkpoint without the adapter
    model = adapted.merge_and_unload()
    for p in model.parameters():  # peft froze the base weights: trainable again, as any loaded model's
        p.requires_grad_(p.is_floating_point())  # (4/8-bit quantised weights never are)
    return model


def freeze_audio(model) -> None:
    """The audio encoder never gets a gradient (vlmtune feeds no audio): frozen from the start."""
    for name, p in model.named_parameters():
        if name.startswith(FREEZE_GROUPS["audio"]):
            p.requires_grad_(False)


def image_tokens(processor, width: int, height: int) -> int:
    """`<|image|>` tokens of one image: global crop, separators and the kept part of its crop grid."""
    kw = processor._merge_kwargs()["images_kwargs"]
    return processor.image_processor.get_number_of_image_tokens(height, width, kw)


def encode(processor, samples, images, mode: str, max_length: int) -> Batch:
    """Samples -> model inputs. "train": the whole conversation, labels only on assistant answers + their `<|end|>`,
    right padding. "generate": the conversation up to `<|assistant|>`, left padding. A sample longer than
    `max_length` (image tokens included) raises SampleTooLong; nothing is cut."""
    tok = processor.tokenizer
    train = mode == "train"
    end_id = tok.convert_tokens_to_ids(END)

    def render(messages, add_generation_prompt):
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def tokenize(texts):
        return tok(texts, add_special_tokens=False).input_ids

    texts = [render(s.messages if train else s.prompt_messages, not train) for s in samples]
    tokenized = []  # per sample: (ids with one <|image|> per image, assistant spans, tokens per image)
    for s, text, imgs in zip(samples, texts, images, strict=True):
        per_image = [image_tokens(processor, img.width, img.height) for img in imgs]
        if train:
            unexpanded, spans = answer_spans(tokenize, render, s.messages, s.id, end_id, END)
        else:
            unexpanded, spans = tokenize([text])[0], []
        check_length(s.id, sum(per_image), len(unexpanded) - len(imgs), max_length, resize=True)
        tokenized.append((unexpanded, spans, per_image))
    has_images = bool(load_image_list(samples, images))  # checks each sample got as many images as slots
    out = processor(text=texts, images=[im for imgs in images for im in imgs] if has_images else None, padding=True,
                    padding_side="right" if train else "left", add_special_tokens=False, return_tensors="pt")
    keys = ("input_ids", "attention_mask", "image_pixel_values", "image_sizes", "image_attention_mask")
    inputs = {k: out[k] for k in keys if k in out}
    n_target = 0
    if train:
        labels = expanded_labels(out["input_ids"], out["attention_mask"], processor.image_token_id,
                                 [s.id for s in samples], tokenized)
        n_target = int((labels != IGNORE_INDEX).sum())
        inputs["labels"] = labels
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=n_target)


_CORPUS = [
    "<|user|><|assistant|>What colour is the top? What colour are the trousers? Describe the image.",
    "a person wearing a red top and blue trousers",
    "red blue green yellow white black orange purple pink grey brown",
    "what which who where how many is are the a an of in on at with and or not yes no there this that",
]


def build_processor(crop: int = 28, patch: int = 14, dynamic_hd: int = 4):
    """Tokenizer (byte-level BPE with Phi-4-mm's special tokens, trained here) + the ported image processor with
    `crop` px crops of `patch` px patches (up to `dynamic_hd` crops) + the audio feature extractor's defaults."""
    from transformers import Phi4MultimodalFeatureExtractor, Phi4MultimodalProcessor, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_byte_bpe(_CORPUS * 20, SPECIAL_TOKENS, 500), bos_token=EOS, eos_token=EOS,
        pad_token=EOS, unk_token=EOS, extra_special_tokens={"image_token": IMAGE, "audio_token": AUDIO},
        model_max_length=4096)
    image_processor = image_processor_class()(size={"height": crop, "width": crop}, patch_size=patch,
                                              dynamic_hd=dynamic_hd)
    return Phi4MultimodalProcessor(image_processor, Phi4MultimodalFeatureExtractor(), tok,
                                   chat_template=CHAT_TEMPLATE)


def tiny() -> Loaded:
    """A random Phi-4-multimodal: SigLIP 2 layers dim 32 on 28 px crops of 14 px patches (features of layer -2), the
    image MLP into a 2-layer Phi-4-mini decoder dim 32 (tied embeddings, as the checkpoint), a 1-block Conformer
    audio encoder dim 16 (never fed); token ids and generation config as the checkpoint's, in the tiny tokenizer."""
    import torch
    from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM

    register_auto_model()
    processor = build_processor()
    tok = processor.tokenizer
    # 3 vision layers: the image features are the second-to-last layer's (Phi-4-mm's layer_idx -2), so the last one
    # gets no gradient; with 2, most of the tiny tower would be out of the full fine-tune's reach
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=28,
                  patch_size=14, crop_size=28, image_token_id=processor.image_token_id)
    audio = dict(hidden_size=16, intermediate_size=32, num_blocks=1, num_attention_heads=2, ext_pw_out_channel=16,
                 depthwise_separable_out_channel=16, nemo_conv_channels=16, audio_token_id=processor.audio_token_id)
    config = Phi4MultimodalConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, original_max_position_embeddings=4096,
        vision_config=vision, audio_config=audio, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=[tok.convert_tokens_to_ids(END), tok.eos_token_id], tie_word_embeddings=True)
    model = Phi4MultimodalForCausalLM(config).to(torch.float32)
    freeze_audio(model)
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    # the checkpoint's generation_config.json: eos [200020 <|end|>, 199999 <|endoftext|>]
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids(END), tok.eos_token_id]
    return Loaded(model=model, processor=processor, family="phi4_multimodal")


_IMAGE = "model.embed_tokens_extend.image_embed."
FREEZE_GROUPS = {
    "vision": (_IMAGE + "img_processor.",),
    "projector": (_IMAGE + "img_projection_up.", _IMAGE + "img_projection_down.",
                  _IMAGE + "global_img_feature_extensor", _IMAGE + "sub_img_feature_extensor"),
    "audio": ("model.embed_tokens_extend.audio_embed.",),  # never fed: frozen by every recipe
    "language": ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head."),
}

FAMILY = ModelFamily(
    name="phi4_multimodal",
    description="Phi-4-multimodal (microsoft/Phi-4-multimodal-instruct, transformers layout): SigLIP 448 px HD crops "
                "-> MLP -> Phi-4-mini with the vision LoRA merged (images only; the audio encoder stays frozen)",
    load=load,
    encode=encode,
    lora_targets=(r"model\.layers\.\d+\.(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj))",),
    freeze_groups=FREEZE_GROUPS,
    tiny=tiny,
    image_tokens=image_tokens,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    packing=True,
    processor_loader=load_processor,
    projector_modules=("img_projection_up", "img_projection_down"),
)
