"""Parameter counts of a recipe's model, exactly, without weights: the model is built on the meta device from its
config (config.json only), and vlmtune's own `make_trainable` is applied to it, so the trainable counts are what
`vlmtune train` prints at its start. The family's typed fields (`freeze_groups`, `language_model`, `vision_tower`)
name the towers; no attribute of the model is sniffed.

    counts = count_params(cfg, family, build_meta_model(cfg))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmtune.config import RunCfg
from vlmtune.models import ModelFamily
from vlmtune.models.builtin import build_builtin
from vlmtune.models.family import freeze_group_of, trainable_summary
from vlmtune.train.trainable import make_trainable

TOWERS = ("vision", "projector", "language")


@dataclass
class Dims:
    """The shapes the memory and FLOP models need, read from the model's config (text and vision parts)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    patch_size: int
    tie_embeddings: bool


def load_config(cfg: RunCfg):
    """The transformers config of `model.path` (a local directory, or a hub id: config.json only is fetched)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(cfg.model.path, revision=cfg.model.revision,
                                          trust_remote_code=cfg.model.trust_remote_code)
    except OSError as e:  # offline without the files, a wrong path, a missing config.json
        raise ValueError(f"cannot read the config of model.path {cfg.model.path!r} "
                         f"({str(e).splitlines()[0]}); pass --model.path DIR with its config.json") from None


def build_meta_model(cfg: RunCfg):
    """The recipe's model with no memory behind its weights (meta device); the builtin model is built for real (it is
    tiny). Returns (model, config)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoModelForMultimodalLM

    if cfg.model.path == "builtin":
        model = build_builtin(cfg.model.builtin).model
        return model, model.config
    config = load_config(cfg)
    auto = AutoModelForImageTextToText
    if type(config) not in auto._model_mapping:  # Phi-4-multimodal: a multimodal causal LM, not image-text-to-text
        auto = AutoModelForMultimodalLM
    with torch.device("meta"):
        model = auto.from_config(config, dtype=getattr(torch, cfg.model.dtype))
    return model, config


def _module(model, family: ModelFamily, group: str, named: str | None):
    """The submodule of a tower: the family's dotted name for it, else its freeze group's first prefix."""
    names = [named] if named else []
    names += [p.rstrip(".") for p in family.freeze_groups.get(group, ())]
    for name in names:
        try:
            return model.get_submodule(name)
        except AttributeError:
            continue
    return None


def dims_of(model, family: ModelFamily, config) -> Dims:
    """The language model's and the vision tower's shapes from their own configs."""
    lm = _module(model, family, "language", family.language_model)
    vt = _module(model, family, "vision", family.vision_tower)
    tc = getattr(lm, "config", None) or getattr(config, "text_config", None) or config
    vc = getattr(vt, "config", None) or getattr(config, "vision_config", None)
    hidden = tc.hidden_size
    heads = tc.num_attention_heads
    vision_hidden = getattr(vc, "embed_dim", None) or getattr(vc, "hidden_size", 0)
    vision_inter = getattr(vc, "intermediate_size", None) or int(getattr(vc, "mlp_ratio", 4) * vision_hidden)
    return Dims(
        hidden=hidden, intermediate=tc.intermediate_size, layers=tc.num_hidden_layers, heads=heads,
        kv_heads=getattr(tc, "num_key_value_heads", None) or heads,
        vocab=getattr(tc, "vocab_size", None) or config.vocab_size,
        vision_hidden=vision_hidden, vision_intermediate=vision_inter if vc is not None else 0,
        vision_layers=(getattr(vc, "depth", None) or getattr(vc, "num_hidden_layers", 0)) if vc is not None else 0,
        patch_size=getattr(vc, "patch_size", 14) if vc is not None else 14,
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)
                            or getattr(tc, "tie_word_embeddings", False)),
    )


def tower_params(model, family: ModelFamily) -> dict[str, int]:
    """Parameters per freeze group (vision, projector, language; "other" for any the groups do not name). A tied
    LM head is counted once, as `named_parameters` lists it once."""
    counts = {g: 0 for g in TOWERS}
    for name, p in model.named_parameters():
        group = freeze_group_of(family, name) or "other"
        counts[group] = counts.get(group, 0) + p.numel()
    return counts


def embedding_params(model) -> int:
    """Input embedding (+ an untied LM head): parameters that are looked up, not multiplied, per token."""
    n = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        n += head.weight.numel()
    return n


def quantised_params(model, family: ModelFamily, skip: list[str] | None = None) -> int:
    """Parameters bitsandbytes stores in 4/8 bits under `model.quantization`: the weights of the language model's
    Linear layers, less the modules it skips (`skip`, as `quantization.skip_modules`; None: the family's other
    groups and the LM head, as `models.family.quantization_config` does)."""
    import torch

    if skip is None:
        skip = [p.rstrip(".") for g, ps in family.freeze_groups.items() if g != "language" for p in ps] + ["lm_head"]
    n = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if ".lora_" in name or name.split(".")[-1] in skip or freeze_group_of(family, name + ".weight") != "language":
            continue
        n += module.weight.numel()
    return n


def count_params(cfg: RunCfg, family: ModelFamily, model) -> dict[str, Any]:
    """{"towers": {vision, projector, language}, "total", "embedding", "quantised", "trainable": trainable_summary
    after make_trainable}. `model` is consumed (LoRA is applied to it)."""
    towers = tower_params(model, family)
    embedding = embedding_params(model)
    q = cfg.model.quantization
    quantised = quantised_params(model, family, q.skip_modules if q is not None else None)
    trained = make_trainable(cfg, family, model)
    summary = trainable_summary(family, trained)
    return {"towers": towers, "total": sum(towers.values()), "embedding": embedding, "quantised": quantised,
            "trainable": summary, "model": trained}


def is_local(path: str) -> bool:
    return path == "builtin" or Path(path).is_dir()
