"""SmolVLM and SmolVLM2 family (`SmolVLMForConditionalGeneration`): SigLIP vision model -> pixel-shuffle connector ->
SmolLM2.

Checkpoints: SmolVLM2 (HuggingFaceTB/SmolVLM2-256M-Video-Instruct, SmolVLM2-500M-Video-Instruct,
SmolVLM2-2.2B-Instruct) and SmolVLM (HuggingFaceTB/SmolVLM-256M-Instruct, SmolVLM-500M-Instruct, SmolVLM-Instruct
(2.2B)): one model class and processor, one prompt format. tests/real checks the family against SmolVLM2-256M-Video-
Instruct's real files; its recipe (configs/smolvlm/256m_lora_vqa.yaml) trains it. SmolVLM2 takes video as frames
(`encode(..., videos=)`, as SmolVLMProcessor renders a video).

The design, the image splitting and the prompt format are Idefics3's, so `encode` and `image_tokens` are
idefics3.py's. The checkpoints' chat template:

    <|im_start|>User:<image>What colour is the top?<end_of_utterance>\\nAssistant: red<end_of_utterance>\\n

Trained tokens: the answer and `<end_of_utterance>` (SmolVLM's EOS). Traps handled here:
- `SmolVLMProcessor` (what the checkpoints name, and what AutoProcessor builds) needs a video processor, which
  needs torchvision, and `num2words`. Its image-text processing is Idefics3Processor's (same image expansion, same
  tokens), so `load` builds an `Idefics3Processor` from the checkpoint's files; saved again, it reloads with
  AutoProcessor. The export still writes `video_preprocessor_config.json` (from the image processor's settings) and
  names SmolVLMProcessor, as the checkpoints do, so that vLLM loads it.
- Video (`encode(..., videos=)`): SmolVLMProcessor renders a conversation with a video through its own template
  (`VIDEO_CHAT_TEMPLATE`; the checkpoints' writes nothing for a video part) and expands `<video>` to
  "You are provided the following series of three frames from a 0:00:01 [H:MM:SS] video.\n" then per frame
  "\nFrame from 00:00:" + one global view's image tokens, then "\n\n"; the frames are resized to the longest edge
  of `video_sampling.video_size`, then squared to `max_image_size` (not split). `encode` builds the same ids without
  torchvision or num2words (`number_words`): token for token what the real SmolVLM2 processor gives
  (tests/golden), frames within one 8-bit level. The duration is the last timestamp (upstream's value for frames
  without a decoded file's metadata). Its image tokens are `video_tokens` (frames x image_seq_len).
- Unlike Idefics3, the model casts its image features to `model.dtype` (the first parameter's: the vision tower's,
  float32 when a full fine-tune trains it) rather than to the text embeddings' dtype before `masked_scatter`:
  `merge_in_model_dtype` has `align_dtypes` merge in that dtype (a bf16 full fine-tune crashed at its first forward).
- Everything else as in idefics3.py (nested image lists, size-dependent image tokens, wrapper tokens).
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from functools import partial
from pathlib import Path

import numpy as np

from vlmtune.models import idefics3
from vlmtune.models.family import Batch, Loaded, ModelFamily, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, assistant_spans, check_length
from vlmtune.models.qwen2_vl import video_lists


def load(cfg) -> Loaded:
    from transformers import Idefics3Processor

    # not AutoProcessor: that builds SmolVLMProcessor, which needs torchvision and num2words (see above)
    loaded = load_pretrained(cfg, "smolvlm", Idefics3Processor, freeze_groups=FAMILY.freeze_groups)
    idefics3.stop_at_end_of_utterance(loaded.model, loaded.processor.tokenizer)
    return loaded


def load_processor(path, **options):
    """Idefics3Processor, which serves SmolVLM's images and text without torchvision or num2words."""
    from transformers import Idefics3Processor

    return Idefics3Processor.from_pretrained(path, **options)


VIDEO_SETTINGS = ("do_convert_rgb", "do_resize", "size", "max_image_size", "resample", "do_rescale", "rescale_factor",
                  "do_normalize", "image_mean", "image_std", "do_pad")
"""The image processor's settings that SmolVLM's video processor shares (its frames are resized like images)."""


def export_files(processor, out: Path) -> None:
    """`export_extras`: the directory as the checkpoints have it, for SmolVLMProcessor (what vLLM and AutoProcessor
    with torchvision build): video_preprocessor_config.json from the image processor's settings, without which it
    refuses the directory (transformers' defaults for the rest: no frame sampling, no metadata), and
    `processor_class` SmolVLMProcessor where `load` saved Idefics3Processor (vlmtune's loaders name their class)."""
    path = out / "video_preprocessor_config.json"
    if not path.exists():
        image = processor.image_processor.to_dict()
        config = {k: image[k] for k in VIDEO_SETTINGS if k in image}
        if "resample" in config:
            config["resample"] = int(config["resample"])  # a PIL resampling enum in some versions
        config |= {"do_sample_frames": False, "return_metadata": False, "video_processor_type": "SmolVLMVideoProcessor"}
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        saved = out / name
        config = json.loads(saved.read_text()) if saved.is_file() else {}
        if config.get("processor_class") == "Idefics3Processor":
            saved.write_text(json.dumps({**config, "processor_class": "SmolVLMProcessor"}, indent=2) + "\n")


