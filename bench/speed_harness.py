"""The measuring harness of bench/train_speed.py, on the parent's side (no torch): each run a fresh worker
subprocess (bench/speed_workers.py) with its wall time, peak RSS and the CPU time other processes used meanwhile,
waiting for a quiet machine first; throughput and the final loss of a run's step log.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().with_name("train_speed.py")
"""The script whose `--worker` mode runs one worker."""


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks (/proc/stat); (0, 0) if unreadable."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v[:8]) - idle, sum(v[:8])


def busy_cores(seconds: float) -> float:
    """Cores busy over the next `seconds` (this process is asleep meanwhile)."""
    b0, _ = cpu_jiffies()
    time.sleep(seconds)
    b1, _ = cpu_jiffies()
    return (b1 - b0) / os.sysconf("SC_CLK_TCK") / seconds


def wait_quiet(max_wait: float, threshold: float, note) -> float:
    """Wait (at most `max_wait` s) until other processes use less than `threshold` cores; returns the last load."""
    t = time.perf_counter()
    load = busy_cores(1.0)
    while load > threshold and time.perf_counter() - t < max_wait:
        note(f"  other processes use {load:.2f} cores; waiting for a quieter machine")
        time.sleep(5)
        load = busy_cores(1.0)
    return load


def child_ticks(pid: int) -> int:
    """CPU ticks (user + system, its waited-for children included) a running process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15])
    except (OSError, ValueError, IndexError):
        return -1


def other_cores(trace: list, lo: float, hi: float) -> float:
    """Cores used by other processes between perf_counter times lo and hi (the trace's samples inside them)."""
    inside = [x for x in trace if lo <= x[0] <= hi and x[2] >= 0 and x[1] > 0]
    if len(inside) < 2:
        inside = [x for x in trace if x[2] >= 0 and x[1] > 0]
    if len(inside) < 2:
        return float("nan")
    (t0, b0, c0), (t1, b1, c1) = inside[0], inside[-1]
    return max(0.0, ((b1 - b0) - (c1 - c0)) / os.sysconf("SC_CLK_TCK") / (t1 - t0))


def run_worker(name: str, spec: dict, work: Path, tag: str, warmup: int = 1, script: Path = SCRIPT,
               pythonpath: str | None = None) -> dict:
    """One fresh subprocess; returns its result plus wall time, peak RSS (os.wait4's ru_maxrss, KiB on Linux) and
    `other_cores`: CPU time other processes used during its timed window (machine busy time minus the child's), per
    second. perf_counter is CLOCK_MONOTONIC, shared by parent and child, so the worker's step times line up.
    `script` is the benchmark whose `--worker` mode runs it; `pythonpath` goes before src/ on the child's path."""
    spec_path, result_path, log_path = (work / f"{tag}.{ext}" for ext in ("spec.json", "result.json", "log"))
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [pythonpath, str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    trace = []  # (perf_counter, machine busy ticks, the child's CPU ticks), every 0.2 s
    with open(log_path, "w") as log:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(script), "--worker", name, str(spec_path),
                                 str(result_path)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            trace.append((time.perf_counter(), cpu_jiffies()[0], child_ticks(proc.pid)))
            time.sleep(0.2)
        wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not result_path.is_file():
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise RuntimeError(f"worker {name} ({tag}) failed with exit code {proc.returncode}; log {log_path}:\n{tail}")
    out = json.loads(result_path.read_text())
    out["wall"] = wall
    out["rss_mib"] = usage.ru_maxrss / 1024
    out["cpu_s"] = usage.ru_utime + usage.ru_stime
    if "times" in out:  # the timed window: after the warmup steps to the last step
        window = (out["times"][min(len(out["times"]), warmup) - 1], out["times"][-1])
    else:
        window = out.get("window", (t, t + wall))
    out["other_cores"] = other_cores(trace, *window)
    said = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.startswith("vision cache:")]
    if said:
        out["vision_cache_said"] = said[-1]
    return out


class QuietRuns:
    """Timed runs on a shared machine: each waits for other processes to use fewer than `quiet_cores` cores (at most
    `quiet_wait` s) and is repeated (at most `retries` times) while they used more during its timed window; the
    least disturbed attempt is kept. `discarded` and `disturbed` list the others and the kept disturbed ones."""

    def __init__(self, work: Path, warmup: int, quiet_cores: float, quiet_wait: float, retries: int, note,
                 script: Path = SCRIPT, pythonpath: str | None = None):
        self.work, self.warmup, self.note, self.script, self.pythonpath = work, warmup, note, script, pythonpath
        self.quiet_cores, self.quiet_wait, self.retries = quiet_cores, quiet_wait, retries
        self.discarded: list[str] = []
        self.disturbed: list[str] = []

    def run(self, kind: str, spec: dict, tag: str) -> dict:
        tries = []
        for attempt in range(self.retries + 1):
            wait_quiet(self.quiet_wait, self.quiet_cores, self.note)
            r = run_worker(kind, spec, self.work, tag, self.warmup, self.script, self.pythonpath)
            self.note(f"  {tag}: {r['wall']:.1f}s, other processes used {r['other_cores']:.2f} cores in its timed "
                      "window")
            tries.append(r)
            if not r["other_cores"] > self.quiet_cores:
                break
            if attempt < self.retries:
                self.note(f"  {tag}: disturbed, running it again")
        kept = min(tries, key=lambda x: x["other_cores"])
        self.discarded.extend(f"{tag} ({x['other_cores']:.2f} cores)" for x in tries if x is not kept)
        if kept["other_cores"] > self.quiet_cores:
            self.disturbed.append(f"{tag} ({kept['other_cores']:.2f} cores)")
        return kept


def throughput(run: dict, warmup: int, batch: int, per_step: list | None = None, lo: int | None = None,
               hi: int | None = None) -> dict:
    """samples/s (and tokens/s) over steps (lo, hi] from the end-of-step timestamps; lo defaults to the warmup."""
    times = run["times"]
    lo = warmup if lo is None else lo
    hi = len(times) if hi is None else hi
    dt = times[hi - 1] - times[lo - 1]
    steps = [b - a for a, b in zip(times[lo - 1 : hi - 1], times[lo:hi], strict=True)]
    out = {"samples_s": batch * (hi - lo) / dt, "ms_step": 1000 * dt / (hi - lo),
           "samples_s_median_step": batch / statistics.median(steps)}
    if per_step:
        out["tokens_s"] = sum(p[0] for p in per_step[lo:hi]) / dt
        out["target_tokens_s"] = sum(p[2] for p in per_step[lo:hi]) / dt
    if run.get("data"):
        t_lo, t_hi = times[lo - 1], times[hi - 1]
        out["data_ms_step"] = 1000 * sum(d for end, d in run["data"] if t_lo < end <= t_hi) / (hi - lo)
    return out


def final_loss(run: dict, last: int = 10) -> float:
    return statistics.fmean(run["losses"][-last:])
