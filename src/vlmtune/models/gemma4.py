"""Gemma 4 family (`Gemma4ForConditionalGeneration`, model_type "gemma4"): a variable-resolution ViT (2-D rotary
positions, 3x3 pooling) -> RMS-norm + linear embedder -> Gemma 4 decoder (sliding-window and global layers; the
"E" checkpoints add per-layer embeddings and share the KV of their last layers with earlier ones).

Checkpoints: google/gemma-4-E2B-it, google/gemma-4-E4B-it (and the larger -it checkpoints of the same architecture,
whose text config sets `use_bidirectional_attention: "vision"`). Their config.json names
`Gemma4ForConditionalGeneration`; transformers' `gemma4_unified` (another variant, with its own processor and a
raw-waveform audio embedder) and `gemma4_assistant` (a small draft model tied to a target model) are not these.
Image only: the E2B/E4B checkpoints also have an audio tower (`model.audio_tower`, `model.embed_audio`), which
vlmtune never feeds; it is its own freeze group ("audio", always frozen, never a LoRA target), and the processor is
built without the audio feature extractor and the video processor.

Prompt format: the checkpoints' chat template, `<bos><|turn>user\\n{image}{text}<turn|>\\n<|turn>model\\n{answer}
<turn|>\\n` ("assistant" is rendered as "model"; a system turn is its own `<|turn>system\\n...<turn|>\\n`). Each image
is a `<|image|>` in the text, which the processor expands to `<|image>` + `<|image|>` x n + `<image|>`, n the image's
soft tokens. The generation prompt is `<|turn>model\\n`; the trained tokens are the answer and `<turn|>`.

Traps handled here:
- `Gemma4Processor` insists on an audio feature extractor and a video processor; the video processor's module needs
  torchvision (absent here) just to import. `ImageOnlyProcessor` is Gemma4Processor with the image processor (the PIL
  one) and the tokenizer only: the same text/image code and outputs. It saves itself as `Gemma4Processor`, with the
  checkpoint's feature-extractor and video-processor settings put back, so plain transformers (with torchvision)
  reloads a checkpoint or export as the original.
- Variable resolution: every image is resized, aspect kept, to the largest multiple of patch x pooling (48 px) with at
  most `max_soft_tokens` (70/140/280/560/1120; 280 in the checkpoints) soft tokens, upscaling small images; so the
  soft tokens of an image depend on its aspect ratio (`image_tokens` uses the processor's own resize rule).
  `model.max_pixels` lowers `max_soft_tokens` to the largest allowed budget that fits (`data/resize.py`).
- The -it checkpoints' generation_config eos ids are [1, 106, 50]: `<eos>`, `<turn|>` (the end of a turn, trained
  here) and `<|tool_response>` (where a tool call stops, for the caller to answer); the "\\n" the template writes
  after `<turn|>` is never generated, so it is not trained either.
- The template writes `<bos>` itself (nothing is tokenized with special tokens), trims each text, and renders a
  system turn's content as a string only (a list of parts would print as a Python list): `encode` passes it joined.
- `mm_token_type_ids` (1 on the soft image tokens) is passed in training and generation: with
  `use_bidirectional_attention: "vision"` an image's tokens attend to each other both ways in the sliding layers
  (not in the global ones, unlike Gemma 3); without it they would be causal. Hence no packing.
- `image_position_ids` (each patch's x/y, -1 on padding patches) is read by the vision tower only.
- Gemma4Processor.validate_inputs wants the tokenizer's audio tokens to exist even for images (an operator-precedence
  slip): the tiny tokenizer has them, as the real one does.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.models.family import Batch, Loaded, ModelFamily, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, assistant_spans, check_length, expanded_labels

LANGUAGE_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                    "per_layer_input_gate", "per_layer_projection")
END_OF_TURN = "<turn|>"

# google/gemma-4-E2B-it's chat template without its tool-calling parts (tool declarations, calls and responses,
# which vlmtune's samples never hold): the same text for system/user/assistant turns of text and images.
CHAT_TEMPLATE = (
    "{%- macro strip_thinking(text) -%}{%- set ns = namespace(result='') -%}"
    "{%- for part in text.split('<channel|>') -%}"
    "{%- if '<|channel>' in part -%}{%- set ns.result = ns.result + part.split('<|channel>')[0] -%}"
    "{%- else -%}{%- set ns.result = ns.result + part -%}{%- endif -%}{%- endfor -%}"
    "{{- ns.result | trim -}}{%- endmacro -%}"
    "{%- set loop_messages = messages -%}{{- bos_token -}}"
    "{%- if (enable_thinking is defined and enable_thinking) or messages[0]['role'] in ['system', 'developer'] -%}"
    "{{- '<|turn>system\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking -%}{{- '<|think|>\\n' -}}{%- endif -%}"
    "{%- if messages[0]['role'] in ['system', 'developer'] -%}{{- messages[0]['content'] | trim -}}"
    "{%- set loop_messages = messages[1:] -%}{%- endif -%}"
    "{{- '<turn|>\\n' -}}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{%- if not (role == 'model' and loop.index0 > 0 and loop_messages[loop.index0 - 1]['role'] == 'assistant') -%}"
    "{{- '<|turn>' + role + '\\n' }}{%- endif -%}"
    "{%- if message['content'] is string -%}"
    "{%- if role == 'model' -%}{{- strip_thinking(message['content']) -}}"
    "{%- else -%}{{- message['content'] | trim -}}{%- endif -%}"
    "{%- elif message['content'] is sequence -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}"
    "{%- if role == 'model' -%}{{- strip_thinking(item['text']) -}}{%- else -%}{{- item['text'] | trim -}}{%- endif -%}"
    "{%- elif item['type'] == 'image' -%}{{- '<|image|>' -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<turn|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|turn>model\\n' -}}{%- endif -%}"
)

# what the checkpoints' processor_config.json holds besides the image processor (written back on save when the
# processor was not loaded from such a file, e.g. the tiny one)
_VIDEO_PROCESSOR = {"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
                    "do_sample_frames": True, "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0],
                    "max_soft_tokens": 70, "num_frames": 32, "patch_size": 16, "pooling_kernel_size": 3,
                    "resample": 3, "rescale_factor": 1 / 255, "return_metadata": False,
                    "video_processor_type": "Gemma4VideoProcessor"}
_FEATURE_EXTRACTOR = {"dither": 0.0, "feature_extractor_type": "Gemma4AudioFeatureExtractor", "feature_size": 128,
                      "fft_length": 512, "fft_overdrive": False, "frame_length": 320, "hop_length": 160,
                      "input_scale_factor": 1.0, "max_frequency": 8000.0, "mel_floor": 0.001, "min_frequency": 0.0,
                      "padding_side": "right", "padding_value": 0.0, "per_bin_mean": None, "per_bin_stddev": None,
                      "preemphasis": 0.0, "preemphasis_htk_flavor": True, "return_attention_mask": True,
                      "sampling_rate": 16000}
_DROPPED = ("feature_extractor", "video_processor", "audio_seq_length", "audio_ms_per_token")


def __getattr__(name: str):
    # built on first use: defining it imports transformers (seconds), which importing the registry must not do
    if name == "ImageOnlyProcessor":
        return image_only_processor()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def image_only_processor() -> type:
    """`ImageOnlyProcessor`, registered with AutoProcessor for Gemma4Config."""
    from transformers import AutoProcessor, Gemma4Config, Gemma4Processor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyProcessor(Gemma4Processor):
        """Gemma4Processor without its audio feature extractor and video processor (torchvision)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_seq_length: int = 280,
                     **kwargs):
            self.dropped = {k: kwargs.pop(k) for k in _DROPPED if k in kwargs}
            """The checkpoint's settings of the parts left out, written back by save_pretrained."""
            self.image_seq_length = image_seq_length
            self.image_token_id = tokenizer.image_token_id
            self.boi_token, self.eoi_token, self.image_token = tokenizer.boi_token, tokenizer.eoi_token, \
                tokenizer.image_token
            for name in ("audio_token", "boa_token", "eoa_token"):
                setattr(self, name, getattr(tokenizer, name, None))
            self.audio_token_id = getattr(tokenizer, "audio_token_id", None)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

        def save_pretrained(self, save_directory, *args, **kwargs):
            out = super().save_pretrained(save_directory, *args, **kwargs)
            write_upstream_files(Path(save_directory), self)
            return out

    ImageOnlyProcessor.__qualname__ = ImageOnlyProcessor.__name__
    AutoProcessor.register(Gemma4Config, ImageOnlyProcessor, exist_ok=True)
    return ImageOnlyProcessor


