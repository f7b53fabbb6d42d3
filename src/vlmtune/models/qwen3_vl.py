"""Qwen3-VL family (`Qwen3VLForConditionalGeneration`): SigLIP-2-style ViT (patch 16, learned position embeddings
+ 2D rotary) -> 2x2 patch merger -> Qwen3 decoder (q/k RMSNorm) with interleaved multimodal rotary positions
(M-RoPE); "DeepStack" adds the merged features of some ViT layers to the first decoder layers' image positions.

Checkpoints: Qwen/Qwen3-VL-2B-Instruct, Qwen/Qwen3-VL-4B-Instruct, Qwen/Qwen3-VL-8B-Instruct, Qwen/Qwen3-VL-32B-Instruct
(and fine-tunes). The MoE checkpoints (Qwen3-VL-30B-A3B, -235B-A22B) are the qwen3_vl_moe family, Qwen3.5 (also a
Qwen3-VL processor) the qwen3_5 family; both reuse this file.

Prompt format: ChatML, the Instruct checkpoints' chat template (`CHAT_TEMPLATE`), no default system turn:

    <|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>What colour is the top?<|im_end|>\\n
    <|im_start|>assistant\\nred<|im_end|>\\n

The generation prompt is `<|im_start|>assistant\\n`; the trained tokens are the answer and `<|im_end|>` (the
generation config's first eos). The Instruct template has no `<think>` block (the Thinking checkpoints' does: train
those with their own template only if it renders turns as prefixes, which `assistant_spans` checks).

Processing is Qwen2-VL's (qwen2_vl.py): the same PIL image processor (dynamic resolution, here patch 16 x merge 2 =
32-pixel cells), `<|image_pad|>` expanded to the merged patches, the same `encode` and `image_tokens`. A video
(`encode(..., videos=)`) is Qwen3VLProcessor's: its template slot becomes, per temporal patch (2 frames),

    <0.2 seconds><|vision_start|><|video_pad|>...<|vision_end|><1.2 seconds><|vision_start|>...<|vision_end|>

Traps handled here:
- `Qwen3VLProcessor` insists on a video processor (torchvision): `Qwen3Processor`, qwen2_vl's `ImageOnlyProcessor`
  with Qwen3-VL's video rendering, serves and saves itself as `Qwen3VLProcessor` (plus the checkpoint's
  video_preprocessor_config.json), so plain transformers reloads the files.
- Video differs from Qwen2-VL's: (1) the `<seconds>` text (the mean timestamp of the patch's two frames, one
  decimal) and wrappers per temporal patch replace the template's whole `<|vision_start|><|video_pad|><|vision_end|>`
  (they count as text: `video_tokens` is the `<|video_pad|>` count); (2) the video_preprocessor_config.json pixel
  bounds (4096 .. 25165824 in the 4B) bound frames x height x width together, with the frame count rounded to 2
  (`smart_resize`), not each frame; (3) upstream raises for a single frame (its resize wants >= 2): here it is
  encoded as its padded pair, as upstream pads odd counts. Timestamps come from the `Video`'s (upstream's frame
  indices / fps; without metadata it assumes 24 fps), the frames from vlmtune's sampling policy (`data.video`;
  upstream would sample 2 per second itself), no per-frame pixel cap (upstream's `cap_pixels_per_frame`, off by
  default in transformers 5.25). tests/real/test_real_video.py compares ids and pixels with the real processor
  (tests/golden/make_qwen3_video_golden.py). Video features are not cached (frozen-vision cache: a video batch
  runs live).
- The frozen-vision cache must keep the DeepStack features besides the merged image features: Qwen3-VL reads
  both from `mm_encoder_outputs["image"]` (`deepstack_features`: per DeepStack layer, one tensor per image);
  train/vision_cache.py stores them per image and hands them back (the contract test checks the loss).
- `mrope_section` (t, h, w) must sum to head_dim / 2 and is interleaved (`mrope_interleaved`); the text config's
  `head_dim` is its own field (128 by default), not hidden_size / heads.
- The checkpoints tie the LM head to the input embeddings (`tie_word_embeddings` in both configs).
- Under LoRA with `train.freeze_projector: false` the main `merger` is trained in full (peft `modules_to_save`);
  the DeepStack mergers sit in a ModuleList (`deepstack_merger_list.<i>`), which peft cannot wrap by a name shared
  by every depth: they stay frozen there (their freeze group is the projector's for full fine-tuning).
- Position ids: `Qwen3VLModel.get_rope_index(input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw,
  attention_mask)` has Qwen2-VL's signature (it only splits videos per frame), so packing would need the same hook.
"""

