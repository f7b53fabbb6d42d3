"""A DePlot-shaped model built from a config: a small Pix2Struct (google/deplot's architecture, optionally its VQA
mode, where the prompt is drawn as a header on the chart) with a tokenizer trained here on chart text, for training
chart-to-table from scratch on CPU.

    vlmtune chart init-model --out models/tiny-deplot            # then: model.path: models/tiny-deplot

The `<0x0A>` trap. DePlot's checkpoints write the newline between table rows as the literal token `<0x0A>`
(sentencepiece's byte-fallback piece), and every table tool downstream (`deplot/metrics.py`, `data.chart_table`) splits
rows on it. In a tokenizer built here it must therefore be ONE token (a table row costs one position, not six) that
is NOT special: `Predictor` decodes with `skip_special_tokens=True`, which silently deletes special tokens, so a
table whose row separator were special would come back as one long row. It is added as an ordinary added token
(`special=False`) that swallows the spaces around it (`lstrip`/`rstrip`), so " <0x0A> " is one token too; decoding
gives "a | 1<0x0A>b | 2", which `Table.from_text` and the metrics read like " <0x0A> ". tests/chart check both the
single token and a generated table that keeps its rows through `Predictor`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken

from vlmtune.data.chart_table import NEWLINE_TOKEN
from vlmtune.data.charts import CATEGORIES, METRICS, QUESTION_TYPES, SERIES_PAIRS, YEARS, make_question, random_spec
from vlmtune.data.tokenizer import train_byte_bpe
from vlmtune.io import atomic_dir
from vlmtune.models.pix2struct import build


@dataclass(frozen=True)
class TinyDeplotCfg:
    """Sizes of the from-scratch model (defaults: 1.5M parameters)."""

    vqa: bool = False
    """Draw the prompt as a header above the chart, as google/deplot is used (VQA mode). Off by default for CPU
    training: the header makes every training image a ~940x990 canvas (the prompt's width at the checkpoints' 36 pt)
    whose patches cost more to cut than the model's own step, and the prompt is always the same anyway."""
    hidden: int = 128
    vision_layers: int = 4
    text_layers: int = 2
    heads: int = 4
    ff: int = 256
    patch: int = 16
    max_patches: int = 144
    """12 x 12 patches of 16 px: a 192 px chart at its own resolution (without a header)."""
    vocab_size: int = 768


def _corpus() -> list[str]:
    """Chart text (tables, questions, answers, captions) from the charts world, plus common question words."""
    r = random.Random(0)
    lines = [" ".join(words) for words in (*CATEGORIES.values(), METRICS, YEARS)]
    lines += [" ".join(pair) for pair in SERIES_PAIRS]
    lines += [" ".join(str(v) for v in range(100))]
    for _ in range(2000):  # the specs only: no drawing needed for the text
        spec = random_spec(r)
        for qtype in QUESTION_TYPES:
            question, answer = make_question(r, spec, qtype)
            lines += [question, answer]
    return lines


def build_tokenizer(vocab_size: int = 768):
    """A byte-level BPE (any text encodes) with T5's special-token layout (pad 0, eos 1, unk 2, no BOS) and `<0x0A>`
    as one ordinary (non-special) added token."""
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_bpe(_corpus(), ["<pad>", "</s>", "<unk>"], vocab_size, add_prefix_space=True)
    tok.add_tokens([AddedToken(NEWLINE_TOKEN, special=False, normalized=False, lstrip=True, rstrip=True)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_model(cfg: TinyDeplotCfg = TinyDeplotCfg(), seed: int = 0):
    """A random-weight Pix2Struct + its processor (`Loaded`, family pix2struct), built by the family's `build`."""
    import torch

    tok = build_tokenizer(cfg.vocab_size)
    torch.manual_seed(seed)
    loaded = build(tok, vqa=cfg.vqa, hidden=cfg.hidden, heads=cfg.heads, ff=cfg.ff, vision_layers=cfg.vision_layers,
                   text_layers=cfg.text_layers, patch=cfg.patch, max_patches=cfg.max_patches, dropout=0.0)
    loaded.model.generation_config.max_length = None
    return loaded


def init_model(out: str | Path, cfg: TinyDeplotCfg = TinyDeplotCfg(), seed: int = 0) -> dict:
    """Write a new random model directory (HF files + vlmtune.json) that `model.path` can name; never overwrites."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new directory")
    loaded = build_model(cfg, seed)
    with atomic_dir(out) as tmp:  # an interrupted init leaves no half directory that `out.exists()` would refuse
        tmp.mkdir()
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.processor.save_pretrained(tmp)
        (tmp / "vlmtune.json").write_text(json.dumps({"family": "pix2struct", "adapter": False,
                                                      "base": "vlmtune chart init-model"}, indent=2) + "\n")
    n_params = sum(p.numel() for p in loaded.model.parameters())
    return {"out": str(out), "family": "pix2struct", "parameters": n_params, "vocab": len(loaded.processor.tokenizer)}
