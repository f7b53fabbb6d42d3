"""Qwen2-VL family (`Qwen2VLForConditionalGeneration`): ViT with 2D rotary -> 2x2 patch merger -> Qwen2 decoder
with multimodal rotary positions (M-RoPE).

Checkpoints: Qwen/Qwen2-VL-2B-Instruct, Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2-VL-72B-Instruct (and fine-tunes).
Qwen2.5-VL (qwen2_5_vl.py) reuses this file's processor, `encode` and `image_tokens`.

Prompt format: the checkpoints' ChatML chat template, rendered through the processor:

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>What colour is the top?<|im_end|>\\n
    <|im_start|>assistant\\nred<|im_end|>\\n

The generation prompt is `<|im_start|>assistant\\n`. The trained tokens are the answer and `<|im_end|>`, the token
generation stops at (the template's `\\n` after it is not trained).

Traps handled here:
- Dynamic resolution: each image is resized to multiples of patch x merge within [min_pixels, max_pixels], so its
  number of `<|image_pad|>` tokens (merged patches, grid_thw.prod() // merge**2) depends on its size;
  `image_tokens` asks the image processor's own resize logic.
- `Qwen2VLProcessor` insists on a video processor, which needs torchvision (absent here). vlmtune feeds images
  only, so `ImageOnlyProcessor` is Qwen2VLProcessor without the video processor: the same image/text code, the same
  outputs (`input_ids` with expanded `<|image_pad|>`, `pixel_values`, `image_grid_thw`, `mm_token_type_ids`).
  vlmtune loads it the family's way (`ModelFamily.load_processor`). It saves itself as the upstream class
  (`processor_class: Qwen2VLProcessor` / `Qwen2_5_VLProcessor`, plus the checkpoint's `preprocessor_config.json`
  layout), so a checkpoint or export loads in a fresh process with plain transformers and no vlmtune (the upstream
  processor then wants torchvision for its video half, as it does for the original checkpoint).
- `mm_token_type_ids` must reach the model: Qwen2-VL raises without it, Qwen2.5-VL silently computes wrong rotary
  positions. The processor returns it and `encode` passes every processor output on.
- In tiny configs `mrope_section` must sum to head_dim / 2.
- Video (`encode(..., videos=)`, a `{"type": "video"}` slot -> `<|vision_start|><|video_pad|><|vision_end|>`):
  upstream's video processor needs torchvision, so `video_inputs` builds `pixel_values_videos` and `video_grid_thw`
  from the PIL image processor's patches (frames resized by smart_resize within the video pixel bounds, paired by
  temporal_patch_size, an odd count padded with the last frame): upstream's output (tests/golden; exact where frames
  need no resize, else within PIL's and torchvision's bicubic difference). Without a video_preprocessor_config.json
  (the Qwen2-VL / 2.5-VL checkpoints) frames get the image pixel bounds, as upstream. `video_tokens` is the expanded
  `<|video_pad|>` count; the processor's `video_placeholder` / `video_pad_counts` / `video_frames` are what
  Qwen3-VL (qwen3_vl.py: timestamps per temporal patch) overrides.
- Qwen2.5-VL's `second_per_grid_ts` (temporal_patch_size / fps; upstream's default 24 fps without metadata) goes to
  the model as a list of floats: as a float tensor `Batch.to` would cast it to bf16, and the model multiplies it
  into the rotary time positions before rounding them down.
- Packing (`train.packing`): 1-D or 3-row `position_ids` make the decoder see one sequence (it finds packed samples
  only in a 4-row tensor's first row, the text positions) and lose the images' 2-D rotary positions; `pack_inputs`
  gives it each sample's `get_rope_index` rows under the text positions (tested packed == padded, Qwen2.5-VL too).
"""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path

from tokenizers import Regex, pre_tokenizers

from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.models.family import Batch, Loaded, ModelFamily, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, answer_spans, check_length, expanded_labels

LANGUAGE_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
END = "<|im_end|>"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", END, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                  "<|video_pad|>"]

