"""How long an import takes in a fresh interpreter: the libraries vlmtune imports only where it uses them
(tests/test_layers.py LAZY_LIBRARIES) and the start of the `vlmtune` command, at two commits side by side.

    .venv/bin/python bench/import_times.py --repeat 7 [--before REV]

Each measurement is a new `python -c "import X"` process (the interpreter's own start included, and measured alone
as `python -c pass`); the median of --repeat runs is reported. With --before REV the command's start is also timed
on a checkout of REV (a temporary git worktree), in the same loop, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARIES = ["torch", "transformers", "peft", "accelerate", "datasets", "pyarrow", "matplotlib.pyplot", "tokenizers",
             "safetensors.torch", "huggingface_hub:hf_hub_download", "huggingface_hub.utils:validate_repo_id",
             "pycocoevalcap.cider.cider", "sacrebleu", "openpyxl", "scipy.optimize", "fastapi", "uvicorn", "numpy",
             "PIL.Image", "pydantic"]
"""What is timed; `module:name` times `from module import name`."""
CLI = "import vlmtune.cli as c; c.build_parser()"
"""What `vlmtune --help` does before printing (and every command before its work)."""


def once(code: str, src: Path | None = None) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def median(code: str, repeat: int, src: Path | None = None) -> float:
    return statistics.median(once(code, src) for _ in range(repeat))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--before", help="a git revision whose `vlmtune` start is timed next to this checkout's")
    a = ap.parse_args()
    bare = median("pass", a.repeat)
    print(f"python -c pass: {bare:.2f} s (median of {a.repeat}; subtracted below)\n")
    print("| import | seconds |\n|---|---:|")
    for lib in LIBRARIES:
        module, _, name = lib.partition(":")
        code = f"from {module} import {name}" if name else f"import {module}"
        print(f"| `{code}` | {median(code, a.repeat) - bare:.2f} |", flush=True)
    print()
    rows = [("this checkout", REPO / "src")]
    with tempfile.TemporaryDirectory() as tmp:
        if a.before:
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", f"{tmp}/before", a.before],
                           check=True)
            rows.append((a.before, Path(tmp) / "before" / "src"))
        try:
            times = {name: [] for name, _ in rows}
            for _ in range(a.repeat):  # interleaved: both commits see the same load
                for name, src in rows:
                    times[name].append(once(CLI, src))
            print("| `vlmtune` start (build the parser) | seconds |\n|---|---:|")
            for name, _ in rows:
                print(f"| {name} | {statistics.median(times[name]) - bare:.2f} |")
        finally:
            if a.before:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", f"{tmp}/before"], check=False)


if __name__ == "__main__":
    main()
