"""Pix2Struct family (`Pix2StructForConditionalGeneration`): a ViT encoder over variable-resolution patches and a
T5-style text decoder. Checkpoints: google/pix2struct-{base,large} and their fine-tunes
(google/pix2struct-textcaps-base, google/pix2struct-docvqa-base, google/pix2struct-chartqa-base,
google/pix2struct-ai2d-base, ...), google/deplot, google/matcha-* (chartqa, plotqa-v1/v2, chart2text-*).

Prompt format (there is no chat template; this is how the official checkpoints were trained): in VQA mode
(`image_processor.is_vqa`, true for the DocVQA/ChartQA/AI2D/DePlot/MatCha checkpoints) the question is drawn as a
header above the image; in captioning mode the image alone is the input and the question is not shown. The encoder
gets `flattened_patches` + `attention_mask` (the image rescaled to at most `max_patches` patches, padded to exactly
`max_patches`); the decoder's labels are the answer tokens + `</s>`, padded with -100. The model shifts labels right
itself (decoder start = pad), so `shift_labels=False`. One image and one question/answer pair per sample: a
multi-turn conversation raises ValueError rather than being flattened into a format the checkpoints never saw.

What `max_length` bounds: `max_patches` image tokens (the encoder's length, fixed) + text tokens, which are the
question's tokens (in VQA mode: drawn into the header, where each extra line takes patches from the image) and, when
training, the decoder's targets (answer + `</s>`). A sample over the budget raises SampleTooLong; nothing is cut.

Traps handled:
- `Pix2StructProcessor` passes `max_patches=2048` unless told otherwise: encode calls the image processor itself with
  the processor's own `max_patches` every time.
- The processor's header renderer downloads Arial from the hub (`ybelkada/fonts`), and 5.23 gives no public way to
  pass a font. encode renders the header itself with transformers' own `render_text` (same wrap, size and padding)
  and a local font, Debian's DejaVuSans or else Pillow's built-in font, composes it like `render_header` does, and
  calls the image processor with `is_vqa=False` on the result. The glyphs differ from the checkpoints' Arial; train
  and inference in vlmtune use the same font.
- The decoder's linears are `query`/`key`/`value`/`output` and `wi_0`/`wi_1`/`wo`; the vision encoder uses the same
  names, so the LoRA regex is anchored on `decoder.layer.`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageFont

from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.models.family import Batch, Loaded, ModelFamily, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, check_length

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
HEADER_TEXT_SIZE = 36  # transformers' render_text default, as in the original pix2struct preprocessing
DECODER_LINEARS = ("query", "key", "value", "output", "wi_0", "wi_1", "wo")


def load(cfg) -> Loaded:
    return load_pretrained(cfg, "pix2struct", freeze_groups=FAMILY.freeze_groups)


@lru_cache(maxsize=1)
def _font_bytes() -> bytes:
    """A local TrueType font: DejaVuSans if installed, else the one Pillow embeds (never the hub's Arial)."""
    if DEJAVU.exists():
        return DEJAVU.read_bytes()

    return ImageFont.load_default(size=HEADER_TEXT_SIZE).path.getvalue()  # an in-memory FreeType font


def render_header(image, header: str):
    """`image` with `header` drawn above it, as Pix2StructImageProcessor.render_header composes them."""
    from transformers.models.pix2struct.image_processing_pil_pix2struct import render_text

    image = image.convert("RGB")
    text = render_text(header, text_size=HEADER_TEXT_SIZE, font_bytes=_font_bytes())
    width = max(text.width, image.width)
    height = int(image.height * (width / image.width))
    text_height = int(text.height * (width / text.width))
    canvas = Image.new("RGB", (width, height + text_height), "white")
    canvas.paste(text.resize((width, text_height)), (0, 0))
    canvas.paste(image.resize((width, height)), (0, text_height))
    return canvas


def _question_and_answer(sample, train: bool) -> tuple[str, str | None]:
    """The one question (and in training, the one answer) of a single-turn sample."""
    roles = [m["role"] for m in sample.messages if m["role"] != "system"]
    if roles not in (["user"], ["user", "assistant"]) or len(sample.images) != 1:
        raise ValueError(f"sample {sample.id!r}: Pix2Struct takes one image and one question/answer pair, got "
                         f"{len(sample.images)} image(s) and turns {roles}")
    return sample.question, sample.target if train else None


def encode(processor, samples, images, mode: str, max_length: int) -> Batch:
    """Samples -> encoder inputs (+ decoder labels in "train" mode: answer tokens + `</s>`, right-padded with -100).
    "generate" mode gives the encoder inputs only; generation starts from the model's decoder start token."""
    import torch

    image_processor, tok = processor.image_processor, processor.tokenizer
    max_patches = image_processor.max_patches
    train = mode == "train"
    flat = load_image_list(samples, images)
    pictures, targets = [], []
    for s, image in zip(samples, flat, strict=True):
        question, answer = _question_and_answer(s, train)
        n_header = len(tok(question, add_special_tokens=False).input_ids) if image_processor.is_vqa else 0
        target = tok(answer, add_special_tokens=False).input_ids + [tok.eos_token_id] if train else []
        n_text = n_header + len(target)
        check_length(s.id, max_patches, n_text, max_length)
        pictures.append(render_header(image, question) if image_processor.is_vqa else image)
        targets.append(target)
    # the header is already drawn (with a local font): the processor only cuts patches, at its own max_patches
    out = image_processor(pictures, is_vqa=False, max_patches=max_patches, return_tensors="pt")
    inputs = {"flattened_patches": out["flattened_patches"], "attention_mask": out["attention_mask"]}
    n_target = 0
    if train:
        labels = torch.full((len(samples), max(map(len, targets))), IGNORE_INDEX, dtype=torch.long)
        for b, target in enumerate(targets):
            labels[b, : len(target)] = torch.tensor(target)
        n_target = int((labels != IGNORE_INDEX).sum())
        inputs["labels"] = labels
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=n_target)