from __future__ import annotations

import functools
import math
import re

from PIL import Image

from vlmtune.models import qwen2_vl
from vlmtune.models.family import Loaded, ModelFamily, load_pretrained

UPSTREAM = "Qwen3VLProcessor"

# The chat template of Qwen/Qwen3-VL-*-Instruct, its lines stripped and joined (every tag trims the whitespace
# between lines: it renders the same text; tests/real/test_real_processors.py compares it with the checkpoint's).
CHAT_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0].role == 'system' %}{%- if messages[0].content is"
    " string %}{{- messages[0].content }}{%- else %}{%- for content in messages[0].content %}{%- if 'text' in content"
    " %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}{{- '\\n\\n' }}{%- endif %}{{- \"# Tools\\n\\nYou may"
    " call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within"
    " <tools></tools> XML tags:\\n<tools>\" }}{%- for tool in tools %}{{- \"\\n\" }}{{- tool | tojson }}{%- endfor %}"
    "{{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <too"
    "l_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-obje"
    "ct>}\\n</tool_call><|im_end|>\\n\" }}{%- else %}{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n"
    "' }}{%- if messages[0].content is string %}{{- messages[0].content }}{%- else %}{%- for content in messages[0].c"
    "ontent %}{%- if 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' "
    "}}{%- endif %}{%- endif %}{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}{%- if message.role == \"user\" %}{{- '<|im_start|>' + message.role + '\\n' }}{%- "
    "if message.content is string %}{{- message.content }}{%- else %}{%- for content in message.content %}{%- if cont"
    "ent.type == 'image' or 'image' in content or 'image_url' in content %}{%- set image_count.value = image_count.va"
    "lue + 1 %}{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}<|vision_start|><|image_pad|><|vis"
    "ion_end|>{%- elif content.type == 'video' or 'video' in content %}{%- set video_count.value = video_count.value "
    "+ 1 %}{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}<|vision_start|><|video_pad|><|vision_en"
    "d|>{%- elif 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%"
    "- elif message.role == \"assistant\" %}{{- '<|im_start|>' + message.role + '\\n' }}{%- if message.content is str"
    "ing %}{{- message.content }}{%- else %}{%- for content_item in message.content %}{%- if 'text' in content_item %"
    "}{{- content_item.text }}{%- endif %}{%- endfor %}{%- endif %}{%- if message.tool_calls %}{%- for tool_call in m"
    "essage.tool_calls %}{%- if (loop.first and message.content) or (not loop.first) %}{{- '\\n' }}{%- endif %}{%- if"
    " tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}{{- '<tool_call>\\n{\"name\": \"' }}{"
    "{- tool_call.name }}{{- '\", \"arguments\": ' }}{%- if tool_call.arguments is string %}{{- tool_call.arguments }"
    "}{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}{{- '}\\n</tool_call>' }}{%- endfor %}{%- endif %}{{-"
    " '<|im_end|>\\n' }}{%- elif message.role == \"tool\" %}{%- if loop.first or (messages[loop.index0 - 1].role != "
    "\"tool\") %}{{- '<|im_start|>user' }}{%- endif %}{{- '\\n<tool_response>\\n' }}{%- if message.content is string "
    "%}{{- message.content }}{%- else %}{%- for content in message.content %}{%- if content.type == 'image' or 'image"
    "' in content or 'image_url' in content %}{%- set image_count.value = image_count.value + 1 %}{%- if add_vision_i"
    "d %}Picture {{ image_count.value }}: {% endif -%}<|vision_start|><|image_pad|><|vision_end|>{%- elif content.typ"
    "e == 'video' or 'video' in content %}{%- set video_count.value = video_count.value + 1 %}{%- if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif -%}<|vision_start|><|video_pad|><|vision_end|>{%- elif 'text' in content"
    " %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}{{- '\\n</tool_response>' }}{%- if loop.last or (mess"
    "ages[loop.index0 + 1].role != \"tool\") %}{{- '<|im_end|>\\n' }}{%- endif %}{%- endif %}{%- endfor %}{%- if add_"
    "generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def __getattr__(name: str):
    # built on first use (importing transformers takes seconds); resolving it here lets pickle find it by name
    if name == "Qwen3Processor":
        return register()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def register() -> type:
    """`Qwen3Processor` (qwen2_vl's ImageOnlyProcessor with Qwen3-VL's video rendering), registered with
    AutoProcessor for the Qwen3-VL / Qwen3.5 configs."""
    from transformers import AutoProcessor, Qwen3_5Config, Qwen3VLConfig, Qwen3VLMoeConfig

    class Qwen3Processor(qwen2_vl.image_only_processor()):
        """Qwen3VLProcessor's output without its (torchvision) video processor: a video is, per temporal patch,
        `<{seconds:.1f} seconds><|vision_start|><|video_pad|>...<|vision_end|>`, which replaces the template's whole
        `<|vision_start|><|video_pad|><|vision_end|>` (upstream's replace_video_token / get_text_with_replacements);
        frames are resized by Qwen3-VL's video smart_resize (pixel bounds over all frames together)."""

        upstream = UPSTREAM
        video_processor_type = "Qwen3VLVideoProcessor"
        video_slot = re.escape("<|vision_start|><|video_pad|><|vision_end|>") + "|" + re.escape("<|video_pad|>")

        def video_placeholder(self, video, expand: bool = True) -> str:
            t, h, w = video_grid(self, video)
            pads = self.video_token * (h * w // self.image_processor.merge_size**2 if expand else 1)
            return "".join(f"<{s:.1f} seconds><|vision_start|>{pads}<|vision_end|>"
                           for s in patch_seconds(video, self.image_processor.temporal_patch_size))

        def video_pad_counts(self, video) -> list[int]:
            t, h, w = video_grid(self, video)
            return [h * w // self.image_processor.merge_size**2] * t

        def video_frames(self, video) -> tuple[list, dict]:
            _, h, w = video_grid(self, video)
            p = self.image_processor.patch_size
            size = (w * p, h * p)
            return [f if f.size == size else f.resize(size, Image.BICUBIC) for f in video.frames], {"do_resize": False}

    Qwen3Processor.__qualname__ = Qwen3Processor.__name__
    Qwen3Processor.__module__ = __name__
    for config_cls in (Qwen3VLConfig, Qwen3VLMoeConfig, Qwen3_5Config):
        AutoProcessor.register(config_cls, Qwen3Processor, exist_ok=True)
    return Qwen3Processor


def smart_resize(frames: int, height: int, width: int, temporal: int, factor: int, min_pixels: int,
                 max_pixels: int) -> tuple[int, int]:
    """Qwen3-VL's video resize (video_processing_qwen3_vl.smart_resize, which imports torch): the frame size,
    multiples of `factor`, with frames x height x width (frames rounded to `temporal`) within the pixel bounds."""
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if (ratio := max(height, width) / min(height, width)) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {ratio}")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(frames / temporal) * temporal
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def video_grid(processor, video) -> tuple[int, int, int]:
    """(t, h, w) patches of a video: its frames resized by `smart_resize` within `qwen2_vl.video_size` (the
    checkpoint's video_preprocessor_config.json), paired by temporal_patch_size (an odd count padded with the last
    frame). A single frame counts as two (upstream raises for fewer frames than temporal_patch_size, before it
    would pad them: the padded video is what it would encode)."""
    ip = processor.image_processor
    size = qwen2_vl.video_size(processor)
    width, height = video.size
    if max(width, height) > 200 * min(width, height):
        raise ValueError(f"video {video.source!r}: {width}x{height} frames, an aspect ratio over Qwen3-VL's 200")
    n = max(len(video.frames), ip.temporal_patch_size)
    h, w = smart_resize(n, height, width, ip.temporal_patch_size, ip.patch_size * ip.merge_size,
                        size["shortest_edge"], size["longest_edge"])
    return math.ceil(n / ip.temporal_patch_size), h // ip.patch_size, w // ip.patch_size


def video_tokens(processor, video) -> int:
    """`<|video_pad|>` tokens of one `Video` (the timestamps and the wrappers of each temporal patch are text)."""
    t, h, w = video_grid(processor, video)
    return t * h * w // processor.image_processor.merge_size**2


def patch_seconds(video, temporal: int) -> list[float]:
    """The time of each temporal patch: the mean of its first and last frame's timestamps (the last frame repeated
    to fill), as upstream's `_calculate_timestamps` computes them from frame indices / fps."""
    times = list(video.timestamps) + [video.timestamps[-1]] * (-len(video.timestamps) % temporal)
    return [(times[i] + times[i + temporal - 1]) / 2 for i in range(0, len(times), temporal)]


def load_processor(path, **options):
    """The processor of a Qwen3-VL / Qwen3.5 checkpoint (or a vlmtune checkpoint of one), image half only."""
    processor = register().from_pretrained(path, **options)
    qwen2_vl.read_video_size(processor, path)
    return processor


def load(cfg, family: str = "qwen3_vl", freeze_groups=None) -> Loaded:
    loaded = load_pretrained(cfg, family, register(), freeze_groups=freeze_groups or FREEZE_GROUPS)
    qwen2_vl.read_video_size(loaded.processor, cfg.path)
    return loaded


def build_processor(tokenizer=None, chat_template: str = CHAT_TEMPLATE):
    """Tokenizer (qwen2_vl's, unless given) + PIL image processor: 16x16 patches merged 2x2 (32-pixel cells),
    images resized to 32x32 .. 96x96 pixels (1 .. 9 image tokens), videos to 2 x 32x32 .. 8 x 64x64 pixels."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                               min_pixels=32 * 32, max_pixels=96 * 96, image_mean=[0.5] * 3,
                                               image_std=[0.5] * 3)
    processor = register()(image_processor, tokenizer or qwen2_vl.build_tokenizer(), chat_template=chat_template)
    processor.video_size = {"shortest_edge": 2 * 32 * 32, "longest_edge": 8 * 64 * 64}
    return processor


def text_config(tok, **extra) -> dict:
    """A 2-layer Qwen3 decoder, dim 32, 4 heads of 8 (q/k norm), interleaved M-RoPE sections (t, h, w) summing to
    head_dim / 2 = 4, special ids as in the Instruct checkpoints. Weights drawn with std 0.1 (the checkpoints' 0.02
    leaves a dim-32 model's attention nearly uniform: what the positions change would hide under float noise)."""
    end, pad = tok.convert_tokens_to_ids(qwen2_vl.END), tok.pad_token_id
    return dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, max_position_embeddings=1024, bos_token_id=pad, eos_token_id=end,
                initializer_range=0.1,
                pad_token_id=pad, rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1],
                                                   "mrope_interleaved": True, "rope_theta": 5e6}, **extra)


def vision_config(**extra) -> dict:
    """A 2-layer ViT, dim 32, patch 16, a 4x4 grid of learned position embeddings, into the dim-32 decoder."""
    return dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=16,
                spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16, **extra)