def write_upstream_files(directory: Path, processor) -> None:
    """Name `Gemma4Processor` (not vlmtune's class) in the saved files and put the audio feature extractor's and the
    video processor's settings back into processor_config.json, as the checkpoints have them."""
    for name in ("processor_config.json", "tokenizer_config.json"):
        path = directory / name
        if path.is_file():
            config = json.loads(path.read_text())
            if "processor_class" in config:
                config["processor_class"] = "Gemma4Processor"
            if name == "processor_config.json":
                ip = config.get("image_processor")
                if isinstance(ip, dict):
                    ip["image_processor_type"] = ip.get("image_processor_type", "").removesuffix("Pil")
                video = {**_VIDEO_PROCESSOR, "patch_size": processor.image_processor.patch_size,
                         "pooling_kernel_size": processor.image_processor.pooling_kernel_size}
                defaults = {"feature_extractor": _FEATURE_EXTRACTOR, "video_processor": video,
                            "audio_seq_length": 750, "audio_ms_per_token": 40}
                config = {**defaults, **processor.dropped, **config}
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_processor(path, **options):
    """The processor of a Gemma 4 checkpoint (or of a vlmtune checkpoint of one), image half only."""
    return image_only_processor().from_pretrained(path, **options)


def load(cfg) -> Loaded:
    loaded = load_pretrained(cfg, "gemma4", image_only_processor(), freeze_groups=FREEZE_GROUPS)
    freeze_audio(loaded.model)
    return loaded


