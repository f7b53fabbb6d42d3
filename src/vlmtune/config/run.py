"""`RunCfg`, a run's whole config over the sections, and its loading: YAML plus dotted overrides (`--train.lr 1e-3`),
values converted to the declared field types, unknown keys refused, the OCR settings' old flat form read.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vlmtune.config.data import DataCfg, OcrCfg, SynthCfg
from vlmtune.config.model import LoraCfg, ModelCfg
from vlmtune.config.train import EvalCfg, ForgettingCfg, ProbeCfg, TrainCfg


@dataclass
class RunCfg:
    name: str = "run"
    out_dir: str = "runs"
    model: ModelCfg = field(default_factory=ModelCfg)
    lora: LoraCfg = field(default_factory=LoraCfg)
    data: DataCfg = field(default_factory=lambda: DataCfg(synth=SynthCfg()))
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    probes: list[ProbeCfg] = field(default_factory=list)
    forgetting: ForgettingCfg = field(default_factory=ForgettingCfg)
    report: bool = True
    """Write report.html in the run directory at the end of training."""

    def __post_init__(self):
        names = [p.name for p in self.probes]
        if len(set(names)) != len(names):
            raise ValueError(f"probes: names must be unique, got {names}")
        if self.forgetting.max_drop is not None and not self.probes:
            raise ValueError("forgetting.max_drop needs at least one entry in `probes`")
        # the checks that need the task and family registries: train.checks.check_run (config imports nothing)
        if self.model.quantization is not None:
            if not self.lora.enabled:
                raise ValueError("model.quantization: a quantised base cannot be trained itself; set lora.enabled "
                                 "(QLoRA) or remove model.quantization")
            if self.model.path == "builtin":
                raise ValueError("model.quantization: the built-in model is built with random weights; quantise a "
                                 "saved or downloaded model (model.path)")
        if self.train.method == "dpo" and self.data.answer_targets != "single":
            raise ValueError(f"data.answer_targets {self.data.answer_targets!r}: DPO trains on each pair's chosen and "
                             "rejected answers; set data.answer_targets: single")
        if self.train.method == "grpo" and self.train.grpo_beta > 0 and not self.lora.enabled:
            raise ValueError(f"train.grpo_beta {self.train.grpo_beta}: the KL reference is the model with its LoRA "
                             "adapter disabled; a full fine-tune keeps no copy of the base: set lora.enabled or "
                             "grpo_beta: 0")
        half = {"bfloat16": "bf16", "float16": "fp16"}.get(self.model.dtype)
        if half and self.train.mixed_precision != half:
            raise ValueError(f"model.dtype {self.model.dtype}: the trainable parameters are kept in float32 and the "
                             f"frozen {self.model.dtype} base computes under autocast; set train.mixed_precision: "
                             f"{half} (now {self.train.mixed_precision!r})")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    @classmethod
    def from_dict(cls, d: dict) -> RunCfg:
        return _build(cls, _removed_keys(_old_ocr_keys(d)), "")

    @classmethod
    def from_file(cls, path: str | Path | None, overrides: list[str] | None = None) -> RunCfg:
        d = yaml.safe_load(Path(path).read_text()) if path else {}
        d = _old_ocr_keys(d or {})  # before the overrides: `--data.ocr.langs` on a file of the old form
        for key, value in parse_overrides(overrides or []):
            _set_dotted(d, key, value)
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        tmp.replace(path)


def _removed_keys(d: Any) -> Any:
    """`train.num_workers` is gone: it never did anything (samples are loaded in the training process). Every
    run_config.yaml saved before has `num_workers: 0`, dropped silently so old runs still load; any other value
    is dropped with a FutureWarning saying so, where an unknown key would be an error."""
    train = d.get("train") if isinstance(d, dict) else None
    if not isinstance(train, dict) or "num_workers" not in train:
        return d
    value = train["num_workers"]
    if str(value) != "0":
        warnings.warn(f"train.num_workers: {value} does nothing and is ignored (vlmtune loads samples in the "
                      "training process); remove it from the config", FutureWarning, stacklevel=3)
    return {**d, "train": {k: v for k, v in train.items() if k != "num_workers"}}


OLD_OCR_KEYS = ("langs", "psm", "into", "template", "max_chars", "min_conf", "timeout_s")
"""`data.ocr_<key>`: the OCR settings before they became the `data.ocr` section (OcrCfg)."""


def _old_ocr_keys(d: Any) -> Any:
    """A config of the form before `data.ocr` was a section, read until 0.2: older recipes and the run_config.yaml
    of every older run (which saves `ocr: null` and all seven `ocr_<key>`s). `ocr: tesseract` with `ocr_langs: rus`
    -> `ocr: {engine: tesseract, langs: rus}` (a FutureWarning names the new keys); with `ocr` off, the flat keys
    are checked and dropped, as they did nothing. A flat key beside a `data.ocr` section joins it (an old override
    on a new file); the same setting twice is an error."""
    data = d.get("data") if isinstance(d, dict) else None
    flat = {key: data[f"ocr_{key}"] for key in OLD_OCR_KEYS if f"ocr_{key}" in data} if isinstance(data, dict) else {}
    ocr = data.get("ocr") if isinstance(data, dict) else None
    if isinstance(ocr, str) and ocr.lower() in ("null", "none"):  # `--data.ocr null`
        ocr = None
    if not flat and not isinstance(ocr, str):
        return d
    data = {k: v for k, v in data.items() if not (k.startswith("ocr_") and k[4:] in OLD_OCR_KEYS)}
    if ocr is None:
        _build(OcrCfg, flat, "data.ocr.")  # a value that never worked still fails
        return {**d, "data": {**data, "ocr": None}}
    if isinstance(ocr, str):
        new = ", ".join(f"{k}: {v!r}" for k, v in flat.items())
        warnings.warn(f"data.ocr: {ocr} with data.ocr_<key> settings is the old form, read until vlmtune 0.2; write "
                      f"data: {{ocr: {{engine: {ocr}{', ' + new if new else ''}}}}} (data.ocr.langs, data.ocr.psm, "
                      "...: docs/ocr.md)", FutureWarning, stacklevel=3)
        ocr = {"engine": ocr}
    if isinstance(ocr, dict):
        twice = sorted(set(flat) & set(ocr))
        if twice:
            raise ValueError(f"data: {', '.join(f'ocr_{k} and ocr.{k}' for k in twice)} set the same thing; keep "
                             f"data.ocr.{twice[0]}")
        ocr = {**ocr, **flat}
    return {**d, "data": {**data, "ocr": ocr}}


def parse_overrides(args: list[str]) -> list[tuple[str, str]]:
    """`--train.lr 1e-3` or `--train.lr=1e-3` -> [("train.lr", "1e-3")]."""
    out = []
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise ValueError(f"expected --section.key VALUE, got {a!r}")
        if "=" in a:
            key, value = a[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ValueError(f"{a} needs a value")
            key, value = a[2:], args[i + 1]
            i += 2
        out.append((key.replace("-", "_"), value))
    return out


def _set_dotted(d: dict, key: str, value: str) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        if d.get(p) is None:
            d[p] = {}
        d = d[p]
    d[parts[-1]] = _RawOverride(value)


class _RawOverride(str):
    """A string from the command line, converted to the field's type when the config is built."""


