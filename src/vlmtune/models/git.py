"""GIT family (`GitForCausalLM`): CLIP ViT -> linear projector -> a BERT-style decoder over [image features; text].

Checkpoints: microsoft/git-base, git-base-coco, git-base-textvqa, git-base-vqav2, git-large-coco, ... In
transformers 5.23 `GitForCausalLM` is mapped by both AutoModelForCausalLM and AutoModelForImageTextToText; `load`
uses AutoModelForImageTextToText like every other family.

Prompt format (the checkpoints have no chat template): `[CLS] question answer [SEP]`, exactly what GIT's VQA
checkpoints were trained with and what their model cards generate from (`[CLS] question`); captioning is the same
with the user text as prefix (an empty user text gives the captioning checkpoints' `[CLS] caption [SEP]`). Later
turns follow as `question answer [SEP]`; every answer and its `[SEP]` (the end token) is trained.

Traps handled: the image features are NOT placeholders in input_ids: the model prepends them inside `forward`, so
input_ids / labels hold text only and the logits are longer than the labels by the image tokens (the model's own
loss skips them); `image_tokens` is the ViT's (size/patch)^2 + CLS, stored on the image processor as
`image_seq_length` (the processor has no patch size). GitModel repeats the image features to fill the batch, so
every sample must have exactly one image. Absolute positions: generation derives position_ids from the (left
padded) attention mask, so the text starts at position 0 as in training.
"""

from __future__ import annotations

from vlmtune.data.sample import message_text
from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.models.family import Batch, Loaded, ModelFamily, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, check_length


def load(cfg) -> Loaded:
    loaded = load_pretrained(cfg, "git", freeze_groups=FAMILY.freeze_groups)
    model, processor = loaded.model, loaded.processor
    # the number of prepended image positions, which only the model knows (ViT patch size + CLS)
    processor.image_processor.image_seq_length = model.git.encoder.layer[0].attention.self.image_patch_tokens
    return loaded


def image_token_count(processor) -> int:
    n = getattr(processor.image_processor, "image_seq_length", None)
    if n is None:
        raise ValueError("GIT processor without image_processor.image_seq_length: load it with vlmtune's git.load")
    return n


def _render(tok, messages: list[dict], add_generation_prompt: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """`[CLS] question answer [SEP] question ...` token ids and the [start, end) span of each answer (+ [SEP])."""
    ids, spans = [tok.cls_token_id], []
    for m in messages:
        text = message_text(m)
        if m["role"] == "assistant":
            start = len(ids)
            ids += tok(" " + text, add_special_tokens=False).input_ids + [tok.sep_token_id]
            spans.append((start, len(ids)))
        elif text:  # system and user text are both prompt
            ids += tok((" " if len(ids) > 1 else "") + text, add_special_tokens=False).input_ids
    del add_generation_prompt  # GIT has no generation prompt: the answer follows the question directly
    return ids, spans


def encode(processor, samples, images, mode: str, max_length: int) -> Batch:
    """Samples -> model inputs. "train": the whole conversation, right padded, labels on each answer and its [SEP].
    "generate": `[CLS] question` (all turns before the last answer), left padded. The image positions the model
    prepends count towards `max_length`; a sample that does not fit raises SampleTooLong; nothing is cut."""
    import torch

    tok = processor.tokenizer
    train = mode == "train"
    per_image = image_token_count(processor)
    rendered = []
    for s in samples:
        if len(s.images) != 1:
            raise ValueError(f"sample {s.id!r}: GIT takes exactly one image per sample, got {len(s.images)}")
        ids, spans = _render(tok, s.messages if train else s.prompt_messages, not train)
        check_length(s.id, per_image, len(ids), max_length)
        rendered.append((ids, spans))
    width = max(len(ids) for ids, _ in rendered)
    input_ids = torch.full((len(samples), width), tok.pad_token_id)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX)
    for b, (ids, spans) in enumerate(rendered):
        at = 0 if train else width - len(ids)  # right padding for training, left for generation
        input_ids[b, at : at + len(ids)] = torch.tensor(ids)
        attention_mask[b, at : at + len(ids)] = 1
        for start, end in spans:
            labels[b, at + start : at + end] = torch.tensor(ids[start:end])
    pixels = processor.image_processor(load_image_list(samples, images), return_tensors="pt").pixel_values
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixels}
    n_target = 0
    if train:
        inputs["labels"] = labels
        n_target = int((labels != IGNORE_INDEX).sum())
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=n_target)


_CORPUS = (
    "what colour is the top? describe the image. a person wearing a red top and blue trousers. what does the front "
    "of the bus say? how many shapes are there? yes no green yellow black white circle square"
)


def build_tokenizer():
    """A byte-level BPE with BERT's special tokens ([CLS] starts, [SEP] ends), trained in-process in milliseconds."""
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_bpe([_CORPUS] * 20, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], 400)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def tiny() -> Loaded:
    """A random GIT: ViT 1 layer dim 32 on 32x32 images, patch 16 (4 patches + CLS = 5 image positions), text decoder
    2 layers dim 32."""
    import torch
    from transformers import GitConfig, GitForCausalLM, GitProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = build_tokenizer()
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                            image_seq_length=5)
    vision = {"image_size": 32, "patch_size": 16, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 4}
    config = GitConfig(vision_config=vision, vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, max_position_embeddings=256,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    model = GitForCausalLM(config)
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = tok.pad_token_id, tok.sep_token_id, tok.cls_token_id
    return Loaded(model=model.to(torch.float32), processor=GitProcessor(image_processor, tok), family="git")


FAMILY = ModelFamily(
    name="git",
    description="GIT (microsoft/git-*): CLIP ViT -> projector -> BERT-style decoder; [CLS] question answer [SEP]",
    load=load,
    encode=encode,
    # regex: the text decoder's linears only (the CLIP tower names its own q_proj/k_proj/v_proj/fc1/fc2)
    lora_targets=(r".*git\.encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
                  r"|intermediate\.dense|output\.dense)",),
    freeze_groups={
        "vision": ("git.image_encoder.",),
        "projector": ("git.visual_projection.", "git.img_temporal_embedding."),
        "language": ("git.embeddings.", "git.encoder.", "output."),
    },
    tiny=tiny,
    image_tokens=lambda processor, width, height: image_token_count(processor),  # resized to one fixed size
    tasks=("vqa", "caption"),
    text_only=False,
    multi_image=False,
    # the image features are prepended inside the model: the logits have that many positions before the text
    logit_prefix=lambda model: model.git.encoder.layer[0].attention.self.image_patch_tokens,
    vision_tower="git.image_encoder",
    no_chat_prompt="GIT's checkpoints take `[CLS] question`, what the processor's tokenizer makes of the bare text; "
    "they were never trained on a chat format",
)