def freeze_audio(model) -> None:
    """The audio tower and its embedder never get a gradient (vlmtune feeds no audio): frozen from the start, so no
    run counts them as trained (a full fine-tune freezes only the groups its config names)."""
    for name, p in model.named_parameters():
        if name.startswith(FREEZE_GROUPS["audio"]):
            p.requires_grad_(False)


def image_tokens(processor, width: int, height: int) -> int:
    """Soft image tokens of one image (`<|image|>` x n): the image processor's aspect-preserving resize within
    `max_soft_tokens`, then one token per pooling x pooling patches. `<|image>`/`<image|>` count as text."""
    from transformers.models.gemma4.image_processing_pil_gemma4 import get_aspect_ratio_preserving_size

    ip = processor.image_processor
    k, patch = ip.pooling_kernel_size, ip.patch_size
    h, w = get_aspect_ratio_preserving_size(height, width, patch, ip.max_soft_tokens * k * k, k)
    return (h // patch) * (w // patch) // (k * k)


def _plain_system(messages: list[dict]) -> list[dict]:
    """Messages with a system turn's content as one string (the template prints it as is)."""
    return [{**m, "content": " ".join(p["text"] for p in m["content"] if p.get("type") == "text")}
            if m["role"] in ("system", "developer") and not isinstance(m["content"], str) else m for m in messages]


def encode(processor, samples, images, mode: str, max_length: int) -> Batch:
    """Samples -> model inputs. "train": the whole conversation, labels on every assistant answer + `<turn|>`,
    right padding. "generate": the conversation up to the last assistant turn plus `<|turn>model\\n`, left padding.
    A sample longer than `max_length` (image tokens included) raises SampleTooLong; nothing is cut."""
    tok = processor.tokenizer
    one_image = processor.boi_token + processor.image_token + processor.eoi_token  # one soft token per image
    end_of_turn = tok.convert_tokens_to_ids(END_OF_TURN)

    def render(messages, add_generation_prompt):
        return processor.apply_chat_template(_plain_system(messages), tokenize=False,
                                             add_generation_prompt=add_generation_prompt)

    def tokenize(texts):
        return tok([t.replace(processor.image_token, one_image) for t in texts], add_special_tokens=False).input_ids

    train = mode == "train"
    texts = [render(s.messages if train else s.prompt_messages, not train) for s in samples]
    tokenized = []  # per sample: (ids with one soft token per image, assistant spans, tokens per image)
    for s, text, imgs in zip(samples, texts, images, strict=True):
        per_image = [image_tokens(processor, img.width, img.height) for img in imgs]
        if train:
            unexpanded, spans = assistant_spans(tokenize, render, s.messages, s.id)
            # end each span at <turn|>: the "\n" the template writes after it is never generated
            spans = [(start, unexpanded.index(end_of_turn, start, end) + 1) for start, end in spans]
        else:
            unexpanded, spans = tokenize([text])[0], []
        check_length(s.id, sum(per_image), len(unexpanded) - len(imgs), max_length, resize=True)
        tokenized.append((unexpanded, spans, per_image))
    has_images = bool(load_image_list(samples, images))  # checks each sample got as many images as slots
    nested = [list(imgs) for imgs in images] if has_images else None
    out = processor(text=texts, images=nested, padding=True, padding_side="right" if train else "left",
                    add_special_tokens=False, return_tensors="pt")
    keys = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_position_ids")
    inputs = {k: out[k] for k in keys if k in out}
    n_target = 0
    if train:
        labels = expanded_labels(out["input_ids"], out["attention_mask"], processor.image_token_id,
                                 [s.id for s in samples], tokenized)
        n_target = int((labels != IGNORE_INDEX).sum())
        inputs["labels"] = labels
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=n_target)


SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|turn>", END_OF_TURN, "<|image>", "<image|>", "<|image|>",
            "<|audio>", "<audio|>", "<|audio|>", "<|video|>", "<|channel>", "<channel|>", "<|think|>"]
