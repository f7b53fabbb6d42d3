"""What a recipe trains, computed the way `vlmtune train` does (make_trainable), without weights: on the meta device
from the checkpoint's real config.json where ../shared/real-models has it, else on the family's tiny model (the
groups are the same; only the real config gives the real counts)."""

from __future__ import annotations

from pathlib import Path

REAL = Path(__file__).resolve().parents[2] / "shared" / "real-models"


def real_config_dir(hub_id: str) -> Path | None:
    d = REAL / hub_id.replace("/", "__")
    return d if (d / "config.json").is_file() else None


def recipe_trainables(cfg) -> tuple[dict, bool]:
    """(trainable_summary of the recipe's model after make_trainable, whether it was the real-width model)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vlmtune.models import get_family, glm4v
    from vlmtune.models.builtin import build_builtin
    from vlmtune.models.family import trainable_summary
    from vlmtune.train.trainable import make_trainable

    family = get_family(cfg.model.family)
    real = real_config_dir(cfg.model.path) if cfg.model.path != "builtin" else None
    if real is not None:
        with torch.device("meta"):
            # GLM-4.1V's real config.json is in an older layout that its family converts
            config = (glm4v.load_config if family.name == "glm4v" else AutoConfig.from_pretrained)(real)
            model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    elif cfg.model.path == "builtin":
        model = build_builtin(cfg.model.builtin).model
    else:
        model = family.tiny().model
    return trainable_summary(family, make_trainable(cfg, family, model)), real is not None