# The chat template of Qwen/Qwen2-VL-*-Instruct and Qwen/Qwen2.5-VL-*-Instruct (identical in both).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def __getattr__(name: str):
    # built on first use (defining it imports transformers: seconds); resolving it here lets pickle find it by name
    if name == "ImageOnlyProcessor":
        return image_only_processor()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def image_only_processor() -> type:
    """`ImageOnlyProcessor`, registered with AutoProcessor for both Qwen VL configs (a saved one reloads with it)."""
    from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2VLConfig, Qwen2VLProcessor

    class ImageOnlyProcessor(Qwen2VLProcessor):
        """Qwen2VLProcessor without its video processor (which needs torchvision); images and text go through the
        very same code, videos (`vlmtune.data.video.Video`s) through `video_inputs`. Qwen2.5-VL's processor differs
        from Qwen2-VL's only for video (`second_per_grid_ts`, added for `upstream` Qwen2_5_VLProcessor), so this
        serves both."""

        upstream = "Qwen2VLProcessor"
        """The class name written into the saved files: what plain transformers loads them with."""

        video_size = None
        """{"shortest_edge", "longest_edge"}: the per-frame pixel bounds of the checkpoint's
        video_preprocessor_config.json, when it has one (`load_processor`); None: the image processor's."""
        video_processor_type = "Qwen2VLVideoProcessor"
        video_slot = re.escape("<|video_pad|>")  # what `video_placeholder` replaces (Qwen3-VL: with the wrappers)

        def video_placeholder(self, video, expand: bool = True) -> str:  # expand=False: a pad per video_pad_counts
            return self.video_token * (video_tokens(self, video) if expand else 1)

        def video_pad_counts(self, video) -> list[int]:
            return [video_tokens(self, video)]

        def video_frames(self, video) -> tuple[list, dict]:  # what video_inputs hands the image processor
            return list(video.frames), {"size": video_size(self)}

        def render_videos(self, text: str, videos, expand: bool = True) -> str:
            """The first len(videos) video slots of `text` -> their placeholders (a conversation prefix: fewer)."""
            it = iter(videos)  # slots past the videos stay
            return re.sub(self.video_slot, lambda m: self.video_placeholder(v, expand) if (v := next(it, None))
                          else m[0], text)

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

        def __call__(self, images=None, text=None, videos=None, **kwargs):
            """Upstream's call, with `videos` as `vlmtune.data.video.Video`s (one per `<|video_pad|>` of `text`, in
            order): their inputs from `video_inputs` (no torchvision), each slot replaced as upstream's
            `replace_video_token` does (`render_videos`)."""
            texts = [text] if isinstance(text, str) else list(text or [])
            found = sum(t.count(self.video_token) for t in texts)
            if found != len(videos or []):
                raise ValueError(f"{found} {self.video_token} in the text but {len(videos or [])} video(s)")
            if not videos:
                return super().__call__(images=images, text=text, **kwargs)
            texts = [self.render_videos(t, it) for it in [iter(videos)] for t in texts]  # one iterator: in order
            out = super().__call__(images=images, text=texts, **kwargs)
            out.update(video_inputs(self, videos))
            return out

        def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
            # video tokens are counted and expanded by __call__ (upstream asks the video processor this class lacks)
            if isinstance(text, list):
                text = [t.replace(self.video_token, "") if isinstance(t, str) else t for t in text]
            super().validate_inputs(images=images, text=text, videos=None, audio=audio, **kwargs)

        def save_pretrained(self, save_directory, *args, **kwargs):
            out = super().save_pretrained(save_directory, *args, **kwargs)
            write_upstream_processor_files(Path(save_directory), self.upstream, self.image_processor)
            if self.video_size is not None:  # as the checkpoint had it
                config = {**self.image_processor.to_dict(), "size": dict(self.video_size),
                          "video_processor_type": self.video_processor_type, "processor_class": self.upstream}
                for key in ("image_processor_type", "min_pixels", "max_pixels"):
                    config.pop(key, None)
                (Path(save_directory) / "video_preprocessor_config.json").write_text(
                    json.dumps(config, indent=2, sort_keys=True) + "\n")
            return out

    ImageOnlyProcessor.__qualname__ = ImageOnlyProcessor.__name__
    for config_cls in (Qwen2VLConfig, Qwen2_5_VLConfig):
        AutoProcessor.register(config_cls, ImageOnlyProcessor, exist_ok=True)
    return ImageOnlyProcessor


UPSTREAM = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}


def write_upstream_processor_files(directory: Path, upstream: str, image_processor) -> None:
    """Name the upstream processor class in the saved processor files (instead of vlmtune's ImageOnlyProcessor,
    which only a vlmtune process knows) and write `preprocessor_config.json` as the original checkpoints have it."""
    for name in ("processor_config.json", "tokenizer_config.json"):
        path = directory / name
        if path.is_file():
            config = json.loads(path.read_text())
            if "processor_class" in config:
                config["processor_class"] = upstream
                path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    pre = {**image_processor.to_dict(), "processor_class": upstream}
    pre["image_processor_type"] = pre.get("image_processor_type", "").removesuffix("Pil") or "Qwen2VLImageProcessor"
    (directory / "preprocessor_config.json").write_text(json.dumps(pre, indent=2, sort_keys=True) + "\n")


