"""Florence-2 family (`Florence2ForConditionalGeneration`, native in transformers 5.x): DaViT vision tower -> linear
projector -> BART encoder-decoder. Checkpoints: florence-community/Florence-2-base, -base-ft, -large, -large-ft (the
transformers-format conversions of microsoft/Florence-2-*; the microsoft/* repos themselves need trust_remote_code).

Prompt format (what the checkpoints were trained with; Florence-2 has no chat template): the encoder reads
`<image>*N <s> prompt </s>`, where N = the image processor's `image_seq_length` (577 for 768x768: a 24x24 feature
grid + 1 pooled token) and a task token such as "<CAPTION>" is replaced by its natural-language prompt by the
processor. VQA fine-tunes use "<VQA>" + question or the plain question: both are just the user text here. The decoder
sequence is `</s> <s> answer </s>` (decoder start token `</s>`, then BOS): labels are -100 on `<s>` and train the
answer and the closing `</s>`, so we pass `decoder_input_ids` ourselves instead of letting the model shift labels
(shifting labels whose first entry is -100 would feed `<pad>` where `<s>` belongs). Generation starts from `</s>`,
and `forced_bos_token_id` makes `<s>` the first generated token, as in pretraining.

Traps handled: Florence2Processor adds `<s>`/`</s>` only when images are given, so every sample needs exactly one
image; it is single-turn, so a conversation with several assistant turns is rejected (not silently flattened);
the processor needs `tokenizer.image_token`/`image_token_id`; AutoProcessor picks CLIPImageProcessorPil (no
torchvision).
"""

from __future__ import annotations

from vlmtune.data.sample import message_text
from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.models.family import Batch, Loaded, ModelFamily, SampleTooLong, load_image_list, load_pretrained
from vlmtune.models.labels import IGNORE_INDEX, check_length

LANGUAGE_LINEARS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def load(cfg) -> Loaded:
    loaded = load_pretrained(cfg, "florence2", freeze_groups=FAMILY.freeze_groups)
    model, processor = loaded.model, loaded.processor
    model.generation_config.forced_bos_token_id = processor.tokenizer.bos_token_id  # `<s>` after `</s>`, untrained
    return loaded


def image_token_count(processor) -> int:
    return processor.num_image_tokens


def _split(sample) -> tuple[str, str]:
    """(prompt, answer) of a single-turn sample; the answer is "" when the sample has none."""
    turns = [m for m in sample.messages if m["role"] != "system"]
    if sum(m["role"] == "assistant" for m in turns) > 1 or turns[0]["role"] != "user" or len(sample.images) != 1:
        raise ValueError(f"sample {sample.id!r}: Florence-2 takes one image, one prompt and at most one answer")
    return message_text(turns[0]), message_text(turns[1]) if len(turns) > 1 else ""


