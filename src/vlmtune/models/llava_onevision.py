"""LLaVA-OneVision family (`LlavaOnevisionForConditionalGeneration`): SigLIP -> MLP projector -> Qwen2, AnyRes-max-9.

Checkpoints: llava-hf/llava-onevision-qwen2-0.5b-ov-hf, llava-hf/llava-onevision-qwen2-7b-ov-hf (-72b-ov-hf, the
-si-hf single-image ones and the -ov-chat-hf ones share the template and processor).
Prompt format: the -ov-hf checkpoints' chat template (CHAT_TEMPLATE, copied from their chat_template.json):

    <|im_start|>user <image>\\nWhat colour is the top?<|im_end|><|im_start|>assistant\\nred<|im_end|>

(no system prompt, no "\\n" between turns). The trained tokens are the answer and `<|im_end|>` (the checkpoints'
eos, what generation stops at).

Traps handled here:
- The template renders an assistant turn as "<|im_start|>assistant \\n..." (the role, then a space: every role gets
  one) but the generation prompt as "<|im_start|>assistant\\n": trained as rendered, the model would learn answers
  after a prefix it never sees when generating (and the assistant spans are not a prefix of the conversation).
  `render` writes the assistant header as the generation prompt does, which is also how the original LLaVA-OneVision
  training formatted it (the "qwen_1_5" conversation: "<|im_start|>assistant\\n"). Templates without the space are
  untouched.
- AnyRes-max-9: a single image is resized into the best of `image_grid_pinpoints`, cut into tiles plus one overview,
  the tile features unpadded back to the image's aspect ratio, one `image_newline` per row, and the grid scaled down
  (bilinear) when it holds more than 9 tiles' worth of features. `image_tokens` asks the processor's own count
  (`_get_number_of_features`, what its placeholder expansion uses); tests check it for several sizes and ratios.
- A sample with several images is NOT tiled: each image is padded to a square, one tile + one newline feature. The
  processor decides from the nesting of `images` (per sample) and returns `batch_num_images`, which the model needs
  to agree: `encode` passes images nested per sample and counts each image's tokens the same way.
- `LlavaOnevisionProcessor` declares a video processor, which needs torchvision (absent here): `load_processor`
  builds the processor from the checkpoint's PIL image processor and tokenizer without one. Saved, the directory
  has a video_preprocessor_config.json only when the checkpoint had one (written back as read), and plain
  transformers' AutoProcessor reloads it (with torchvision, its video processor then reads that file, else
  preprocessor_config.json: the settings `frame_settings` uses too).
- Video (`encode(..., videos=)`): the template writes a turn's `<image>`s, then its `<video>`s, then its text
  ("<|im_start|>user <video>\\nWhat happens?<|im_end|>"). Each `<video>` expands to frames x the tile's features
  pooled 2x2 (ceil: 27x27 -> 14x14 for the checkpoints' 384 px SigLIP tiles) + 1, the whole video's one
  `image_newline` (`video_tokens`, upstream's `replace_video_token`). `pixel_values_videos` (videos, frames, 3, H, W)
  is LlavaOnevisionVideoProcessor's output built with PIL and NumPy (`video_pixels`): each frame resized (bicubic)
  straight to the tile's size, no AnyRes tiling or padding, and normalized; equal to upstream's torchvision output
  to float rounding when no resize is needed, else within one 8-bit level (tests/golden/llava_onevision_video.npz).
- The model takes a batch's videos as ONE 5-D tensor (`get_video_features` reads `batch, frames` from its shape), and
  upstream's video processor cannot stack videos of different lengths either: `encode` refuses a batch whose videos
  differ in frame count with one line naming the samples and their counts (a batch of 1, or a fixed frame count
  via data.video {fps: null, max_frames: N}, avoids it). Videos of one count in a batch, with image and text-only
  samples beside them, are fine.
- `model.image_newline` is a parameter outside every submodule: it belongs to the projector group.

No real files of these checkpoints are in ../shared/real-models: the tiny model carries the real chat template,
special tokens and processor classes, but the image settings are checked only against transformers' own code.
"""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image
from tokenizers import Regex, pre_tokenizers