# transformers' processing_smolvlm.py: the template SmolVLMProcessor.apply_chat_template renders a conversation with a
# video in (the checkpoints' own writes nothing for a video part), and the text a video expands to
VIDEO_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'] is string %}"
    "{{': ' + message['content']}}{% else %}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}"
    "{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
VIDEO_INTRO = "You are provided the following series of {frames} frames from a {duration} [H:MM:SS] video.\n"
FRAME = "\nFrame from {minutes:02d}:{seconds:02d}:"
VIDEO_OUTRO = "\n\n"
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """English words of 0 <= n < 1000, as num2words (what SmolVLMProcessor uses, absent here) writes them."""
    if not 0 <= n < 1000:
        raise ValueError(f"a video of {n} frames: SmolVLM's prompt spells out at most 999")
    if n >= 100:
        rest = n % 100
        return f"{_ONES[n // 100]} hundred" + (f" and {number_words(rest)}" if rest else "")
    if n < 20:
        return _ONES[n]
    return _TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else "")


def video_prompt(processor, video) -> str:
    """The text a `<video>` becomes (SmolVLMProcessor.replace_video_token): an intro with the frame count and the
    duration (the last timestamp, as upstream without a decoded file's metadata), then per frame its timestamp and
    one global view's image tokens."""
    frame = (processor.fake_image_token + processor.global_image_tag + processor.image_token * processor.image_seq_len
             + processor.fake_image_token)
    text = VIDEO_INTRO.format(frames=number_words(len(video.frames)),
                              duration=timedelta(seconds=int(video.timestamps[-1])))
    for t in video.timestamps:
        text += FRAME.format(minutes=int(t // 60), seconds=int(t % 60)) + frame
    return text + VIDEO_OUTRO


def video_tokens(processor, video) -> int:
    """`<image>` positions of one `Video`: `image_seq_len` per frame (the timestamps and wrappers are text)."""
    return len(video.frames) * processor.image_seq_len


def video_longest_edge(image_processor) -> int:
    """The longest edge frames are resized to before they are squared to `max_image_size`: the checkpoint's
    `video_sampling.video_size` (SmolVLM2), else the image processor's `size` (SmolVLMVideoProcessor's fallback)."""
    sampling = getattr(image_processor, "video_sampling", None) or {}
    return (sampling.get("video_size") or image_processor.size)["longest_edge"]


def _units(processor, slots: list, pixels: list, masks: list, replacements: list) -> None:
    """Process one sample's images and videos (`slots`, in order) into `pixels` / `masks` (units of 3 x H x W) and
    the text each placeholder becomes. An image goes through the processor itself (split into tiles); a video's
    frames through the image processor as SmolVLMVideoProcessor treats them: longest edge resized, then squared to
    `max_image_size`, not split."""
    for slot in slots:
        if isinstance(slot, tuple):  # ("video", Video)
            video = slot[1]
            out = processor.image_processor([list(video.frames)], size={"longest_edge": video_longest_edge(
                processor.image_processor)}, do_image_splitting=False, return_tensors="np")
            replacements.append(video_prompt(processor, video))
        else:
            out = processor(text=[processor.image_token], images=[[slot]], return_text_replacement_offsets=True)
            replacements.append(out["text_replacement_offsets"][0][0]["replacement"])
        pixels.extend(np.asarray(out["pixel_values"][0]))
        masks.extend(np.asarray(out["pixel_attention_mask"][0]))


def encode(processor, samples, images, mode: str, max_length: int, videos=None) -> Batch:
    """idefics3.encode for a batch without video. With a video (`videos`: per sample, the `Video`s of its
    `{"type": "video"}` slots), what SmolVLMProcessor gives, without torchvision: the conversation rendered with its
    video template, each `<video>` expanded to `video_prompt` and each frame one global view in `pixel_values`
    (images keep their tiles), in slot order per sample, padded with empty units as the image processor pads."""
    videos = video_lists(samples, videos)
    if not any(videos):
        return idefics3.encode(processor, samples, images, mode, max_length)
    return encode_units(processor, samples, images, mode, max_length, videos)


def encode_units(processor, samples, images, mode: str, max_length: int, videos: list[list]) -> Batch:
    import torch

    tok = processor.tokenizer
    train = mode == "train"
    load_image_list(samples, images)

    def render(messages, add_generation_prompt):
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             chat_template=VIDEO_CHAT_TEMPLATE)

    placeholder = re.compile(re.escape(processor.image_token) + "|<video>")

    def tokenize(replacements, texts):
        parts = [placeholder.split(t) for t in texts]
        return tok([p[0] + "".join(r + q for r, q in zip(replacements, p[1:], strict=False)) for p in parts]).input_ids

    rows, units, unit_masks = [], [], []
    for s, imgs, vids in zip(samples, images, videos, strict=True):
        text = render(s.messages if train else s.prompt_messages, not train)
        kinds = placeholder.findall(text)
        img_it, vid_it = iter(imgs), iter(vids)
        slots = [("video", next(vid_it)) if k == "<video>" else next(img_it) for k in kinds]
        pixels, masks, replacements = [], [], []
        _units(processor, slots, pixels, masks, replacements)
        units.append(pixels)
        unit_masks.append(masks)
        if train:
            ids, spans = assistant_spans(partial(tokenize, replacements), render, s.messages, s.id)
        else:
            ids, spans = tokenize(replacements, [text])[0], []
        n_video = sum(video_tokens(processor, v) for v in vids)
        n_image = ids.count(processor.image_token_id) - n_video
        check_length(s.id, n_image, len(ids) - n_image - n_video, max_length, n_video=n_video)
        rows.append((ids, spans))
    end_id = tok.convert_tokens_to_ids(idefics3.END)
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), tok.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for b, ((ids, spans), s) in enumerate(zip(rows, samples, strict=True)):
        at = 0 if train else length - len(ids)  # right padding to train, left to generate
        input_ids[b, at:at + len(ids)] = torch.tensor(ids)
        attention_mask[b, at:at + len(ids)] = 1
        for start, end in spans:
            turn = ids[start:end]
            if end_id not in turn:
                raise ValueError(f"sample {s.id!r}: an assistant turn does not end with {idefics3.END}")
            end = start + len(turn) - turn[::-1].index(end_id)  # up to the end token, not the "\n" after it
            labels[b, start:end] = torch.tensor(ids[start:end])
    n_units = max(len(u) for u in units)
    height = max(u.shape[-2] for us in units for u in us)
    width = max(u.shape[-1] for us in units for u in us)
    pixel_values = np.zeros((len(rows), n_units, 3, height, width), dtype=np.float32)
    pixel_mask = np.zeros((len(rows), n_units, height, width), dtype=np.int64)
    for b, (us, ms) in enumerate(zip(units, unit_masks, strict=True)):
        for k, (u, m) in enumerate(zip(us, ms, strict=True)):
            pixel_values[b, k, :, : u.shape[-2], : u.shape[-1]] = u
            pixel_mask[b, k, : m.shape[-2], : m.shape[-1]] = m
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": torch.from_numpy(pixel_values),
              "pixel_attention_mask": torch.from_numpy(pixel_mask)}
    if train:
        inputs["labels"] = labels
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=int((labels != IGNORE_INDEX).sum()))


