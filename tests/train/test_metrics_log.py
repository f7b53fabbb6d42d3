"""metrics.jsonl holds each step once: a run killed before its first checkpoint starts again from step 0 with a clean
log (appending would repeat steps 1..k), and a resumed run drops the rows written after its checkpoint's step."""

import json
import shutil

from helpers import tiny_run_cfg

from vlmtune.config import RunCfg
from vlmtune.train.loop import train


def _steps(run_dir) -> list[int]:
    return [r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_restarted_and_resumed_runs_log_each_step_once(tmp_path, fashion_dir):
    cfg = tiny_run_cfg(tmp_path, fashion_dir, data={"val_split": None},
                       train={"max_steps": 4, "save_every": 2, "eval_every": 0, "keep_checkpoints": 3})
    run = tmp_path / "runs" / "t"
    train(RunCfg.from_dict(cfg))
    assert _steps(run) == [1, 2, 3, 4]

    shutil.rmtree(run / "checkpoints")  # as if killed before its first checkpoint: the log has rows, no checkpoint
    shutil.rmtree(run / "best", ignore_errors=True)
    train(RunCfg.from_dict(cfg))
    assert _steps(run) == [1, 2, 3, 4], "a restart from step 0 starts a clean log"

    shutil.rmtree(run / "checkpoints" / "step-4")  # as if killed after logging step 4, before saving it
    train(RunCfg.from_dict(cfg))
    assert _steps(run) == [1, 2, 3, 4], "the resumed run drops the rows after step 2 and logs 3 and 4 again"
