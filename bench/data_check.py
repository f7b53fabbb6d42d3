"""Benchmark: `vlmtune data check` throughput and the memory of streaming import/check.

    .venv/bin/python bench/data_check.py            # ~5 minutes on 2 CPU cores; prints a markdown table

Side by side, in one script, each run in a fresh process (its peak RSS measured):
  baseline     the loop a hand-written pre-flight script runs: json.loads each line, open and decode each image
               (PIL .convert("RGB")). It checks nothing else; it is the floor for any check that decodes images.
  check        `vlmtune data check DIR` (every check: decode, modes, EXIF, pixel limit, content hashes, split leaks,
               placeholders, duplicates, answer statistics).
  check+model  the same with `--model` (a tiny LLaVA directory) and `--max-length`: every sample is also encoded by
               the family's processor for its exact token length.
Then streaming at 10x the records: a 100,000-line ShareGPT JSONL over the same 10,000 images is imported with
`vlmtune data import` and checked; peak RSS is compared with the 10,000-record runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = r"""
import json, sys
from pathlib import Path
from PIL import Image
root = Path(sys.argv[1])
n = 0
for line in open(root / "manifest.jsonl", encoding="utf-8"):
    row = json.loads(line)
    for rel in row["images"]:
        with Image.open(root / rel) as img:
            img.convert("RGB")
    n += 1
print(n)
"""


SETUP = r"""
import sys, time
from pathlib import Path
data, n, model = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
if not (data / "manifest.jsonl").is_file():
    from vlmtune.data.dataset import synthesize
    t = time.perf_counter()
    synthesize(data, "fashion", n, seed=0, size=64)
    print(f"generated {n} samples in {time.perf_counter() - t:.0f} s", file=sys.stderr)
if not (model / "config.json").is_file():
    from vlmtune.models import FAMILIES
    tiny = FAMILIES["llava"].tiny()
    tiny.model.save_pretrained(model)
    tiny.processor.save_pretrained(model)
"""


def run(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one command in a fresh process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) not in (0, 1):  # data check exits 1 when it finds errors
        raise RuntimeError(f"{cmd} failed")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--fanout", type=int, default=10, help="records per image in the streaming run")
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    work = Path(a.work or tempfile.mkdtemp(prefix="vlmtune-bench-"))
    py, cli = sys.executable, [sys.executable, "-m", "vlmtune.cli"]
    data, model = work / "fashion", work / "tiny_llava"
    # set-up in a child process: the parent stays small, so the peak RSS a child inherits at fork time is not
    # the parent's (Linux counts the pre-exec pages of a forked child)
    subprocess.run([py, "-c", SETUP, str(data), str(a.n), str(model)], check=True)
    rows = []
    for name, cmd in [
        ("baseline: json + PIL decode loop", [py, "-c", BASELINE, str(data)]),
        ("vlmtune data check", [*cli, "data", "check", str(data), "--out", str(work / "r1.json")]),
        ("vlmtune data check --model tiny-llava --max-length 512",
         [*cli, "data", "check", str(data), "--model", str(model), "--max-length", "512",
          "--out", str(work / "r2.json")]),
    ]:
        seconds, rss = run(cmd)
        rows.append((name, a.n, seconds, rss))
        print(f"{name}: {a.n / seconds:.0f} records/s, peak RSS {rss:.0f} MiB", file=sys.stderr)
    report = json.loads((work / "r1.json").read_text())
    assert report["ok"] and report["samples"] == a.n, "the benchmark data must check clean"

    # streaming: 10x the records over the same images, as ShareGPT JSONL, imported then checked
    big = work / "sharegpt.jsonl"
    n_big = a.n * a.fanout
    with open(big, "w", encoding="utf-8") as out:
        for k in range(a.fanout):
            with open(data / "manifest.jsonl", encoding="utf-8") as f:
                for line in f:
                    s = json.loads(line)
                    q = s["messages"][0]["content"][-1]["text"]
                    out.write(json.dumps({"id": f"{s['id']}-{k}", "images": s["images"], "messages": [
                        {"role": "user", "content": f"<image>{q} ({k})"},
                        {"role": "assistant", "content": s["messages"][-1]["content"][0]["text"]}]}) + "\n")
    imported = work / "imported"
    if imported.exists():
        subprocess.run(["rm", "-rf", str(imported)], check=True)
    for name, cmd in [
        (f"vlmtune data import sharegpt ({a.n} images)", [*cli, "data", "import", "sharegpt", str(big), "--out",
                                                           str(imported), "--images", str(data)]),
        ("vlmtune data check", [*cli, "data", "check", str(imported), "--out", str(work / "r3.json")]),
    ]:
        seconds, rss = run(cmd)
        rows.append((name, n_big, seconds, rss))
        print(f"{name}: {n_big / seconds:.0f} records/s, peak RSS {rss:.0f} MiB", file=sys.stderr)
    assert json.loads((work / "r3.json").read_text())["samples"] == n_big

    print("| run | records | seconds | records/s | peak RSS (MiB) |\n| --- | --- | --- | --- | --- |")
    for name, n, seconds, rss in rows:
        print(f"| {name} | {n:,} | {seconds:.1f} | {n / seconds:,.0f} | {rss:.0f} |")
    print(f"\nmachine: {os.cpu_count()} CPU cores; images: {a.n:,} fashion figures, 64x64 PNG; "
          f"work dir {work}")


if __name__ == "__main__":
    main()