def tiny() -> Loaded:
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMVisionConfig
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    image_processor = SmolVLMImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    # SmolVLM-256M-Instruct's special tokens: <|im_start|> BOS, <end_of_utterance> EOS, <|im_end|> padding
    tokens = ("<|im_start|>", idefics3.END, "<|im_end|>")
    return idefics3.build_tiny(SmolVLMConfig, SmolVLMVisionConfig, SmolVLMForConditionalGeneration, image_processor,
                               tokens, "smolvlm", scale_factor=4)  # pixel shuffle 4, as in the checkpoints


FAMILY = ModelFamily(
    name="smolvlm",
    description="SmolVLM2 / SmolVLM (HuggingFaceTB/SmolVLM2-2.2B-Instruct, SmolVLM2-500M-Video-Instruct, "
    "SmolVLM2-256M-Video-Instruct, SmolVLM-*-Instruct; images and video): SigLIP -> pixel-shuffle connector -> "
    "SmolLM2; Idefics3's image splitting and prompt format",
    load=load,
    encode=encode,
    lora_targets=idefics3.FAMILY.lora_targets,
    freeze_groups=idefics3.FAMILY.freeze_groups,
    tiny=tiny,
    image_tokens=idefics3.image_tokens,
    video_tokens=video_tokens,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    projector_modules=("connector",),
    processor_loader=load_processor,
    packing=True,  # a Llama-style LM with 1-D positions: samples can share a row
    vision_cache=True,  # takes mm_encoder_outputs: the frozen-vision cache applies
    video_cache="frames",  # video frames are global views among the images' pixels: cached with them
    vision_features="per_sample",  # get_image_features lists one entry per sample (all its images' tiles)
    vision_tower="model.vision_model",
    merge_in_model_dtype="model.text_model",  # image features cast to model.dtype (the vision tower's) before the merge
    export_extras=export_files,  # the video processor config and class that vLLM's SmolVLMProcessor needs
)