def build_tiny(config_cls, model_cls, processor, text: dict, vision: dict, family: str) -> Loaded:
    """A random model of `config_cls` with the processor's special token ids and the Instruct generation config."""
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids
    end, pad = ids(qwen2_vl.END), tok.pad_token_id
    config = config_cls(text_config=text, vision_config=vision, tie_word_embeddings=False,
                        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    model = model_cls(config).float()
    model.generation_config.bos_token_id = pad
    model.generation_config.pad_token_id = pad
    model.generation_config.eos_token_id = [end, pad]  # stop at <|im_end|> or <|endoftext|>
    return Loaded(model=model, processor=processor, family=family)


def tiny() -> Loaded:
    """A random Qwen3-VL: ViT 2 layers (both DeepStack layers, added at decoder layers 0 and 1), tiny decoder."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    processor = build_processor()
    return build_tiny(Qwen3VLConfig, Qwen3VLForConditionalGeneration, processor, text_config(processor.tokenizer),
                      vision_config(deepstack_visual_indexes=[0, 1]), "qwen3_vl")


FREEZE_GROUPS = {
    "vision": ("model.visual.patch_embed.", "model.visual.pos_embed.", "model.visual.blocks."),
    "projector": ("model.visual.merger.", "model.visual.deepstack_merger_list."),
    "language": ("model.language_model.", "lm_head."),
}

FAMILY = ModelFamily(
    name="qwen3_vl",
    description="Qwen3-VL (Qwen/Qwen3-VL-*-Instruct): ViT -> patch merger (+ DeepStack) -> Qwen3 with M-RoPE",
    load=load,
    encode=qwen2_vl.encode,
    lora_targets=qwen2_vl.FAMILY.lora_targets,  # the language model's linears (the vision MLP is linear_fc1/fc2)
    freeze_groups=FREEZE_GROUPS,
    tiny=tiny,
    image_tokens=qwen2_vl.image_tokens,
    video_tokens=video_tokens,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    projector_modules=("merger",),
    vision_cache=True,  # takes mm_encoder_outputs (pooled + DeepStack features): the frozen-vision cache applies
    video_cache="videos",
    processor_loader=load_processor,
    packing=True,  # with each sample's M-RoPE positions, as Qwen2-VL (qwen2_vl.pack_inputs)
    pack_inputs=qwen2_vl.pack_inputs,
    language_model="model.language_model",
    vision_tower="model.visual",
)