def build_section(cls, d: Any, where: str = ""):
    """The dataclass `cls` from a mapping (a YAML file's, with flag values), typed and checked as every section of a
    run config is: unknown keys are an error naming the known ones, "1e-5" becomes a float, a Literal's value is
    checked. For configs that are not a RunCfg (`retrieve train`'s RetrievalTrainCfg)."""
    return _build(cls, d, where)


def _build(cls, d: Any, where: str):
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise ValueError(f"{where.rstrip('.') or 'config'}: expected a mapping, got {d!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ValueError(f"{where.rstrip('.') or 'config'}: unknown key(s) {sorted(unknown)}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(hints[name], value, f"{where}{name}") for name, value in d.items()}
    return cls(**kwargs)


def _convert(tp, value: Any, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, _RawOverride) and value.lower() in ("null", "none")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        for tp_ in inner[:-1]:  # `int | Literal["auto"]`: the first type the value converts to
            try:
                return _convert(tp_, value, where)
            except ValueError:
                pass
        return _convert(inner[-1], value, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, _RawOverride):
            raise ValueError(f"{where}: is a section; set its keys (--{where}.KEY VALUE)")
        return _build(tp, value, where + ".")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where}: {value!r} is not one of {list(args)}")
        return str(value)
    if isinstance(value, _RawOverride):
        if tp is str:
            return str(value)
        value = yaml.safe_load(value)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        try:
            out = tp(value)
        except ValueError:
            raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and float(value) != out:
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value
