"""A sample longer than data.max_length is found before step 0, not at the step that first draws it: without
data.skip_bad the run stops there naming it; with it, the sample is listed in rejected.jsonl, the run trains, and a
killed-and-resumed run skips the same samples and continues."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import tiny_run_cfg

from vlmtune.config import RunCfg

LONG = "a very long answer " * 40


@pytest.fixture
def data(tmp_path, fashion_dir):
    out = tmp_path / "data"
    shutil.copytree(fashion_dir, out)
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    extra = []
    for split in ("train", "val"):
        row = json.loads(json.dumps(next(r for r in rows if r["split"] == split)))
        row["id"] = f"too-long-{split}"
        if split == "train":
            row["messages"][-1]["content"][0]["text"] = LONG
            row["answers"] = [LONG]
        else:  # a val prompt that does not fit
            row["messages"][0]["content"][1]["text"] = LONG + "?"
        extra.append(row)
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + extra))
    return out


def _cfg(tmp_path, data, **train):
    return RunCfg.from_dict(tiny_run_cfg(tmp_path, data, data={"max_length": 128, "skip_bad": train.pop("skip", False)},
                                         train={"max_steps": 6, "eval_every": 3, "save_every": 3, **train}))


def test_without_skip_bad_the_run_stops_before_training_naming_the_samples(tmp_path, data):
    from vlmtune.train.loop import train

    cfg = _cfg(tmp_path, data)
    with pytest.raises(ValueError, match=r"2 sample\(s\) longer than data.max_length=128") as e:
        train(cfg)
    assert "too-long-train" in str(e.value) and "too-long-val" in str(e.value)
    assert not (cfg.run_dir / "checkpoints").exists(), "stopped before step 0"


def test_with_skip_bad_they_are_listed_and_a_resumed_run_continues(tmp_path, data):
    from vlmtune.runs import checkpoints
    from vlmtune.train.loop import train

    cfg = _cfg(tmp_path, data, skip=True)
    train(cfg)
    rejected = [json.loads(x) for x in (cfg.run_dir / "rejected.jsonl").read_text().splitlines()]
    assert {r["error"].split("'")[1] for r in rejected} == {"too-long-train", "too-long-val"}
    shutil.rmtree(checkpoints(cfg.run_dir)[-1])  # as if killed after step 3: the resumed run passes the same check
    again = _cfg(tmp_path, data, skip=True)
    train(again)
    assert [p.name for p in checkpoints(cfg.run_dir)][-1] == "step-6"
    assert len((cfg.run_dir / "rejected.jsonl").read_text().splitlines()) == 2, "listed once"