from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.models.family import Batch, Loaded, ModelFamily, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, answer_spans, check_length, expanded_labels
from vlmtune.models.qwen2_vl import _SPLIT, LANGUAGE_LINEARS, video_lists, write_upstream_processor_files

END = "<|im_end|>"
IMAGE = "<image>"
VIDEO = "<video>"
VIDEO_CONFIG = "video_preprocessor_config.json"
UPSTREAM = "LlavaOnevisionProcessor"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", END, IMAGE, VIDEO]

# The chat template of llava-hf/llava-onevision-qwen2-{0.5b,7b,72b}-ov-hf (chat_template.json)
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ASSISTANT_AS_TRAINED = ("<|im_start|>assistant \n", "<|im_start|>assistant\n")
"""The template's assistant header -> the generation prompt's (see the docstring's first trap)."""


def __getattr__(name: str):
    # ImageOnlyProcessor is built on first use (defining it imports transformers); resolving it here lets pickle
    # find it by name, as in qwen2_vl.py
    if name == "ImageOnlyProcessor":
        return image_only_processor()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def image_only_processor() -> type:
    """`ImageOnlyProcessor`: LlavaOnevisionProcessor without its video processor (torchvision); saved under the
    upstream class name, so the files load with plain transformers."""
    from transformers import LlavaOnevisionProcessor

    class ImageOnlyProcessor(LlavaOnevisionProcessor):
        """LlavaOnevisionProcessor's image and text code without a video processor: transformers takes the
        sub-processors, and the settings it saves, from the names in this signature. Videos
        (`vlmtune.data.video.Video`s) go through `video_pixels` (no torchvision)."""

        video_config = None
        """The checkpoint's video_preprocessor_config.json (`load_processor`), written back on save; None: frames are
        processed with the image processor's settings, as upstream's video processor falls back to them."""

        def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                     vision_feature_select_strategy=None, chat_template=None, image_token="<image>",
                     video_token="<video>", vision_aspect_ratio="anyres_max_9", **kwargs):
            super().__init__(image_processor, tokenizer, None, num_image_tokens, vision_feature_select_strategy,
                             chat_template, image_token, video_token, vision_aspect_ratio, **kwargs)

        def __call__(self, images=None, text=None, videos=None, **kwargs):
            """Upstream's call, with `videos` as `Video`s (one per `<video>` of `text`, in order): each `<video>`
            expanded as upstream's `replace_video_token` does, `pixel_values_videos` from `video_pixels`."""
            texts = [text] if isinstance(text, str) else list(text or [])
            found = sum(t.count(self.video_token) for t in texts)
            if found != len(videos or []):
                raise ValueError(f"{found} {self.video_token} in the text but {len(videos or [])} video(s)")
            if not videos:
                return super().__call__(images=images, text=text, **kwargs)
            it = iter(videos)
            texts = [re.sub(re.escape(self.video_token), lambda m: self.video_token * video_tokens(self, next(it)), t)
                     for t in texts]
            out = super().__call__(images=images, text=texts, **kwargs)
            out["pixel_values_videos"] = video_pixels(self, videos)
            return out

        def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
            # the video tokens are expanded by __call__ (upstream asks the video processor this class lacks)
            if isinstance(text, list):
                text = [t.replace(self.video_token, "") if isinstance(t, str) else t for t in text]
            super().validate_inputs(images=images, text=text, videos=None, audio=audio, **kwargs)

        def save_pretrained(self, save_directory, *args, **kwargs):
            out = super().save_pretrained(save_directory, *args, **kwargs)
            write_upstream_processor_files(Path(save_directory), UPSTREAM, self.image_processor)
            if self.video_config is not None:  # as the checkpoint had it
                (Path(save_directory) / VIDEO_CONFIG).write_text(json.dumps(self.video_config, indent=2) + "\n")
            return out

    ImageOnlyProcessor.__qualname__ = ImageOnlyProcessor.__name__
    return ImageOnlyProcessor


