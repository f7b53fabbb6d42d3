"""PaliGemma family (`PaliGemmaForConditionalGeneration`): SigLIP -> linear projector -> Gemma (PaliGemma 1) or
Gemma 2 (PaliGemma 2), a prefix-LM: the image tokens and the prompt (the prefix) attend to each other both ways,
the answer (the suffix) is causal.

Checkpoints: google/paligemma-3b-pt-224 (-448, -896), google/paligemma-3b-mix-224, google/paligemma2-3b-pt-224,
google/paligemma2-10b-pt-448, google/paligemma2-3b-mix-448, ...

Prompt format: the checkpoints have no chat template; they were trained on big_vision's task prefixes,
`"<image>" * k + "<bos>" + prefix + "\\n"` followed by `suffix + "<eos>"`. The prefix is the user's text when it
already is such a task prefix ("answer en ...", "caption es", "ocr", "detect cat", ...); otherwise a "vqa" sample
becomes "answer en {question}" and a "caption" sample "caption en", the prompts the pt/mix checkpoints know.

Traps handled:
- PaliGemmaProcessor builds the layout itself (`text`=prefix, `suffix`=answer, as a tokenizer text pair): it adds the
  bos after the image tokens, the "\\n" separator and the eos after the suffix, and returns `token_type_ids`
  (0 prefix, 1 suffix) which the model needs for its prefix-LM mask. Labels are the suffix tokens (answer + eos).
- The trained end token is the tokenizer's eos (what the processor appends); `load` makes sure
  `generation_config.eos_token_id` contains it, so generation stops where training taught it to.
- One prefix, one suffix: the format has no turns, so a multi-turn conversation (or a system turn) is rejected
  rather than flattened into a format the checkpoints never saw. The processor requires an image: no text-only.
- Packing (`train.packing`) keeps the prefix-LM mask per sample (transformers >= 5.25; tested packed == padded).
- The processor adds 1,152 `<locXXXX>`/`<segXXX>` tokens to the tokenizer: the tiny model's vocabulary counts them.
"""

from __future__ import annotations

import re

from vlmtune.data.sample import message_text
from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.models.family import Batch, Loaded, ModelFamily, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, check_length

LANGUAGE_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# big_vision's task prefixes ("answer en", "caption pt-BR", "ocr", "detect cat ; dog", "segment cat")
TASK_PREFIX = re.compile(r"^((answer|caption|describe|question) [a-z]{2}(-[A-Za-z]{2,4})?\b|(ocr|detect|segment)\b)")
DEFAULT_PREFIX = {"vqa": "answer en {question}", "caption": "caption en"}


def load(cfg) -> Loaded:
    loaded = load_pretrained(cfg, "paligemma", freeze_groups=FAMILY.freeze_groups)
    model, processor = loaded.model, loaded.processor
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else eos if isinstance(eos, list) else [eos]
    if processor.tokenizer.eos_token_id not in eos:  # the processor ends every suffix with the tokenizer's eos
        model.generation_config.eos_token_id = [*eos, processor.tokenizer.eos_token_id]
    return loaded


def prefix_of(sample, messages: list[dict]) -> str:
    """The PaliGemma prefix for a single-turn conversation (see the module docstring)."""
    roles = [m["role"] for m in messages]
    if roles not in (["user"], ["user", "assistant"]):
        raise ValueError(f"sample {sample.id!r}: PaliGemma takes one user turn and one answer, got roles {roles}")
    text = message_text(messages[0]).strip()
    if TASK_PREFIX.match(text) or sample.task not in DEFAULT_PREFIX:
        return text
    return DEFAULT_PREFIX[sample.task].format(question=text)


