"""A config section's flags are generated from its dataclass (cli/flags.py): every field is a flag with the field's
type, default and docstring, so a new option is one dataclass field."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest

from vlmtune.cli import build_parser
from vlmtune.cli.flags import add_config_flags, field_docs
from vlmtune.config import OcrCfg, ServeCfg
from vlmtune.retrieval.train import RetrievalTrainCfg


def _subparser(*verbs: str) -> argparse.ArgumentParser:
    p = build_parser()
    for verb in verbs:
        p = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
    return p


def _actions(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in p._actions}


def _default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


SECTIONS = [(("serve",), ServeCfg, True), (("data", "ocr"), OcrCfg, False),
            (("retrieve", "train"), RetrievalTrainCfg, True)]
"""(the command, its config dataclass, whether a flag not given is None: the field's default applied later)."""


@pytest.mark.parametrize("verbs,cls,unset", SECTIONS, ids=[c.__name__ for _, c, _ in SECTIONS])
def test_every_field_of_a_section_is_a_flag_with_its_default_and_help(verbs, cls, unset):
    actions, docs = _actions(_subparser(*verbs)), field_docs(cls)
    for f in dataclasses.fields(cls):
        assert f.name in actions, f"{cls.__name__}.{f.name} has no flag in vlmtune {' '.join(verbs)}"
        a = actions[f.name]
        if f.name in ("device", "dtype"):  # the placement pair every model-loading command shares (add_device_args)
            assert a.default == _default(f)
            continue
        assert a.default == (None if unset else _default(f))
        assert docs.get(f.name, "") in a.help
        if f.type != "bool" and _default(f) is not None:
            assert a.help.endswith(f"(default {_default(f)})") or a.help.endswith(f"(default {_default(f)!r})")


def test_the_docstrings_and_types_of_serve_and_ocr():
    docs = field_docs(ServeCfg)
    assert docs["max_images"] == "Images per request."  # the docstring, on one line
    assert "(DNS rebinding)" in docs["allowed_hosts"]  # a docstring of three source lines
    actions = _actions(_subparser("serve"))
    assert actions["retrieve_k"].option_strings == ["--k"] and actions["allowed_hosts"].nargs == "+"
    assert actions["max_aspect_ratio"].type is float and actions["port"].type is int
    actions = _actions(_subparser("data", "ocr"))
    assert actions["into"].choices == ["prompt", "meta"] and actions["psm"].type is int
    assert "On the command line \\n is a line break." in actions["template"].help


def _serve_cfg(argv: list[str]) -> ServeCfg:
    """What `vlmtune serve` builds from its flags (cli/serve.py: the flags given, over ServeCfg's defaults)."""
    a = build_parser().parse_args(["serve", "--model", "m", *argv])
    names = {f.name for f in dataclasses.fields(ServeCfg)}
    return ServeCfg(**{k: v for k, v in vars(a).items() if k in names and v is not None})


def test_serve_flags_reach_the_config():
    assert _serve_cfg([]) == ServeCfg()
    cfg = _serve_cfg(["--k", "3", "--max-images", "7", "--max-aspect-ratio", "2.5", "--allowed-hosts", "a", "*.b",
                      "--allow-remote-images", "--max-new-tokens-default", "9", "--api-key", "s"])
    assert (cfg.retrieve_k, cfg.max_images, cfg.max_aspect_ratio, cfg.allowed_hosts, cfg.allow_remote_images,
            cfg.max_new_tokens_default, cfg.api_key) == (3, 7, 2.5, ["a", "*.b"], True, 9, "s")


def test_retrieve_train_flags_given_override_the_recipe(tmp_path, monkeypatch):
    """`vlmtune retrieve train --config R --flag V`: a flag given wins over R's key; one not given leaves R's value,
    else the field's default."""
    from vlmtune.cli import main, retrieve

    seen = []
    monkeypatch.setattr(retrieve, "train", lambda cfg: seen.append(cfg) or {})  # the config, not a training run
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\ndata: d\nout: o\nlr: 0.001\ngrad_clip: 2.0\nfreeze: text\n")
    assert main(["retrieve", "train", "--config", str(recipe), "--grad-clip", "0.5", "--eval-batch-size", "8",
                 "--out", "o2"]) == 0
    cfg = seen[0]
    assert (cfg.model, cfg.out, cfg.lr, cfg.grad_clip, cfg.freeze, cfg.eval_batch_size, cfg.epochs) == (
        "m", "o2", 0.001, 0.5, "text", 8, 10)


@dataclass
class Knobs:
    size: int = 3
    """How big, in
    pixels (100%)."""
    mode: Literal["fast", "slow"] = "fast"
    """Which way."""
    tags: list[str] = field(default_factory=lambda: ["a"])
    rate: float | None = None
    """Per second; None: as fast as it goes."""
    loud: bool = False
    """Print more."""
    name: str = "two words"
    path: str = field(default="p")


@dataclass
class MoreKnobs(Knobs):
    new_knob: int = 7
    """The option just added."""


def test_a_dataclass_field_becomes_a_flag_of_its_type_default_and_help(capsys):
    p = argparse.ArgumentParser()
    add_config_flags(p, Knobs)
    a = p.parse_args([])
    assert vars(a) == dataclasses.asdict(Knobs())
    a = p.parse_args(["--size", "5", "--mode", "slow", "--tags", "x", "y", "--rate", "0.5", "--loud", "--name", "n"])
    assert (a.size, a.mode, a.tags, a.rate, a.loud, a.name) == (5, "slow", ["x", "y"], 0.5, True, "n")
    for bad in (["--size", "big"], ["--mode", "medium"], ["--rate", "x"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
    p.print_help()
    text = " ".join(capsys.readouterr().out.split())
    assert "How big, in pixels (100%). (default 3)" in text  # the docstring on one line; % printed as written
    assert "{fast,slow} Which way. (default fast)" in text and "(default 'two words')" in text
    assert "Per second; None: as fast as it goes." in text and "(default None)" not in text

    p = argparse.ArgumentParser()
    add_config_flags(p, MoreKnobs, skip=("path",), unset=True, flags={"size": "--px"},
                     extra={"size": {"note": "Mind it."}})
    actions = _actions(p)
    assert "path" not in actions and actions["size"].option_strings == ["--px"]
    assert actions["new_knob"].option_strings == ["--new-knob"] and actions["new_knob"].type is int
    assert actions["new_knob"].help == "The option just added. (default 7)"  # and inherited docstrings are read
    assert actions["size"].help == "How big, in pixels (100%%). Mind it. (default 3)"
    assert all(x.default is None for x in p._actions if x.dest != "help")
    assert p.parse_args(["--new-knob", "2"]).new_knob == 2


@dataclass
class Odd:
    table: dict[str, int] = field(default_factory=dict)


def test_a_field_of_a_type_with_no_flag_is_refused():
    with pytest.raises(TypeError, match="by hand"):
        add_config_flags(argparse.ArgumentParser(), Odd)