def load_processor(path, family: str = "qwen2_vl", **options):
    """The processor of a Qwen2-VL / Qwen2.5-VL checkpoint (or a vlmtune checkpoint of one), image half only."""
    processor = image_only_processor().from_pretrained(path, **options)
    processor.upstream = UPSTREAM[family]
    read_video_size(processor, path)
    return processor


def read_video_size(processor, path) -> None:
    """The per-frame pixel bounds of a local checkpoint's video_preprocessor_config.json (`size`, or the older
    `min_pixels` / `max_pixels`), which upstream's video processor prefers to preprocessor_config.json's."""
    file = Path(path) / "video_preprocessor_config.json"
    if not file.is_file():
        return
    config = json.loads(file.read_text())
    size = dict(config.get("size") or {})
    if "min_pixels" in config:
        size["shortest_edge"] = config["min_pixels"]
    if "max_pixels" in config:
        size["longest_edge"] = config["max_pixels"]
    if {"shortest_edge", "longest_edge"} <= size.keys():
        processor.video_size = {k: size[k] for k in ("shortest_edge", "longest_edge")}


def load(cfg, family: str = "qwen2_vl") -> Loaded:
    # the checkpoint's image processor, tokenizer and chat template, without the torchvision-only video processor
    loaded = load_pretrained(cfg, family, image_only_processor(), freeze_groups=FREEZE_GROUPS)
    loaded.processor.upstream = UPSTREAM[family]
    read_video_size(loaded.processor, cfg.path)
    return loaded


def image_tokens(processor, width: int, height: int) -> int:
    """`<|image_pad|>` tokens for one image: merged patches after the image processor's dynamic resize."""
    image_processor = processor.image_processor
    return image_processor.get_number_of_image_patches(height, width) // image_processor.merge_size**2


def video_size(processor) -> dict[str, int]:
    """{"shortest_edge", "longest_edge"}: the video pixel bounds, the checkpoint's (`ImageOnlyProcessor.video_size`),
    else the image processor's, as upstream's video processor falls back to preprocessor_config.json."""
    size = getattr(processor, "video_size", None) or processor.image_processor.size
    return {"shortest_edge": size["shortest_edge"], "longest_edge": size["longest_edge"]}