TINY_CORPUS = (
    "What colour is the top? red blue green yellow black white grey orange purple pink brown",
    "Describe the image. a person wearing a red top and blue trousers, a skirt, a dress, a shirt",
    "What is the value of the bar? How many shapes are there? What is the title of the chart?",
    "Generate underlying data table of the figure below: year total percent | 1 2 3 4 5 6 7 8 9 0",
)


def build_tokenizer(vocab_size: int = 400):
    """A byte-level BPE trained in-process, with T5's special-token layout (pad 0, eos 1, unk 2) and no BOS."""
    from transformers import PreTrainedTokenizerFast

    # a leading space, like T5's sentencepiece "▁" prefix
    tok = train_byte_bpe(TINY_CORPUS, ["<pad>", "</s>", "<unk>"], vocab_size, add_prefix_space=True)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build(tok, vqa: bool, hidden: int, heads: int, ff: int, vision_layers: int, text_layers: int, patch: int,
          max_patches: int, dropout: float | None = None) -> Loaded:
    """A random-weight Pix2Struct around the tokenizer `tok` (T5's layout: pad, eos, no BOS) and its processor: the
    one place a Pix2Struct is built from sizes (`tiny` here, `vlmtune chart init-model`'s DePlot-shaped model).
    `dropout` sets the text and vision dropout and the attention dropout; None keeps transformers' defaults."""
    from transformers import Pix2StructConfig, Pix2StructForConditionalGeneration, Pix2StructProcessor
    from transformers.models.pix2struct.image_processing_pil_pix2struct import Pix2StructImageProcessorPil

    image_processor = Pix2StructImageProcessorPil(
        is_vqa=vqa, max_patches=max_patches, patch_size={"height": patch, "width": patch}
    )
    processor = Pix2StructProcessor(image_processor=image_processor, tokenizer=tok)
    drop = {} if dropout is None else {"dropout_rate": dropout}
    d_kv = hidden // heads
    config = Pix2StructConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, d_kv=d_kv, d_ff=ff, **drop, num_layers=text_layers,
                         num_heads=heads, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         decoder_start_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=hidden, patch_embed_hidden_size=3 * patch * patch, d_ff=ff,
                           **drop, **({} if dropout is None else {"attention_dropout": dropout}),
                           d_kv=d_kv, num_hidden_layers=vision_layers, num_attention_heads=heads,
                           seq_len=2 * max_patches),  # row/column ids index it (1-based)
        is_vqa=vqa,
    )
    model = Pix2StructForConditionalGeneration(config)
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id = tok.pad_token_id, tok.eos_token_id
    gen.decoder_start_token_id = tok.pad_token_id
    gen.bos_token_id = None  # T5-style: no BOS; the decoder starts from pad
    return Loaded(model=model, processor=processor, family="pix2struct")


def tiny() -> Loaded:
    """A random Pix2Struct (2-layer ViT and decoder, dim 32, 8x8 patches, max_patches 64) in VQA mode."""
    return build(build_tokenizer(), vqa=True, hidden=32, heads=4, ff=64, vision_layers=2, text_layers=2, patch=8,
                 max_patches=64)


FAMILY = ModelFamily(
    name="pix2struct",
    description="Pix2Struct / DePlot / MatCha (google/pix2struct-*, google/deplot, google/matcha-*): "
    "variable-resolution ViT encoder -> T5-style decoder; VQA questions drawn as a header on the image",
    load=load,
    encode=encode,
    # regex: the decoder's linears only (the vision encoder's attention is also query/key/value/output)
    lora_targets=(r"decoder\.layer\.\d+\..*\.(" + "|".join(DECODER_LINEARS) + ")",),
    freeze_groups={
        "vision": ("encoder.",),  # no projector: the decoder cross-attends to the encoder's output directly
        "language": ("decoder.",),
    },
    tiny=tiny,
    image_tokens=lambda processor, width, height: processor.image_processor.max_patches,  # padded to max_patches
    tasks=("vqa", "caption"),
    text_only=False,
    multi_image=False,
    shift_labels=False,
    no_chat_prompt="an encoder-decoder model that reads the question drawn as a header on the image "
    "(`flattened_patches`): there is no text prompt to template",
)
