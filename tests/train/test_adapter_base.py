"""An adapter remembers its base: an absolute path (or hub id), revision, attention implementation, remote-code
setting and a fingerprint of a local base's weights. A run trained from a relative `model.path` is used from another
directory; an adapter is refused on a base directory that now holds other weights."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import save_builtin, tiny_run_cfg

from vlmtune.config import RunCfg


def test_a_lora_run_from_a_relative_base_path_works_anywhere_and_refuses_another_base(tmp_path, fashion_dir,
                                                                                      monkeypatch):
    from vlmtune.infer import Predictor
    from vlmtune.train.loop import train

    work = tmp_path / "work"
    save_builtin(work / "models" / "base", seed=0)
    monkeypatch.chdir(work)
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir, model={"path": "models/base"},
                                        lora={"enabled": True, "r": 4},
                                        train={"max_steps": 2, "eval_every": 0, "save_every": 2}))
    train(cfg)
    meta = json.loads((cfg.run_dir / "best" / "vlmtune.json").read_text())
    assert meta["base"] == str((work / "models" / "base").resolve())
    assert meta["base_fingerprint"] and meta["trust_remote_code"] is False
    assert {"base_revision", "attn_implementation"} <= meta.keys()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # before: the relative "models/base" did not resolve from here
    assert Predictor.from_path(cfg.run_dir, device="cpu").ask(None, "What colour?") is not None

    shutil.rmtree(work / "models" / "base")
    save_builtin(work / "models" / "base", seed=1)  # the same architecture, other weights
    with pytest.raises(ValueError, match="now holds other weights"):
        Predictor.from_path(cfg.run_dir, device="cpu")