def video_grid(processor, video) -> tuple[int, int, int]:
    """(t, h, w) patches: frames resized by `smart_resize` within `video_size`, paired (odd: last one repeated)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    ip = processor.image_processor
    size = video_size(processor)
    width, height = video.size
    h, w = smart_resize(height, width, ip.patch_size * ip.merge_size, size["shortest_edge"], size["longest_edge"])
    return math.ceil(len(video.frames) / ip.temporal_patch_size), h // ip.patch_size, w // ip.patch_size


def video_tokens(processor, video) -> int:
    """`<|video_pad|>` tokens for one `Video`: its merged patches (upstream's replace_video_token)."""
    t, h, w = video_grid(processor, video)
    return t * h * w // processor.image_processor.merge_size**2


def seconds_per_grid(video, temporal_patch_size: int) -> float:
    """Qwen2.5-VL's `second_per_grid_ts` of a video: the seconds one temporal patch spans, temporal_patch_size / fps,
    with the Video's fps, else the rate of its timestamps, else upstream's default 24 (a single frame)."""
    fps = video.fps
    first, last = video.timestamps[0], video.timestamps[-1]
    if fps is None and len(video.frames) > 1 and last > first:
        fps = (len(video.frames) - 1) / (last - first)
    return temporal_patch_size / (fps or 24)


def video_inputs(processor, videos) -> dict:
    """`pixel_values_videos`, `video_grid_thw` (Qwen2.5-VL: + `second_per_grid_ts`) of `Video`s, upstream's for the
    same frames (tests/golden): each frame through the PIL image processor (which repeats it over the temporal
    patch), then `temporal_patch_size` consecutive frames per video patch, the last frame repeated to fill."""
    import torch

    ip = processor.image_processor
    tp, p = ip.temporal_patch_size, ip.patch_size
    pixels, grids, seconds = [], [], []
    for video in videos:
        frames, options = processor.video_frames(video)
        frames += [frames[-1]] * (-len(frames) % tp)
        out = ip(frames, **options, return_tensors="np")
        _, h, w = (int(x) for x in out["image_grid_thw"][0])
        t, n = len(frames) // tp, h * w
        per_frame = out["pixel_values"].reshape(len(frames), n, -1, tp, p * p)[:, :, :, 0]  # (frames, n, C, p*p)
        paired = per_frame.reshape(t, tp, n, -1, p * p).transpose(0, 2, 3, 1, 4)  # (t, n, C, tp, p*p)
        pixels.append(torch.from_numpy(paired.reshape(t * n, -1).copy()))
        grids.append([t, h, w])
        seconds.append(seconds_per_grid(video, tp))
    out = {"pixel_values_videos": torch.cat(pixels), "video_grid_thw": torch.tensor(grids, dtype=torch.long)}
    if processor.upstream == UPSTREAM["qwen2_5_vl"]:
        out["second_per_grid_ts"] = seconds  # floats, not a tensor: Batch.to would cast a tensor to bf16
    return out


def count_video_slots(messages: list[dict]) -> int:
    """The `{"type": "video"}` content parts of a conversation."""
    return sum(1 for m in messages if not isinstance(m["content"], str) for part in m["content"]
               if part.get("type") == "video")


def video_lists(samples, videos) -> list[list]:
    """Per sample, its `Video`s (None / [] for a sample without video), checked against its video slots."""
    videos = [list(v or []) for v in videos] if videos is not None else [[] for _ in samples]
    for s, vids in zip(samples, videos, strict=True):
        if count_video_slots(s.messages) != len(vids):
            raise ValueError(f"sample {s.id!r}: expected {count_video_slots(s.messages)} video(s), got {len(vids)}")
    return videos


def encode(processor, samples, images, mode: str, max_length: int, videos=None) -> Batch:
    """Samples -> model inputs. "train": the whole conversation, labels only on assistant answers + their
    `<|im_end|>`, right padding. "generate": the conversation up to `<|im_start|>assistant\\n`, left padding. A
    sample longer than `max_length` (image and video tokens included) raises SampleTooLong; nothing is cut. `videos`:
    per sample, the `Video`s of its `{"type": "video"}` slots."""
    tok = processor.tokenizer
    train = mode == "train"
    end_id = tok.convert_tokens_to_ids(END)
    image_id, video_id = processor.image_token_id, processor.video_token_id
    videos = video_lists(samples, videos)

    def render(messages, add_generation_prompt, vids=()):  # vids: each video slot -> its unexpanded placeholder
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return processor.render_videos(text, vids, expand=False)

    flat = load_image_list(samples, images)
    texts = [render(s.messages if train else s.prompt_messages, not train) for s in samples]
    tokenized = []  # per sample: (ids with one pad token per image / video, assistant spans, tokens per pad token)
    for s, imgs, vids in zip(samples, images, videos, strict=True):
        per_image = [image_tokens(processor, img.width, img.height) for img in imgs]
        per_video = [n for v in vids for n in processor.video_pad_counts(v)]
        if train:
            unexpanded, spans = answer_spans(lambda ts: tok(ts).input_ids, functools.partial(render, vids=vids),
                                             s.messages, s.id, end_id, END)
        else:
            unexpanded, spans = tok(render(s.prompt_messages, True, vids)).input_ids, []
        check_length(s.id, sum(per_image), len(unexpanded) - len(imgs) - len(per_video), max_length,
                     n_video=sum(per_video))
        counts = {image_id: iter(per_image), video_id: iter(per_video)}  # in the order the pad tokens come
        tokenized.append((unexpanded, spans, [next(counts[t]) for t in unexpanded if t in counts]))
    flat_videos = [v for vids in videos for v in vids]
    out = processor(text=texts, images=flat or None, videos=flat_videos or None, padding=True,
                    padding_side="right" if train else "left", return_tensors="pt")
    inputs = dict(out)  # input_ids, attention_mask, mm_token_type_ids (+ pixel_values, image_grid_thw, video inputs)
    n_target = 0
    if train:
        labels = expanded_labels(out["input_ids"], out["attention_mask"], (image_id, video_id),
                                 [s.id for s in samples], tokenized)
        n_target = int((labels != IGNORE_INDEX).sum())
        inputs["labels"] = labels
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=n_target)


