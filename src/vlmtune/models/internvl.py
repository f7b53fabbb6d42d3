"""InternVL 3 / 3.5 family (`InternVLForConditionalGeneration`, the transformers-native `-hf` checkpoints):
InternViT -> pixel shuffle (2x2 -> 1) -> MLP projector -> Qwen2 / Qwen3 decoder.

Checkpoints: OpenGVLab/InternVL3-1B-hf, InternVL3-2B-hf, InternVL3-8B-hf, ..., OpenGVLab/InternVL3_5-1B-HF,
InternVL3_5-2B-HF, InternVL3_5-8B-HF, ... (not the remote-code `OpenGVLab/InternVL3-1B` repos: other weights' names).

Prompt format: the -hf checkpoints' ChatML chat template (no default system turn):

    <|im_start|>user\\n<IMG_CONTEXT>\\nWhat colour is the top?<|im_end|>\\n<|im_start|>assistant\\nred<|im_end|>\\n

The processor expands each `<IMG_CONTEXT>` into `<img>` + `<IMG_CONTEXT>` x (image_seq_length x tiles) + `</img>`.
A video part renders as `<video>\\n`, which becomes one line per frame, "Frame1: <img><IMG_CONTEXT>...</img>" (one
tile's context tokens each), the lines joined by "\\n". The generation prompt is `<|im_start|>assistant\\n`; the
trained tokens are the answer and `<|im_end|>` (the checkpoints' eos; the template's `\\n` after it is not trained).

Traps handled here:
- Dynamic tiling (`crop_to_patches`): each image is resized to the grid of `size` tiles (between min_patches and
  max_patches of them) whose aspect ratio is closest to the image's, plus one thumbnail tile when the grid has more
  than one; every tile is `image_seq_length` tokens. `image_tokens` asks the processor's own count
  (`_get_num_multimodal_tokens`, with the processor's defaults merged in: InternVLProcessor switches
  `crop_to_patches` on at call time even where the checkpoint's preprocessor_config.json says false).
  `model.max_pixels` lowers `max_patches` (data/resize.py `limit_pixels`).
- `InternVLProcessor` insists on a video processor, which needs torchvision (absent here), and the checkpoints name
  the torchvision image processor (`GotOcr2ImageProcessorFast`). `ImageOnlyProcessor` is InternVLProcessor without
  the video half, on the PIL image processor (`GotOcr2ImageProcessorPil`, same tiling and outputs); it saves itself
  as `InternVLProcessor` + `GotOcr2ImageProcessor`, which plain transformers reloads (as qwen2_vl.py does).
- InternVLProcessor pads on the LEFT by default (its `text_kwargs`): training passes `padding_side="right"`.
- The `<img>` / `</img>` around each image's context tokens are embedded, never labelled: the ids the label
  mapping compares with are the template's text with each `<IMG_CONTEXT>` written as `<img><IMG_CONTEXT></img>`.
  `image_tokens` counts them with the context tokens (InternVLProcessor's `image_token_ids` names all three).
- Video (`encode(..., videos=)`): upstream's InternVLVideoProcessor needs torchvision. `encode_videos` does what
  InternVLProcessor does without it: each `<video>` expanded as `replace_video_token` writes it (`video_prompt`),
  each frame resized to the video `size` (one tile, never split), rescaled and normalized by the PIL image processor
  (`video_pixels`), and the frames merged into the one `pixel_values` with the images' tiles in slot order (the model
  has no video input: frames are tiles to it). Checked against upstream with torchvision (tests/golden/
  internvl_video.npz): the real tokenizer's ids token for token, frames exact where not resized, else within PIL's
  and torchvision's antialiased bicubic difference. The frames' settings are the checkpoint's
  video_preprocessor_config.json over InternVLVideoProcessor's defaults (384x384, CLIP mean / std), as upstream
  reads them; without one the image processor's. `video_tokens` counts the `<IMG_CONTEXT>` positions
  (image_seq_length a frame); the "FrameN: " text and each frame's `<img>` `</img>` count as text.
- The frozen-vision cache is not declared: `get_image_features` returns one row per *tile*, not per image, which
  the cache (one entry per image or per sample) does not split.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from tokenizers import Regex, pre_tokenizers

from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.models.family import Batch, Loaded, ModelFamily, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, answer_spans, check_length, expanded_labels
from vlmtune.models.qwen2_vl import _SPLIT, video_lists, write_upstream_processor_files

LANGUAGE_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
END = "<|im_end|>"
IMAGE, START_IMAGE, END_IMAGE, VIDEO = "<IMG_CONTEXT>", "<img>", "</img>", "<video>"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", END, START_IMAGE, END_IMAGE, IMAGE, VIDEO]
UPSTREAM = "InternVLProcessor"

# The chat template of OpenGVLab/InternVL3-*-hf (tokenizer_config.json).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)


def __getattr__(name: str):
    # built on first use: defining it imports transformers, which importing the family registry must not do
    if name == "ImageOnlyProcessor":
        return image_only_processor()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def image_only_processor() -> type:
    """`ImageOnlyProcessor`, registered with AutoProcessor for InternVLConfig."""
    from transformers import AutoProcessor, InternVLConfig, InternVLProcessor

    class ImageOnlyProcessor(InternVLProcessor):
        """InternVLProcessor without its video processor (which needs torchvision); images and text go through the
        very same code."""

        def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None,
                     **kwargs):
            super().__init__(image_processor, tokenizer, None, image_seq_length=image_seq_length,
                             chat_template=chat_template, **kwargs)

        def save_pretrained(self, save_directory, *args, **kwargs):
            out = super().save_pretrained(save_directory, *args, **kwargs)
            write_upstream_processor_files(Path(save_directory), UPSTREAM, self.image_processor)
            write_video_config(Path(save_directory), self)
            return out

    ImageOnlyProcessor.__qualname__ = ImageOnlyProcessor.__name__
    AutoProcessor.register(InternVLConfig, ImageOnlyProcessor, exist_ok=True)
    return ImageOnlyProcessor


VIDEO_KEYS = ("size", "resample", "do_resize", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
              "image_std", "do_convert_rgb")

VIDEO_DEFAULTS = {"size": {"height": 384, "width": 384}, "resample": 3, "do_resize": True, "do_rescale": True,
                  "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                  "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True}
"""InternVLVideoProcessor's class defaults (bicubic, CLIP mean / std): what a video config leaves out."""


