"""Tiny random translators (Marian or NLLB layout) saved as ordinary HF checkpoints: for the tests and the offline
example of docs/translate-autolabel.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import pre_tokenizers, processors

from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.data.translate.model import NLLB_CODES

_TINY_CORPUS = (
    "a dog runs on the grass . two people are sitting on a bench . what colour is the shirt ? yes no one two three "
    "the man wears a red hat . a woman holds a phone . is this a cat ? the bottle is blue . describe the image .",
    "собака бежит по траве . два человека сидят на скамейке . какого цвета рубашка ? да нет один два три "
    "мужчина в красной шляпе . женщина держит телефон . это кошка ? бутылка синяя . опишите изображение .",
)


def save_tiny_translator(path: str | Path, kind: str = "marian", seed: int = 0) -> Path:
    """A random-weight translation model of `kind` ("marian" or "nllb"; ~100k parameters, input limit 64 tokens)
    with a tokenizer trained here, saved so AutoModelForSeq2SeqLM / AutoTokenizer load it offline. Its output is
    noise: it exercises the mechanics (batching, caching, language codes), not translation quality."""
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration, MarianConfig, MarianMTModel

    path = Path(path)
    lines = list(_TINY_CORPUS) * 20
    small = {"d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
             "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "max_position_embeddings": 32,
             "init_std": 0.1}  # large random weights: the output depends visibly on the input
    torch.manual_seed(seed)
    if kind == "marian":
        from transformers import PreTrainedTokenizerFast

        raw = train_byte_bpe(lines, ["<pad>", "</s>", "<unk>"], 300, add_prefix_space=True)
        raw.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                      model_max_length=32)
        model = MarianMTModel(MarianConfig(vocab_size=len(tok), pad_token_id=0, eos_token_id=1,
                                           decoder_start_token_id=0, forced_eos_token_id=1, **small))
    elif kind == "nllb":
        from transformers import NllbTokenizer

        raw = train_byte_bpe(lines, ["<s>", "<pad>", "</s>", "<unk>"], 300,
                             pre_tokenizer=pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"))
        spec = json.loads(raw.to_str())["model"]
        codes = sorted(set(NLLB_CODES.values()))
        tok = NllbTokenizer(vocab=spec["vocab"], merges=[tuple(m) if isinstance(m, list) else tuple(m.split(" "))
                                                          for m in spec["merges"]],
                            additional_special_tokens=codes, src_lang="eng_Latn", model_max_length=32)
        model = M2M100ForConditionalGeneration(M2M100Config(vocab_size=len(tok), pad_token_id=1, bos_token_id=0,
                                                            eos_token_id=2, decoder_start_token_id=2,
                                                            scale_embedding=True, **small))
    else:
        raise ValueError(f"unknown tiny translator kind {kind!r}; known: marian, nllb")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