def pack_inputs(model, padded: dict, packed: dict) -> dict:
    """A packed row's positions (`ModelFamily.pack_inputs`): (4, 1, length), `pack`'s 1-D text positions over each
    sample's three M-RoPE rows (the model's `get_rope_index` on the padded batch, kept where `pack` keeps tokens).
    With 4 rows the decoder finds the packed samples in the first; with 3 it would see one sequence. Image tensors
    and grids stay in order. Qwen2.5-VL and Qwen3-VL take the same layout."""
    import torch

    owner = next(m for m in model.modules() if hasattr(m, "get_rope_index"))
    grids = {k: padded[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in padded}
    mask = padded["attention_mask"].bool()
    rope, _ = owner.get_rope_index(padded["input_ids"], mm_token_type_ids=padded["mm_token_type_ids"],
                                   attention_mask=padded["attention_mask"], **grids)
    text = packed["position_ids"].to(rope.device)
    return dict(packed, position_ids=torch.cat([text[None], rope[:, mask.to(rope.device)][:, None]]))


_CORPUS = [
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|im_start|>assistant\n",
    "What colour is the top? What colour are the trousers? Describe the image.",
    "a person wearing a red top and blue trousers",
    "red blue green yellow white black orange purple pink grey brown",
    "what which who where how many is are the a an of in on at with and or not yes no there this that",
    "shirt dress skirt jacket coat shoes hat shape circle square triangle left right top bottom one two three",
]
# Qwen2's pre-tokenizer split: letters with at most one leading non-letter, single digits, newlines apart
_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")


def build_tokenizer():
    """A small byte-level BPE trained in-process with Qwen2's pre-tokenizer and special tokens."""
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_bpe(_CORPUS * 20, SPECIAL_TOKENS, 640, pre_tokenizer=pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]))
    # as in the Instruct checkpoints: no BOS, eos <|im_end|>, pad <|endoftext|>
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=END, pad_token="<|endoftext|>",
                                   extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in (END, "<|endoftext|>")],
                                   model_max_length=4096)


def build_processor():
    """Tokenizer + PIL image processor: 8x8 patches merged 2x2, images resized to 32x32 .. 64x64 pixels."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2,
                                               min_pixels=32 * 32, max_pixels=64 * 64)
    return image_only_processor()(image_processor, build_tokenizer(), chat_template=CHAT_TEMPLATE)


def build_tiny(config_cls, model_cls, vision: dict, family: str) -> Loaded:
    """A random model around `vision`: 2-layer Qwen2 decoder, dim 32, 4 heads of 8 (M-RoPE sections sum to 4)."""
    processor = build_processor()
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids
    end, pad = ids(END), tok.pad_token_id
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=pad, eos_token_id=end,
                pad_token_id=pad, rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1],
                                                   "rope_theta": 1e6})
    config = config_cls(text_config=text, vision_config=vision, tie_word_embeddings=False,
                        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    model = model_cls(config).float()
    model.generation_config.bos_token_id = pad
    model.generation_config.pad_token_id = pad
    model.generation_config.eos_token_id = [end, pad]  # stop at <|im_end|> or <|endoftext|>
    processor.upstream = UPSTREAM[family]
    return Loaded(model=model, processor=processor, family=family)


def tiny() -> Loaded:
    """A random Qwen2-VL: ViT 2 layers dim 32, merger into the tiny decoder."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    vision = dict(depth=2, embed_dim=32, hidden_size=32, mlp_ratio=2, num_heads=4, patch_size=8,
                  spatial_merge_size=2, temporal_patch_size=2)
    return build_tiny(Qwen2VLConfig, Qwen2VLForConditionalGeneration, vision, "qwen2_vl")


FREEZE_GROUPS = {
    "vision": ("model.visual.patch_embed.", "model.visual.blocks."),
    "projector": ("model.visual.merger.",),
    "language": ("model.language_model.", "lm_head."),
}

FAMILY = ModelFamily(
    name="qwen2_vl",
    description="Qwen2-VL (Qwen/Qwen2-VL-*-Instruct): dynamic-resolution ViT -> patch merger -> Qwen2 with M-RoPE",
    load=load,
    encode=encode,
    # regex: the language model's linears only
    lora_targets=(r".*language_model.*\.(" + "|".join(LANGUAGE_LINEARS) + ")",),
    freeze_groups=FREEZE_GROUPS,
    tiny=tiny,
    image_tokens=image_tokens,
    video_tokens=video_tokens,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    projector_modules=("merger",),
    vision_cache=True, video_cache="videos",  # mm_encoder_outputs: images, and videos (get_video_features)
    packing=True,  # with each sample's M-RoPE positions (pack_inputs)
    pack_inputs=pack_inputs,
    processor_loader=load_processor,
    language_model="model.language_model",
    vision_tower="model.visual",
)