def write_video_config(directory: Path, processor) -> None:
    """`video_preprocessor_config.json` as the -hf checkpoints have it (`video_settings`: the frames' preprocessing),
    unless the directory has one: without it, plain transformers' AutoProcessor cannot tell which video processor
    InternVLProcessor wants and fails; with it, it builds InternVLVideoProcessor (given torchvision)."""
    path = directory / "video_preprocessor_config.json"
    if not path.exists():
        settings = video_settings(processor)
        if "resample" in settings:
            settings["resample"] = int(settings["resample"])  # a PIL resampling enum in some versions
        config = {**settings, "processor_class": UPSTREAM, "video_processor_type": "InternVLVideoProcessor"}
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def video_settings(processor) -> dict:
    """How InternVLVideoProcessor preprocesses frames: the checkpoint's video_preprocessor_config.json (what upstream
    reads; `load_processor` keeps it as `video_config`) over InternVLVideoProcessor's defaults, else the image
    processor's settings (the -hf checkpoints' video config repeats them; `write_video_config` writes them so)."""
    config = getattr(processor, "video_config", None)
    if config is None:
        return {k: v for k, v in processor.image_processor.to_dict().items() if k in VIDEO_KEYS}
    return {**VIDEO_DEFAULTS, **{k: v for k, v in config.items() if k in VIDEO_KEYS}}


