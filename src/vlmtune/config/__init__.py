"""Typed configuration of a run: every section is a dataclass, loaded from YAML plus dotted overrides.

    cfg = RunCfg.from_file("configs/builtin/tiny_fashion_vqa.yaml", ["--train.lr", "1e-3", "--name", "x"])
    cfg.save("runs/x/run_config.yaml")            # the resolved config, reloadable with RunCfg.from_file

Unknown keys fail loudly (a typo never silently falls back to a default); values are converted to the
declared field type; cross-field checks run at load time, not at step 5000. This module imports nothing of vlmtune
(docs/architecture.md): the checks that need the family or task registries (a metric of the task, packing by the
family) are `train.checks.check_run`, run wherever a RunCfg is built for use.

The sections live in the package's modules, and every name is imported from here (`from vlmtune.config import
RunCfg`): `model.py` (ModelCfg, BuiltinCfg, QuantCfg, LoraCfg, check_model_path), `data.py` (DataCfg, SourceCfg,
SynthCfg, OcrCfg), `train.py` (TrainCfg, EvalCfg, ProbeCfg, ForgettingCfg), `serve.py` (ServeCfg) and `run.py`
(RunCfg and the loading: YAML, overrides, type conversion).
"""

from vlmtune.config.data import MAX_PROMPT_LENGTH, PSM_MODES, DataCfg, OcrCfg, SourceCfg, SynthCfg, VideoCfg
from vlmtune.config.model import LOCAL_PREFIXES, BuiltinCfg, LoraCfg, ModelCfg, QuantCfg, check_model_path
from vlmtune.config.run import OLD_OCR_KEYS, RunCfg, build_section, parse_overrides
from vlmtune.config.serve import ServeCfg
from vlmtune.config.train import EvalCfg, ForgettingCfg, ProbeCfg, RewardCfg, TrainCfg

__all__ = ["LOCAL_PREFIXES", "MAX_PROMPT_LENGTH", "OLD_OCR_KEYS", "PSM_MODES", "BuiltinCfg", "DataCfg", "EvalCfg",
           "ForgettingCfg", "LoraCfg", "ModelCfg", "OcrCfg", "ProbeCfg", "QuantCfg", "RewardCfg", "RunCfg", "ServeCfg",
           "SourceCfg", "SynthCfg", "TrainCfg", "VideoCfg", "build_section", "check_model_path", "parse_overrides"]