def read_video_config(processor, path) -> None:
    """A local checkpoint's video_preprocessor_config.json (which upstream's video processor prefers to
    preprocessor_config.json) -> `processor.video_config`."""
    file = Path(path) / VIDEO_CONFIG
    if file.is_file():
        processor.video_config = json.loads(file.read_text())


def load_processor(path, **options):
    """The processor of a LLaVA-OneVision checkpoint (or a vlmtune checkpoint of one), without torchvision."""
    processor = image_only_processor().from_pretrained(path, **options)
    read_video_config(processor, path)
    return processor


def load(cfg) -> Loaded:
    loaded = load_pretrained(cfg, "llava_onevision", image_only_processor(), freeze_groups=FAMILY.freeze_groups)
    read_video_config(loaded.processor, cfg.path)
    return loaded


def image_token_count(processor, width: int, height: int, alone: bool = True) -> int:
    """`<image>` tokens of one image of this size, exactly as LlavaOnevisionProcessor expands the placeholder: tiled
    (AnyRes-max-9) when the image is its sample's only one (`alone`), else one tile and one newline."""
    ip = processor.image_processor
    tile = ip.size.get("height") if isinstance(ip.size, dict) else ip.size.height
    if alone:
        n = processor._get_number_of_features(height, width, tile, tile)
    else:
        n = processor.num_image_tokens + 1
    return n - 1 if processor.vision_feature_select_strategy == "default" else n


def video_tokens(processor, video) -> int:
    """`<video>` tokens of one video, as LlavaOnevisionProcessor.replace_video_token expands it: per frame the
    tile's features pooled 2x2 (ceil), then one `image_newline` for the whole video."""
    pooled = math.ceil(int(math.sqrt(processor.num_image_tokens)) / 2)
    return len(video.frames) * pooled * pooled + 1


FRAME_SETTINGS = ("size", "resample", "do_resize", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                  "image_std")
"""What LlavaOnevisionVideoProcessor does to a frame; its values: the checkpoint's video_preprocessor_config.json's,
else the image processor's (upstream's video processor reads preprocessor_config.json when there is no video one)."""


def frame_settings(processor) -> dict:
    ip = processor.image_processor
    settings = {k: getattr(ip, k) for k in FRAME_SETTINGS} | {
        k: v for k, v in (processor.video_config or {}).items() if k in FRAME_SETTINGS}
    size = settings["size"]
    size = size if isinstance(size, dict) else {k: getattr(size, k, None) for k in ("height", "width")}
    if size.get("height") is None or size.get("width") is None:
        raise ValueError(f"LLaVA-OneVision video frames need a {{height, width}} size (the vision tower's tile), got "
                         f"{dict(size)}")
    return settings | {"size": (size["height"], size["width"])}


def video_pixels(processor, videos):
    """`pixel_values_videos` (videos, frames, 3, H, W) as LlavaOnevisionVideoProcessor (torchvision) makes it, with PIL
    and NumPy: each frame RGB, resized (bicubic) to the tile's size, no AnyRes tiling, rescaled and normalized.
    Upstream stacks the videos into one tensor, so they must have one frame count."""
    import torch

    counts = sorted({len(v.frames) for v in videos})
    if len(counts) > 1:
        raise ValueError(f"videos of {counts} frames in one batch: LLaVA-OneVision takes a batch's videos as one "
                         "(videos, frames, 3, H, W) tensor")
    s = frame_settings(processor)
    h, w = s["size"]
    mean, std = np.asarray(s["image_mean"], np.float32), np.asarray(s["image_std"], np.float32)
    out = []
    for frame in (f for v in videos for f in v.frames):
        frame = frame.convert("RGB")
        if s["do_resize"] and frame.size != (w, h):
            frame = frame.resize((w, h), Image.Resampling(int(s["resample"])))
        x = np.asarray(frame, dtype=np.float32)
        if s["do_rescale"]:
            x = x * np.float32(s["rescale_factor"])
        if s["do_normalize"]:
            x = (x - mean) / std
        out.append(x.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out).reshape(len(videos), counts[0], 3, h, w))