def load_processor(path, **options):
    """The processor of an InternVL -hf checkpoint (or a vlmtune checkpoint of one), image half only, PIL images."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    from transformers.utils import cached_file

    image_processor = GotOcr2ImageProcessorPil.from_pretrained(path, **options)
    # what InternVLProcessor does at call time, made the image processor's own setting (the -hf checkpoints save
    # false), so that resizing limits and `model.max_pixels` (data/resize.py) see the tiling
    image_processor.crop_to_patches = True
    processor = image_only_processor().from_pretrained(path, image_processor=image_processor, **options)
    video_config = cached_file(path, "video_preprocessor_config.json", _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False)
    if video_config is not None:
        processor.video_config = json.loads(Path(video_config).read_text())
    return processor


def load(cfg) -> Loaded:
    # the checkpoint's tokenizer, chat template and tiling settings, on the PIL image processor, without video
    return load_pretrained(cfg, "internvl", SimpleNamespace(from_pretrained=load_processor),
                           freeze_groups=FREEZE_GROUPS)


def context_tokens(processor, width: int, height: int) -> int:
    """`<IMG_CONTEXT>` tokens for one image: image_seq_length per tile (the tiles of the best grid + a thumbnail),
    counted by the processor's own function with its call-time defaults."""
    return processor._get_num_multimodal_tokens(image_sizes=[(height, width)])["num_image_tokens"][0]


def image_tokens(processor, width: int, height: int) -> int:
    """The positions one image takes: its `<IMG_CONTEXT>` tokens and the `<img>` `</img>` around them (what
    `processor.image_token_ids` names)."""
    return context_tokens(processor, width, height) + 2


def encode(processor, samples, images, mode: str, max_length: int, videos=None) -> Batch:
    """Samples -> model inputs. "train": the whole conversation, labels only on assistant answers + their
    `<|im_end|>`, right padding. "generate": the conversation up to `<|im_start|>assistant\\n`, left padding.
    A sample longer than `max_length` (image and video tokens included) raises SampleTooLong; nothing is cut.
    `videos`: per sample, the `Video`s of its `{"type": "video"}` slots (a batch with one: `encode_videos`)."""
    videos = video_lists(samples, videos)
    if any(videos):
        return encode_videos(processor, samples, images, mode, max_length, videos)
    tok = processor.tokenizer
    train = mode == "train"
    end_id = tok.convert_tokens_to_ids(END)
    one_image = processor.start_image_token + processor.image_token + processor.end_image_token

    def render(messages, add_generation_prompt):
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def tokenize(texts):  # the processor's ids with one <IMG_CONTEXT> per image
        return tok([t.replace(processor.image_token, one_image) for t in texts]).input_ids

    flat = load_image_list(samples, images)
    texts = [render(s.messages if train else s.prompt_messages, not train) for s in samples]
    tokenized = []  # per sample: (ids with one <IMG_CONTEXT> per image, assistant spans, image tokens per image)
    for s, text, imgs in zip(samples, texts, images, strict=True):
        per_image = [context_tokens(processor, img.width, img.height) for img in imgs]
        if train:
            unexpanded, spans = answer_spans(tokenize, render, s.messages, s.id, end_id, END)
        else:
            unexpanded, spans = tokenize([text])[0], []
        # an image's <img> </img> count as its tokens (image_tokens), not as text
        check_length(s.id, sum(per_image) + 2 * len(imgs), len(unexpanded) - 3 * len(imgs), max_length, resize=True)
        tokenized.append((unexpanded, spans, per_image))
    out = processor(text=texts, images=flat or None, padding=True, padding_side="right" if train else "left",
                    return_tensors="pt")
    inputs = dict(out)  # input_ids, attention_mask (+ pixel_values: every tile of every image, in order)
    n_target = 0
    if train:
        labels = expanded_labels(out["input_ids"], out["attention_mask"], processor.image_token_id,
                                 [s.id for s in samples], tokenized)
        n_target = int((labels != IGNORE_INDEX).sum())
        inputs["labels"] = labels
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=n_target)


