"""Every ready recipe under configs/ parses into a RunCfg whose family, task and metric exist."""

import re
from pathlib import Path

import pytest

from vlmtune.config import RunCfg
from vlmtune.eval.tasks import TASKS
from vlmtune.models import FAMILIES

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p for p in CONFIGS.glob("*/*.yaml") if p.parent.name not in ("accelerate", "retrieval"))
RETRIEVAL = sorted(CONFIGS.glob("retrieval/*.yaml"))  # dual-encoder recipes: `vlmtune retrieve train --config`


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
        # size: anything up to the method ("7b", "scout_17b_16e")
        size, method, task = re.fullmatch(r"(.+?)_(lora|qlora|full)_(\w+)\.yaml", path.name).groups()
        assert (method in ("lora", "qlora")) == cfg.lora.enabled
        assert (method == "qlora") == (cfg.model.quantization is not None)
        assert cfg.train.global_batch_size % cfg.train.micro_batch_size == 0


@pytest.mark.parametrize("path", RETRIEVAL, ids=[p.name for p in RETRIEVAL])
def test_retrieval_recipe_parses_and_flags_override_it(path):
    from vlmtune.retrieval.train import RetrievalTrainCfg

    rel = path.relative_to(CONFIGS.parent)
    assert path.read_text().splitlines()[0] == f"# vlmtune retrieve train --config {rel}"
    cfg = RetrievalTrainCfg.load(path)
    assert "/" in cfg.model and cfg.batch_size >= 32
    assert RetrievalTrainCfg.load(path, lr=3e-4, data="elsewhere").lr == 3e-4


def test_retrieval_recipes_exist_and_unknown_keys_are_refused(tmp_path):
    from vlmtune.retrieval.train import RetrievalTrainCfg

    assert {p.name.split("_")[0] for p in RETRIEVAL} >= {"clip-b32", "siglip-b16"}
    (tmp_path / "r.yaml").write_text("model: m\ndata: d\nout: o\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match=r"r\.yaml: .*unknown key\(s\) \['learning_rate'\]; known: \[.*'lr'"):
        RetrievalTrainCfg.load(tmp_path / "r.yaml")
    with pytest.raises(ValueError, match="no out"):
        RetrievalTrainCfg.load(None, model="m", data="d")


@pytest.mark.parametrize("path", RECIPES, ids=[f"{p.parent.name}/{p.name}" for p in RECIPES])
def test_recipe_says_what_it_trains(path, capsys):
    """Each recipe's second line (`# trains: group/kind ...`) is what `vlmtune train` trains: the groups and kinds
    (lora: adapters, full: the weights themselves, e.g. the projector as peft modules_to_save), and where
    ../shared/real-models has the checkpoint's config.json, the counts at real width (meta device, no weights)."""
    from recipe_trainables import real_config_dir, recipe_trainables

    from vlmtune.models.family import describe_trainable

    line = path.read_text().splitlines()[1]
    assert line.startswith("# trains: "), "the second line says what the recipe trains"
    cfg = RunCfg.from_file(path, [])
    summary, real = recipe_trainables(cfg)
    said = re.findall(r"(\w+/(?:lora|full))(?: ([\d.]+[kMB]))?", line)
    assert [g for g, _ in said] == list(summary["groups"]), describe_trainable(summary)
    if cfg.model.path != "builtin" and real_config_dir(cfg.model.path) is not None:
        assert real, "built from the real config"
        printed = describe_trainable(summary)
        for group, size in said:
            assert f"{group} {size}" in printed, printed


@pytest.mark.parametrize("name", ["blip2/2.7b_lora_fashion_vqa.yaml", "builtin/fashion_vqa_pt.yaml"])
def test_the_fashion_vqa_recipes_carry_the_forgetting_guard(name):
    """The fashion job's original failure was a fine-tune that lost general VQA unmeasured: both its recipes replay a
    general VQA source, probe a held-out general VQA split that is not the replayed one, and gate on the probe."""
    cfg = RunCfg.from_file(CONFIGS / name, [])
    sources = {s.name: s for s in cfg.data.sources}
    domain = [s for s in sources.values() if s.path == cfg.data.path]
    replay = [s for s in sources.values() if s.path != cfg.data.path]
    assert len(domain) == 1 and domain[0].split == "train" and replay and all(s.split == "train" for s in replay)
    assert 0 < sum(s.weight for s in replay) < sum(s.weight for s in sources.values())
    assert cfg.probes and all(p.task == "vqa" and p.metric == "vqa_accuracy" for p in cfg.probes)
    assert {(p.path, p.split) for p in cfg.probes}.isdisjoint({(s.path, s.split) for s in replay})
    assert {p.path for p in cfg.probes} <= {s.path for s in replay}  # the probe is held out from the replayed set
    assert cfg.forgetting.max_drop is not None and cfg.forgetting.max_drop <= 5.0