def encode(processor, samples, images, mode: str, max_length: int) -> Batch:
    """Samples -> model inputs. The encoder gets image tokens + the prompt (right padded: it is bidirectional);
    "train" adds decoder_input_ids `</s> <s> answer` and labels `-100 answer </s>`. `max_length` bounds the
    encoder sequence (image tokens included) and the decoder sequence; nothing is cut."""
    import torch

    tok = processor.tokenizer
    pairs = [_split(s) for s in samples]
    per_image = image_token_count(processor)
    answers = []
    for s, (prompt, answer) in zip(samples, pairs, strict=True):
        n_text = len(tok(processor._construct_prompts(prompt)[0], add_special_tokens=False).input_ids) + 2  # <s> </s>
        check_length(s.id, per_image, n_text, max_length)
        answers.append(tok(" " + answer if answer else "", add_special_tokens=False).input_ids)  # " red", as after <s>
        if len(answers[-1]) + 2 > max_length:
            raise SampleTooLong(f"sample {s.id!r}: the answer's {len(answers[-1]) + 2} decoder tokens exceed "
                                f"max_length={max_length}; vlmtune never truncates")
    tok.padding_side = "right"
    out = processor(text=[p for p, _ in pairs], images=load_image_list(samples, images), padding=True,
                    return_tensors="pt")
    inputs = dict(out)
    n_target = 0
    if mode == "train":
        width = max(len(a) for a in answers) + 2
        decoder = torch.full((len(samples), width), tok.pad_token_id)
        labels = torch.full((len(samples), width), IGNORE_INDEX)
        mask = torch.zeros((len(samples), width), dtype=torch.long)
        for b, target in enumerate(answers):
            seq = [tok.eos_token_id, tok.bos_token_id, *target]  # BART's decoder start is </s>
            decoder[b, : len(seq)] = torch.tensor(seq)
            labels[b, 1 : len(seq)] = torch.tensor([*target, tok.eos_token_id])  # <s> is given, never trained
            mask[b, : len(seq)] = 1
        inputs.update(decoder_input_ids=decoder, decoder_attention_mask=mask, labels=labels)
        n_target = int((labels != IGNORE_INDEX).sum())
    return Batch(inputs=inputs, ids=[s.id for s in samples], n_target_tokens=n_target)


_CORPUS = (
    "what colour is the top? describe the image. a person wearing a red top and blue trousers. what does the image "
    "describe? what is the text in the image? how many shapes are there? yes no green yellow black white circle square"
)


def build_tokenizer():
    """A byte-level BPE with BART's special tokens (+ `<image>`), trained in-process in milliseconds."""
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_bpe([_CORPUS] * 20, ["<s>", "<pad>", "</s>", "<unk>", "<image>"], 400)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})


def tiny() -> Loaded:
    """A random Florence-2: DaViT 2 stages (dim 16, 32) on 32x32 images -> 2x2 grid + 1 pooled = 5 image tokens,
    BART 1+1 layers dim 32."""
    import torch
    from transformers import (
        BartConfig,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
        Florence2VisionConfig,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = build_tokenizer()
    image_processor = CLIPImageProcessorPil(size={"height": 32, "width": 32}, do_center_crop=False,
                                            image_seq_length=5)
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tok)
    vision = Florence2VisionConfig(depths=(1, 1), embed_dim=(16, 32), num_heads=(2, 4), num_groups=(2, 4),
                                   patch_size=(7, 3), patch_stride=(4, 4), patch_padding=(3, 1),
                                   patch_prenorm=(False, True), window_size=2, projection_dim=32)
    text = BartConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                      decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=None)
    model = Florence2ForConditionalGeneration(
        Florence2Config(vision_config=vision, text_config=text, image_token_id=tok.image_token_id))
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    gen.decoder_start_token_id, gen.forced_bos_token_id = tok.eos_token_id, tok.bos_token_id
    return Loaded(model=model.to(torch.float32), processor=processor, family="florence2")


FAMILY = ModelFamily(
    name="florence2",
    description="Florence-2 (florence-community/Florence-2-*): DaViT -> projector -> BART encoder-decoder",
    load=load,
    encode=encode,
    # regex: BART's linears only (the DaViT blocks have fc1/fc2 too)
    lora_targets=(r".*language_model\.(encoder|decoder)\.layers\.\d+\..*(" + "|".join(LANGUAGE_LINEARS) + ")",),
    freeze_groups={
        "vision": ("model.vision_tower.",),
        "projector": ("model.multi_modal_projector.",),
        "language": ("model.language_model.", "lm_head."),
    },
    tiny=tiny,
    image_tokens=lambda processor, width, height: image_token_count(processor),  # resized to one fixed size
    tasks=("vqa", "caption"),
    text_only=False,
    multi_image=False,
    shift_labels=False,
    language_model="model.language_model",
    vision_tower="model.vision_tower",
    no_chat_prompt="an encoder-decoder model: the encoder reads the task prompt (\"<VQA>\" + question or the "
    "plain text), not a chat template",
)