def video_prompt(processor, video) -> str:
    """The text a `<video>` becomes (InternVLProcessor.replace_video_token): per frame "Frame<i>: " and one tile's
    context tokens between `<img>` `</img>`, frames joined by "\\n"."""
    tile = processor.start_image_token + processor.image_token * processor.image_seq_length + processor.end_image_token
    return "\n".join(f"Frame{i + 1}: {tile}" for i in range(len(video.frames)))


def video_tokens(processor, video) -> int:
    """The `<IMG_CONTEXT>` positions of one `Video`: `image_seq_length` per frame (its "Frame<i>: " and `<img>`
    `</img>` count as text)."""
    return len(video.frames) * processor.image_seq_length


def video_pixels(processor, video) -> np.ndarray:
    """(frames, 3, H, W): what InternVLVideoProcessor (torchvision) gives, with the PIL image processor: each frame
    resized to the video `size` (one tile, never split), rescaled and normalized with `video_settings`."""
    return processor.image_processor(list(video.frames), **video_settings(processor), crop_to_patches=False,
                                     return_tensors="np")["pixel_values"]


def encode_videos(processor, samples, images, mode: str, max_length: int, videos: list[list]) -> Batch:
    """`encode` for a batch with a video, as InternVLProcessor without torchvision: each `<video>` expanded to
    `video_prompt`, each image to its tiles' context tokens (the processor's own call, one image at a time), and
    `pixel_values` every image's tiles and every video's frames in slot order, sample after sample."""
    import torch

    tok = processor.tokenizer
    train = mode == "train"
    end_id = tok.convert_tokens_to_ids(END)
    load_image_list(samples, images)

    def render(messages, add_generation_prompt):
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def tokenize(replacements, texts):  # each placeholder (image or video, in order) -> its expansion
        parts = [processor.multimodal_pattern.split(t)[::3] for t in texts]  # split keeps the two named groups
        return tok([p[0] + "".join(r + q for r, q in zip(replacements, p[1:], strict=False)) for p in parts]).input_ids

    rows, units = [], []
    for s, imgs, vids in zip(samples, images, videos, strict=True):
        text = render(s.messages if train else s.prompt_messages, not train)
        img_it, vid_it = iter(imgs), iter(vids)
        replacements, n_image = [], 0
        for match in processor.multimodal_pattern.finditer(text):
            if match.lastgroup == "video":
                video = next(vid_it)
                units.append(video_pixels(processor, video))
                replacements.append(video_prompt(processor, video))
            else:
                img = next(img_it)
                tiles = processor(text=[IMAGE], images=[img], return_tensors="np")["pixel_values"]
                units.append(tiles)
                replacements.append(START_IMAGE + IMAGE * (processor.image_seq_length * len(tiles)) + END_IMAGE)
                n_image += processor.image_seq_length * len(tiles) + 2  # its <img> </img> with it (image_tokens)
        if train:
            ids, spans = answer_spans(functools.partial(tokenize, replacements), render, s.messages, s.id, end_id, END)
        else:
            ids, spans = tokenize(replacements, [text])[0], []
        n_video = sum(video_tokens(processor, v) for v in vids)
        check_length(s.id, n_image, len(ids) - n_image - n_video, max_length, resize=True, n_video=n_video)
        rows.append((ids, spans))
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), tok.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for b, (ids, spans) in enumerate(rows):
        at = 0 if train else length - len(ids)  # right padding to train, left to generate
        input_ids[b, at:at + len(ids)] = torch.tensor(ids)
        attention_mask[b, at:at + len(ids)] = 1
        for start, end in spans:
            labels[b, at + start:at + end] = torch.tensor(ids[start:end])
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
              "pixel_values": torch.from_numpy(np.concatenate(units).astype(np.float32))}
    if train:
        inputs["labels"] = labels
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=int((labels != IGNORE_INDEX).sum()))


