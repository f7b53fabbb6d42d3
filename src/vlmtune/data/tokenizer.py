"""`train_byte_bpe`: a byte-level BPE tokenizer trained in-process, the one start of every tiny model's tokenizer.

A tokenizer helper with no model in it, so it sits in `data` where its lowest caller (the tiny offline translator,
`data/translate/tiny.py`) can reach it; the built-in model and the tiny families in `models` import it from here.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


def train_byte_bpe(lines: list[str], special_tokens: list[str], vocab_size: int, add_prefix_space: bool = False,
                   pre_tokenizer=None):
    """A byte-level BPE `tokenizers.Tokenizer` trained in-process (deterministic, milliseconds) on `lines`, with
    `special_tokens` first in the vocabulary. Every tiny model's tokenizer starts here (the built-in model, the tiny
    families, the tiny translator, retriever and chart models); the caller adds what its family needs (a
    post-processor, late special tokens) and wraps it in `PreTrainedTokenizerFast`.
    `pre_tokenizer`: replaces the default `ByteLevel(add_prefix_space)` (e.g. Qwen's split regex first)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines, trainer=trainer)
    return tok