def encode(processor, samples, images, mode: str, max_length: int) -> Batch:
    """Samples -> model inputs. "train": prefix + suffix (answer + eos), labels on the suffix only, right padding.
    "generate": the prefix only, left padding. A sample longer than `max_length` raises SampleTooLong."""
    import torch

    train = mode == "train"
    tok = processor.tokenizer
    prefixes = [processor.image_token * len(s.images) + prefix_of(s, s.messages if train else s.prompt_messages)
                for s in samples]
    suffixes = [s.target for s in samples] if train else None
    tok.padding_side = "right" if train else "left"
    load_image_list(samples, images)  # checks each sample got as many images as slots
    nested = [list(imgs) for imgs in images]  # one list per sample: the processor pairs them with the prefixes
    out = processor(text=prefixes, images=nested, suffix=suffixes, padding=True, return_tensors="pt")
    inputs = {k: out[k] for k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values")}
    for b, s in enumerate(samples):
        n = int(out["attention_mask"][b].sum())
        n_image = int((out["input_ids"][b] == processor.image_token_id).sum())
        check_length(s.id, n_image, n - n_image, max_length)
    n_target = 0
    if train:
        suffix = (out["token_type_ids"] == 1) & out["attention_mask"].bool()
        inputs["labels"] = torch.where(suffix, out["input_ids"], IGNORE_INDEX)
        n_target = int(suffix.sum())
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=n_target)


_CORPUS = [
    "answer en What colour is the top? red", "caption en a person wearing a red top and blue trousers",
    "What colour is the shirt? blue green yellow black white", "Describe the image. How many shapes are there?",
]


def build_tokenizer():
    """A byte-level BPE with Gemma's special tokens (pad 0, eos 1, bos 2), trained here on a few sentences."""
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_bpe(_CORPUS * 4, ["<pad>", "<eos>", "<bos>", "<image>"], 400)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   extra_special_tokens={"image_token": "<image>"})


def tiny() -> Loaded:
    """A random PaliGemma: SigLIP (2 layers, dim 32) on 32x32 images in 8x8 patches (16 image tokens), Gemma
    (2 layers, dim 32), the real PaliGemmaProcessor with the PIL SigLIP image processor."""
    import torch
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipVisionConfig,
    )
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32}, image_seq_length=16)
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=build_tokenizer())
    tok = processor.tokenizer
    vision = SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=4, vision_use_head=False)
    text = GemmaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    config = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=processor.image_token_id,
                             projection_dim=32, hidden_size=32, vocab_size=len(tok))
    model = PaliGemmaForConditionalGeneration(config).to(torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return Loaded(model=model, processor=processor, family="paligemma")


FAMILY = ModelFamily(
    name="paligemma",
    description="PaliGemma 1/2 (google/paligemma*-pt/-mix): SigLIP -> linear -> Gemma prefix-LM, task-prefix prompts",
    load=load,
    encode=encode,
    # regex: the language model's linears only (SigLIP has q_proj/k_proj/v_proj too)
    lora_targets=(r".*language_model.*\.(" + "|".join(LANGUAGE_LINEARS) + ")",),
    freeze_groups={
        "vision": ("model.vision_tower.",),
        "projector": ("model.multi_modal_projector.",),
        "language": ("model.language_model.", "lm_head."),
    },
    tiny=tiny,
    image_tokens=lambda processor, width, height: processor.image_seq_length,  # resized to one fixed size
    tasks=("vqa", "caption"),
    text_only=False,
    multi_image=False,
    vision_cache=True,  # takes mm_encoder_outputs: the frozen-vision cache applies
    # since transformers 5.25 the prefix mask (token_type_ids -> block_sequence_ids) is OR-ed in before the packed-
    # sequence mask is AND-ed: each sample's image + prompt attend both ways within that sample only. Before 5.25
    # a packed row let one sample's prefix see the other samples' prefixes (hence the lower bound in pyproject.toml)
    packing=True,
    language_model="model.language_model",
    vision_tower="model.vision_tower",
    no_chat_prompt="the prefix depends on the sample's task (\"answer en {question}\" for VQA, \"caption en\" for "
    "captions), which a chat template cannot see; the processor adds the image tokens, BOS and \"\\n\" itself",
)
