from pathlib import Path

import pytest
import yaml
from helpers import REPO

from vlmtune.config import RunCfg, parse_overrides
from vlmtune.train.checks import check_run


def test_dotted_overrides_are_typed():
    cfg = RunCfg.from_file(None, ["--train.lr", "1e-3", "--data.synth.n", "100", "--lora.targets", "q_proj,v_proj",
                                  "--eval.max_samples", "null", "--train.freeze_vision", "true", "--name=x"])
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.data.synth.n == 100
    assert cfg.lora.targets == ["q_proj", "v_proj"]
    assert cfg.eval.max_samples is None
    assert cfg.train.freeze_vision is True
    assert cfg.name == "x"


@pytest.mark.parametrize("args, message", [
    (["--train.lrr", "1"], "unknown key"),
    (["--train.max_steps", "1.5"], "integer"),
    (["--train.freeze_vision", "maybe"], "true/false"),
    (["--train.schedule", "exp"], "not one of"),
    (["--train", "1"], "is a section"),
    (["--train.micro_batch_size", "3"], "multiple"),
    (["train.lr", "1"], "expected --section.key"),
])
def test_bad_config_fails_loudly(args, message):
    with pytest.raises(ValueError, match=message):
        RunCfg.from_file(None, args)


def test_saved_config_reloads_identically(tmp_path):
    cfg = RunCfg.from_file(None, ["--train.lr", "5e-4", "--lora.enabled", "true"])
    cfg.save(tmp_path / "run_config.yaml")
    assert RunCfg.from_file(tmp_path / "run_config.yaml") == cfg


def test_parse_overrides_forms():
    assert parse_overrides(["--a.b", "1", "--c-d=2"]) == [("a.b", "1"), ("c_d", "2")]


RUN_CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.parent.name not in ("accelerate", "retrieval"))
"""Run recipes (configs/accelerate/ holds Accelerate launch configs, tested in tests/train/test_distributed.py;
configs/retrieval/ the dual-encoder recipes of `vlmtune retrieve train`, tested in tests/test_recipes.py)."""


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_recipe_parses_and_says_how_to_run_it(path: Path):
    text = path.read_text()
    assert text.startswith("# vlmtune "), "each recipe opens with the command that runs it"
    cfg = check_run(RunCfg.from_dict(yaml.safe_load(text)))
    assert cfg.name


def test_recipes_exist():
    assert (REPO / "configs" / "builtin" / "tiny_fashion_vqa.yaml").is_file()


def test_eval_and_probe_metrics_must_belong_to_their_task():
    base = {"data": {"path": "d"}}
    with pytest.raises(ValueError, match=r"eval: metric 'vqa_accuracy' is not one of task 'caption'"):
        check_run(RunCfg.from_dict({**base, "eval": {"task": "caption", "metric": "vqa_accuracy"}}))
    with pytest.raises(ValueError, match=r"unknown task 'ocr'"):
        check_run(RunCfg.from_dict({**base, "eval": {"task": "ocr"}}))
    with pytest.raises(ValueError, match=r"probes\[p\]: metric 'anls'"):
        check_run(RunCfg.from_dict({**base, "probes": [{"name": "p", "path": "x", "task": "chartqa",
                                                        "metric": "anls"}]}))
    assert check_run(RunCfg.from_dict({**base, "eval": {"task": "caption", "metric": "CIDEr"}})).eval.metric == "CIDEr"


def test_the_registry_checks_run_where_a_run_is_built_for_use(tmp_path, capsys):
    """config.py imports nothing of vlmtune, so a metric outside its task passes RunCfg itself; `vlmtune train`
    refuses it before the run directory exists, and a run read back (eval, predict, serve) is refused the same way."""
    from vlmtune.cli import main
    from vlmtune.config import ServeCfg
    from vlmtune.serve import build_app

    bad = {"name": "r", "out_dir": str(tmp_path / "runs"), "data": {"path": str(tmp_path / "d")},
           "eval": {"task": "caption", "metric": "vqa_accuracy"}}
    assert RunCfg.from_dict(bad).eval.metric == "vqa_accuracy"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(bad))
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "eval: metric 'vqa_accuracy' is not one of task 'caption'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "run_config.yaml").write_text(yaml.safe_dump(bad))
    (run / "best").mkdir()
    (run / "best" / "vlmtune.json").write_text("{}")  # a best checkpoint as far as finding it goes; never loaded
    data = str(tmp_path / "d")
    for argv in (["eval", "--model", str(run), "--data", data],
                 ["predict", "--model", str(run / "best"), "--data", data, "--out", str(tmp_path / "p.jsonl")]):
        assert main(argv) == 2
        assert "eval: metric 'vqa_accuracy' is not one of task 'caption'" in capsys.readouterr().err, argv
    with pytest.raises(ValueError, match=r"eval: metric 'vqa_accuracy' is not one of task 'caption'"):
        build_app(run, ServeCfg(), background=False)


def test_train_num_workers_is_gone_and_old_configs_still_load():
    """It never did anything: an old run_config.yaml (num_workers: 0) loads silently, another value with a
    FutureWarning, and the field is not saved any more."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = RunCfg.from_dict({"train": {"num_workers": 0, "lr": 1e-3}})
    assert cfg.train.lr == 1e-3 and "num_workers" not in cfg.to_dict()["train"]
    with pytest.warns(FutureWarning, match="train.num_workers: 4 does nothing"):
        assert RunCfg.from_dict({"train": {"num_workers": 4}}).train == RunCfg().train
    with pytest.raises(ValueError, match="unknown key"):  # other unknown keys are still errors
        RunCfg.from_dict({"train": {"num_wrokers": 4}})


def test_max_length_has_one_default_per_side():
    """Training's budget is data.max_length; inference's is MAX_PROMPT_LENGTH (Predictor and serve); a family's
    encode has none of its own: its caller always passes the budget."""
    import inspect

    from vlmtune.config import MAX_PROMPT_LENGTH, ServeCfg
    from vlmtune.infer import Predictor
    from vlmtune.models import FAMILIES

    assert Predictor.__dataclass_fields__["max_length"].default == ServeCfg().max_prompt_tokens == MAX_PROMPT_LENGTH
    for name, family in FAMILIES.items():
        params = inspect.signature(family.encode).parameters
        assert params["max_length"].default is inspect.Parameter.empty, name
