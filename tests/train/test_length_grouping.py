"""Length-grouped micro-batches: less padding, the same samples per step and the same losses."""

from __future__ import annotations

import json

import torch
from helpers import tiny_run_cfg

from vlmtune.config import RunCfg


def _rows(run_dir):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_grouping_reduces_padding_and_keeps_the_losses(tmp_path):
    from vlmtune.data.dataset import synthesize
    from vlmtune.train.loop import train

    data = tmp_path / "shapes"
    synthesize(data, "shapes", 80, seed=0, size=32, caption_fraction=0.5)  # short questions and long captions
    rows = {}
    for group in (False, True):
        cfg = RunCfg.from_dict(tiny_run_cfg(
            tmp_path / str(group), data, data={"max_length": 256, "val_split": None},
            train={"max_steps": 8, "micro_batch_size": 2, "global_batch_size": 8, "eval_every": 0, "save_every": 0,
                   "group_by_length": group}))
        train(cfg)
        rows[group] = _rows(cfg.run_dir)
    plain = sum(r["padding"] for r in rows[False]) / 8
    grouped = sum(r["padding"] for r in rows[True]) / 8
    print(f"padding fraction: {plain:.3f} ungrouped, {grouped:.3f} grouped")
    assert grouped < 0.6 * plain
    torch.testing.assert_close(torch.tensor([r["loss"] for r in rows[True]]),
                               torch.tensor([r["loss"] for r in rows[False]]), rtol=1e-5, atol=1e-5)
