"""Test helpers (importable from any test module)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

TINY_BUILTIN = {"image_size": 32, "patch_size": 8, "vision_dim": 32, "vision_layers": 1, "text_dim": 32,
                "text_layers": 1, "heads": 4}


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