_CORPUS = [
    "user model system What colour is the top? red", "Describe the image. a person wearing a red top and blue trousers",
    "What colour is the shirt? blue green yellow black white", "How many shapes are there? one two three",
]


def build_tokenizer():
    """A byte-level BPE with Gemma 4's special tokens (pad 0, eos 1, bos 2 as in Gemma), trained here."""
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_bpe(_CORPUS * 4, SPECIALS, 400)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        mask_token="<mask>",
        extra_special_tokens={"boi_token": "<|image>", "eoi_token": "<image|>", "image_token": "<|image|>",
                              "boa_token": "<|audio>", "eoa_token": "<audio|>", "audio_token": "<|audio|>",
                              "sot_token": "<|turn>", "eot_token": END_OF_TURN, "soc_token": "<|channel>",
                              "eoc_token": "<channel|>", "think_token": "<|think|>"},
    )


def tiny() -> Loaded:
    """A random Gemma 4 with every part of E2B at dim 32: a 2-layer vision tower on 4x4 patches pooled 3x3, at most
    70 soft tokens per image (the smallest budget the processor allows); a 4-layer decoder (sliding, global,
    sliding, global; the last two reuse the first two's KV), per-layer embeddings, bidirectional attention over
    image tokens in the sliding layers; a 1-layer audio tower, never fed."""
    import torch
    from transformers import (
        Gemma4AudioConfig,
        Gemma4Config,
        Gemma4ForConditionalGeneration,
        Gemma4TextConfig,
        Gemma4VisionConfig,
    )
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    tok = build_tokenizer()
    image_processor = Gemma4ImageProcessorPil(patch_size=4, max_soft_tokens=70, pooling_kernel_size=3)
    processor = image_only_processor()(image_processor=image_processor, tokenizer=tok, image_seq_length=70,
                                       chat_template=CHAT_TEMPLATE)
    vision = Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=4, head_dim=8, global_head_dim=8, patch_size=4,
                                pooling_kernel_size=3, position_embedding_size=64, use_clipped_linears=True)
    text = Gemma4TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=1, head_dim=8, global_head_dim=16,
                            sliding_window=16, final_logit_softcapping=30.0, num_kv_shared_layers=2,
                            layer_types=["sliding_attention", "full_attention"] * 2,
                            use_bidirectional_attention="vision", vocab_size_per_layer_input=len(tok),
                            hidden_size_per_layer_input=8, max_position_embeddings=512,
                            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                            bos_token_id=tok.bos_token_id)
    audio = Gemma4AudioConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              subsampling_conv_channels=[8, 4], output_proj_dims=32)
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in (
        ("boi_token_id", "<|image>"), ("eoi_token_id", "<image|>"), ("image_token_id", "<|image|>"),
        ("boa_token_id", "<|audio>"), ("eoa_token_index", "<audio|>"), ("audio_token_id", "<|audio|>"),
        ("video_token_id", "<|video|>"))}
    config = Gemma4Config(text_config=text, vision_config=vision, audio_config=audio, **ids)
    model = Gemma4ForConditionalGeneration(config).to(torch.float32)
    freeze_audio(model)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids(END_OF_TURN)]
    model.generation_config.bos_token_id = tok.bos_token_id
    return Loaded(model=model, processor=processor, family="gemma4")


FREEZE_GROUPS = {
    "vision": ("model.vision_tower.",),
    "projector": ("model.embed_vision.",),
    "audio": ("model.audio_tower.", "model.embed_audio."),  # never fed: frozen by every recipe
    "language": ("model.language_model.", "lm_head."),
}

FAMILY = ModelFamily(
    name="gemma4",
    description="Gemma 4 (google/gemma-4-*-it): variable-resolution ViT -> linear embedder -> Gemma 4, chat template "
                "(images only; the audio tower stays frozen)",
    load=load,
    encode=encode,
    # regex: the language model's linears only (the vision and audio towers have q_proj/k_proj/... too)
    lora_targets=(r".*language_model.*\.(" + "|".join(LANGUAGE_LINEARS) + ")",),
    freeze_groups=FREEZE_GROUPS,
    tiny=tiny,
    image_tokens=image_tokens,
    tasks=("vqa", "caption"),
    text_only=True,
    multi_image=True,
    vision_cache=True,  # takes mm_encoder_outputs: the frozen-vision cache applies
    packing=False,  # image tokens attend both ways by mm_token_type_ids, which ignores the packing
    processor_loader=load_processor,
    projector_modules=("embed_vision",),
    language_model="model.language_model",
    vision_tower="model.vision_tower",
)
