"""Every ready recipe under configs/ parses into a RunCfg whose family, task and metric exist."""

import re
from pathlib import Path

import pytest

from vlmtune.config import RunCfg
from vlmtune.eval.tasks import TASKS
from vlmtune.models import FAMILIES

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p for p in CONFIGS.glob("*/*.yaml") if p.parent.name != "accelerate")  # launch configs aside


def test_there_are_recipes_for_real_checkpoints():
    real = [p for p in RECIPES if p.parent.name != "builtin"]
    assert {p.parent.name for p in real} >= {"llava", "blip2", "pix2struct", "qwen2_5_vl"}


@pytest.mark.parametrize("path", RECIPES, ids=[f"{p.parent.name}/{p.name}" for p in RECIPES])
def test_recipe_parses_and_names_what_exists(path):
    rel = path.relative_to(CONFIGS.parent)
    assert path.read_text().splitlines()[0] == f"# vlmtune train --config {rel}", "headed by the command that runs it"
    cfg = RunCfg.from_file(path, [])
    assert cfg.model.family in FAMILIES
    assert cfg.model.family == path.parent.name or path.parent.name == "builtin"
    assert cfg.eval.task in TASKS and cfg.eval.metric in TASKS[cfg.eval.task].metrics
    if path.parent.name != "builtin":
        assert cfg.model.path != "builtin" and "/" in cfg.model.path, "a hub id"
        size, method, task = re.fullmatch(r"([^_]+)_(lora|qlora|full)_(\w+)\.yaml", path.name).groups()
        assert (method in ("lora", "qlora")) == cfg.lora.enabled
        assert (method == "qlora") == (cfg.model.quantization is not None)
        assert cfg.train.global_batch_size % cfg.train.micro_batch_size == 0