_CORPUS = [
    "<|im_start|>user\n<|im_start|>assistant\n",
    "What colour is the top? What colour are the trousers? Describe the image.",
    "a person wearing a red top and blue trousers",
    "red blue green yellow white black orange purple pink grey brown",
    "what which who where how many is are the a an of in on at with and or not yes no there this that",
    "shirt dress skirt jacket coat shoes hat shape circle square triangle left right top bottom one two three",
]


def build_tokenizer():
    """A small byte-level BPE trained in-process with Qwen2's pre-tokenizer and InternVL's image tokens, named as
    the checkpoints' tokenizer_config.json names them (start/end/context image token, video token)."""
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_bpe(_CORPUS * 20, SPECIAL_TOKENS, 640, pre_tokenizer=pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]))
    # as in the -hf checkpoints: no BOS, eos <|im_end|>, pad <|endoftext|>
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=END, pad_token="<|endoftext|>", model_max_length=4096,
        extra_special_tokens={"start_image_token": START_IMAGE, "end_image_token": END_IMAGE,
                              "context_image_token": IMAGE, "video_token": VIDEO})


def build_processor(max_patches: int = 6):
    """Tokenizer + PIL image processor: 32x32 tiles, 1..`max_patches` of them + a thumbnail, 4 tokens per tile."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    image_processor = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True,
                                               min_patches=1, max_patches=max_patches)
    return image_only_processor()(image_processor, build_tokenizer(), image_seq_length=4,
                                  chat_template=CHAT_TEMPLATE)


def tiny() -> Loaded:
    """A random InternVL: InternViT 2 layers dim 32 on 32x32 tiles (patch 8: 4x4 patches, shuffled to 2x2 = 4
    tokens), projector into a 2-layer Qwen2 decoder dim 32; special token ids and generation config as in the
    -hf checkpoints."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    processor = build_processor()
    tok = processor.tokenizer
    end, pad = tok.convert_tokens_to_ids(END), tok.pad_token_id
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                  patch_size=8)
    text = dict(model_type="qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=pad,
                eos_token_id=end, pad_token_id=pad, tie_word_embeddings=False)
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=processor.image_token_id,
                            image_seq_length=4, downsample_ratio=0.5, tie_word_embeddings=False)
    model = InternVLForConditionalGeneration(config).float()
    model.generation_config.bos_token_id = pad
    model.generation_config.pad_token_id = pad
    model.generation_config.eos_token_id = [end, pad]  # stop at <|im_end|> or <|endoftext|>
    return Loaded(model=model, processor=processor, family="internvl")


FREEZE_GROUPS = {
    "vision": ("model.vision_tower.",),
    "projector": ("model.multi_modal_projector.",),
    "language": ("model.language_model.", "lm_head."),
}

FAMILY = ModelFamily(
    name="internvl",
    description="InternVL 3/3.5 (OpenGVLab/InternVL3-*-hf, InternVL3_5-*-HF): tiled InternViT -> pixel-shuffle MLP "
                "-> Qwen2/Qwen3",
    load=load,
    encode=encode,
    # regex: the language model's linears only (InternViT's attention is q_proj/k_proj/v_proj too)
    lora_targets=(r".*language_model.*\.(" + "|".join(LANGUAGE_LINEARS) + ")",),
    freeze_groups=FREEZE_GROUPS,
    tiny=tiny,
    image_tokens=image_tokens,
    video_tokens=video_tokens,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    projector_modules=("multi_modal_projector",),
    packing=True,  # a Qwen2 LM with 1-D positions, no token types: samples can share a row
    processor_loader=load_processor,
    language_model="model.language_model",
    vision_tower="model.vision_tower",
)
