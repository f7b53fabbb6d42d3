"""Test helpers (importable from any test module)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference"
"""Golden cases computed with the official implementations (../shared/reference/)."""


def reference_cases(name: str) -> list[dict]:
    """The "cases" of a reference file. Deliberately no skip: a missing file fails collection loudly."""
    import json

    cases = json.loads((REFERENCE / name).read_text(encoding="utf-8"))["cases"]
    assert cases, f"{name} has no cases"
    return cases

TINY_BUILTIN = {"image_size": 32, "patch_size": 8, "vision_dim": 32, "vision_layers": 1, "text_dim": 32,
                "text_layers": 1, "heads": 4}


def save_builtin(out: Path, seed: int = 0, **sizes) -> Path:
    """A built-in model (TINY_BUILTIN, `sizes` overriding) with random weights saved as a model directory: a base
    for runs that load `model.path` (LoRA, QLoRA, dtypes)."""
    from vlmtune.config import BuiltinCfg
    from vlmtune.models.builtin import build_builtin

    loaded = build_builtin(BuiltinCfg(**{**TINY_BUILTIN, **sizes}), seed=seed)
    loaded.model.save_pretrained(out)
    loaded.processor.save_pretrained(out)
    return out


def tiny_run_cfg(tmp_path: Path, data_dir: Path, **sections) -> dict:
    """A RunCfg dict for a seconds-long CPU run of a tiny built-in model."""
    cfg = {
        "name": "t",
        "out_dir": str(tmp_path / "runs"),
        "model": {"family": "llava", "path": "builtin", "builtin": dict(TINY_BUILTIN)},
        "data": {"path": str(data_dir), "max_length": 128},
        "train": {"seed": 0, "max_steps": 6, "micro_batch_size": 4, "global_batch_size": 8, "lr": 3e-3,
                  "log_every": 1, "eval_every": 3, "save_every": 3, "progress": False, "trackers": []},
        "eval": {"batch_size": 16, "max_new_tokens": 4},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


FORMAT_FIXTURES = REPO / "tests" / "fixtures" / "formats"


def import_format(name: str, src: Path, out: Path, images: Path | None = None, skip_bad: bool = False) -> list:
    """Import with the real driver and read the resulting dataset back: its Samples, in manifest order."""
    from vlmtune.data.formats import get_format, import_dataset
    from vlmtune.data.store import read_samples

    import_dataset(get_format(name), src, out, images, skip_bad=skip_bad, progress=False)
    return read_samples(out)[0]


def assert_round_trip(name: str, src: Path, tmp_path: Path, images: Path | None = None,
                      reimport=lambda exported: (exported, None)) -> list:
    """import -> export -> import gives identical Samples (ids, messages, images, answers, meta...) and identical
    image bytes. `reimport(export_dir) -> (src, images)` says where the exported files are to be read from."""
    from vlmtune.data.formats import export_dataset, get_format

    first = import_format(name, src, tmp_path / "a", images)
    assert first, f"{name}: the fixture imported no samples"
    export_dataset(get_format(name), tmp_path / "a", tmp_path / "exported")
    src2, images2 = reimport(tmp_path / "exported")
    second = import_format(name, src2, tmp_path / "b", images2)
    assert [s.to_json() for s in second] == [s.to_json() for s in first]
    for s in first:
        for rel in s.images:
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    return first


def tiny_clip(path, siglip: bool = False):
    """A tiny random full CLIP (retrieval's own tiny builder; compose uses its vision half) or a SigLIP vision-only
    checkpoint (the other input compose takes), 32x32 images in 8 px patches, with their image processors."""
    from pathlib import Path

    if not siglip:
        from vlmtune.retrieval.tiny import build_tiny

        return build_tiny("clip", Path(path), image_size=32, patch=8, width=32, dim=16, seed=1)

    import torch
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(1)
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=32, patch_size=8)).save_pretrained(path)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def tiny_causal_lm(path):
    """A tiny random Llama causal LM with a locally trained tokenizer (no chat template, no pad token)."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from vlmtune.data.tokenizer import train_byte_bpe
    from vlmtune.models.builtin import _corpus

    tok = PreTrainedTokenizerFast(tokenizer_object=train_byte_bpe(_corpus(), ["<s>", "</s>"], 400),
                                  bos_token="<s>", eos_token="</s>")
    import torch

    torch.manual_seed(2)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=4, bos_token_id=tok.bos_token_id,
                                 eos_token_id=tok.eos_token_id, tie_word_embeddings=False)).save_pretrained(path)
    tok.save_pretrained(path)
    return path