def render(processor, messages, add_generation_prompt: bool) -> str:
    """The chat template's text, with each assistant header written as the generation prompt writes it."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return text.replace(*ASSISTANT_AS_TRAINED)


def encode(processor, samples, images, mode: str, max_length: int, videos=None) -> Batch:
    """Samples -> model inputs. "train": the whole conversation, labels only on the answers + `<|im_end|>`, right
    padding. "generate": the conversation up to `<|im_start|>assistant\\n`, left padding. Too long (image and video
    tokens included): SampleTooLong. `videos`: per sample, the `Video`s of its `{"type": "video"}` slots (a batch's
    videos must have one frame count: see `video_pixels`)."""
    tok = processor.tokenizer
    train = mode == "train"
    end_id = tok.convert_tokens_to_ids(END)
    image_id, video_id = processor.image_token_id, processor.video_token_id
    videos = video_lists(samples, videos)
    frames = {s.id: [len(v.frames) for v in vids] for s, vids in zip(samples, videos, strict=True) if vids}
    if len({n for counts in frames.values() for n in counts}) > 1:
        raise ValueError(f"samples {list(frames)}: videos of {frames} frames in one batch; LLaVA-OneVision takes a "
                         "batch's videos as one (videos, frames, 3, H, W) tensor, so they need one frame count: a "
                         "batch of 1, or data.video {fps: null, max_frames: N} on clips of N frames or more")

    def rendered(messages, add_generation_prompt):
        return render(processor, messages, add_generation_prompt)

    texts = [rendered(s.messages if train else s.prompt_messages, not train) for s in samples]
    tokenized = []  # per sample: (ids with one <image> / <video> each, assistant spans, tokens per placeholder)
    for s, text, imgs, vids in zip(samples, texts, images, videos, strict=True):
        if train:
            unexpanded, spans = answer_spans(lambda ts: tok(ts).input_ids, rendered, s.messages, s.id, end_id, END)
        else:
            unexpanded, spans = tok(text).input_ids, []
        counts = [image_token_count(processor, *img.size, alone=len(imgs) == 1) for img in imgs]
        per_video = [video_tokens(processor, v) for v in vids]
        check_length(s.id, sum(counts), len(unexpanded) - len(imgs) - len(vids), max_length, resize=True,
                     n_video=sum(per_video))
        order = {image_id: iter(counts), video_id: iter(per_video)}  # the template writes images, then videos
        tokenized.append((unexpanded, spans, [next(order[t]) for t in unexpanded if t in order]))
    has_images = bool(load_image_list(samples, images))
    nested = [list(imgs) for imgs in images] if has_images else None  # per sample: tiled only when alone
    flat_videos = [v for vids in videos for v in vids]
    out = processor(text=texts, images=nested, videos=flat_videos or None, padding=True,
                    padding_side="right" if train else "left", return_tensors="pt")
    inputs = dict(out)  # input_ids, attention_mask (+ pixel_values, image_sizes, batch_num_images, pixel_values_videos)
    n_target = 0
    if train:
        labels = expanded_labels(out["input_ids"], out["attention_mask"], (image_id, video_id),
                                 [s.id for s in samples], tokenized)
        n_target = int((labels != IGNORE_INDEX).sum())
        inputs["labels"] = labels
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=n_target)


_CORPUS = [
    "<|im_start|>user <image>\nWhat colour is the top?<|im_end|><|im_start|>assistant\nred<|im_end|>",
    "What colour is the top? What colour are the trousers? Describe the image.",
    "a person wearing a red top and blue trousers",
    "red blue green yellow white black orange purple pink grey brown",
    "what which who where how many is are the a an of in on at with and or not yes no there this that",
]


def build_tokenizer():
    """A small byte-level BPE trained in-process with Qwen2's pre-tokenizer and the -ov-hf checkpoints' special
    tokens (eos `<|im_end|>`, pad `<|endoftext|>`, `<image>`, `<video>`)."""
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_bpe(_CORPUS * 20, SPECIAL_TOKENS, 600, pre_tokenizer=pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=END, pad_token="<|endoftext|>",
                                   extra_special_tokens={"image_token": IMAGE, "video_token": "<video>"},
                                   model_max_length=4096)


TILE, PATCH = 32, 8
PINPOINTS = [[TILE * i, TILE * j] for i in range(1, 5) for j in range(1, 5)]
"""The tiny model's grid: tiles of 32 px up to 4 x 4 (the checkpoints: 384 px up to 6 x 6), so that large images take
more than 9 tiles and are scaled down as anyres_max_9 does."""


def build_processor():
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    image_processor = LlavaOnevisionImageProcessorPil(size={"height": TILE, "width": TILE},
                                                      image_grid_pinpoints=PINPOINTS)
    return image_only_processor()(image_processor=image_processor, tokenizer=build_tokenizer(),
                                   num_image_tokens=(TILE // PATCH) ** 2, vision_feature_select_strategy="full",
                                   chat_template=CHAT_TEMPLATE, vision_aspect_ratio="anyres_max_9")


def tiny() -> Loaded:
    """A random LLaVA-OneVision: SigLIP 1 layer dim 32 on 32x32 tiles (patch 8, 16 features a tile, no CLS), Qwen2
    2 layers dim 32, with the real chat template and an in-process tokenizer."""
    import torch
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    processor = build_processor()
    tok = processor.tokenizer
    vision = dict(model_type="siglip_vision_model", image_size=TILE, patch_size=PATCH, hidden_size=32,
                  intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vision_use_head=False)
    text = dict(model_type="qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.pad_token_id,
                tie_word_embeddings=False)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_grid_pinpoints=PINPOINTS,
                                  image_token_id=processor.image_token_id, video_token_id=processor.video_token_id,
                                  vision_feature_select_strategy="full", vision_feature_layer=-1,
                                  vision_aspect_ratio="anyres_max_9", tie_word_embeddings=False)
    model = LlavaOnevisionForConditionalGeneration(config).to(torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.pad_token_id
    return Loaded(model=model, processor=processor, family="llava_onevision")


FAMILY = ModelFamily(
    name="llava_onevision",
    description="LLaVA-OneVision (llava-hf/llava-onevision-qwen2-*-ov-hf): AnyRes-max-9 SigLIP tiles -> MLP -> Qwen2",
    load=load,
    encode=encode,
    # regex: the language model's linears only (SigLIP has q_proj/k_proj/v_proj too)
    lora_targets=(r".*language_model.*\.(" + "|".join(LANGUAGE_LINEARS) + ")",),
    freeze_groups={
        "vision": ("model.vision_tower.",),
        "projector": ("model.multi_modal_projector.", "model.image_newline"),
        "language": ("model.language_model.", "lm_head."),
    },
    tiny=tiny,
    image_tokens=image_token_count,
    video_tokens=video_tokens,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    projector_modules=("multi_modal_projector",),
    processor_loader=load_processor,
    packing=True,  # a Qwen2 LM with 1-D positions: samples can share a row
    vision_cache=True, video_cache="videos",  # mm_encoder_outputs: images, and videos (get_video_features)
    language_model="model.language_model",
    vision_tower="model.vision_tower",
)
