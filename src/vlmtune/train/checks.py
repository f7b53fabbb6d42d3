"""The checks of a RunCfg that need the family and task registries. config.py sits at the bottom of the layers and
imports nothing of vlmtune, so it checks what its own fields tell (types, ranges, one field against another); what
needs FAMILIES or TASKS is checked here, wherever a RunCfg is built for use, before any data is read or model loaded:

- `train.loop.setup` (`vlmtune train`, the demo, the benches), before the run directory is written;
- where a run is read back for use (`runs.run_config_of`): `vlmtune eval/predict/data autolabel --model RUN` and
  `vlmtune serve`, before its data is read or its model loaded. runs.py sits below eval, whose task registry these
  checks need, so the commands call this on what it reads.

    cfg = check_run(RunCfg.from_file("configs/builtin/tiny_fashion_vqa.yaml"))   # ValueError naming the option
"""

from __future__ import annotations

from vlmtune.config import RunCfg
from vlmtune.eval.tasks import get_task
from vlmtune.models import FAMILIES, get_family
from vlmtune.train.grpo import reward_functions


def check_run(cfg: RunCfg) -> RunCfg:
    """`cfg`, or ValueError when a metric is not one of its task's (eval and every probe), a task or family is
    unknown, or `train.packing` is set for a family that cannot pack."""
    for where, task, metric in [("eval", cfg.eval.task, cfg.eval.metric),
                                *((f"probes[{p.name}]", p.task, p.metric) for p in cfg.probes)]:
        if metric not in get_task(task).metrics:
            raise ValueError(f"{where}: metric {metric!r} is not one of task {task!r}'s "
                             f"{list(get_task(task).metrics)}")
    if cfg.train.packing and not get_family(cfg.model.family).packing:
        raise ValueError(f"train.packing: the {cfg.model.family} family cannot pack samples into one row "
                         f"(families that can: {sorted(n for n, f in FAMILIES.items() if f.packing)})")
    if cfg.train.method == "grpo":  # every reward resolves: a metric of vlmtune's, an importable function
        reward_functions(cfg.train)
    return cfg
