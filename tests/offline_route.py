"""The offline routes of the docs pages: every ```bash block of docs/*.md and README.md right after a line
`<!-- offline route -->`. A page's marked blocks are one script: they run in page order in one bash
(`bash -euo pipefail`), in one fresh working directory holding a link to the repository's `configs/` (the recipes
are named `configs/...`, so a reader runs them from the repository root), so later blocks see the files and
variables of earlier ones. Sizes are shell variables with the page's values as defaults (`--n ${N:-600}`); the page
names them in one sentence, "The sizes are variables (N, STEPS)".

tests/docs/test_offline_routes.py checks every page's blocks (fast) and runs each job page at small sizes
(`make test-pages`). This file is also the runner for a whole page at its own sizes, to compare with the numbers
printed on it:

    python tests/offline_route.py docs/vizwiz-llava.md --out /tmp/vizwiz-route
    python tests/offline_route.py docs/vizwiz-llava.md --out /tmp/vizwiz-small --set N=100 --set STEPS=4

It prints each command, its wall time and its last stdout line; each command's stdout and stderr are kept in
`OUT/.route/NN.out` and `NN.err` (NN counts the commands from 00: `tail -f OUT/.route/NN.err` follows a long one).
`--list` prints the commands and variables without running them. Run it with the venv's python: its `bin/` goes
first on PATH, so the pages' `vlmtune` is that venv's, with this checkout's src/ first on PYTHONPATH.
`HF_HUB_OFFLINE=1`; OMP_NUM_THREADS is 1 unless set.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- offline route -->"
MISSPELT = re.compile(r"\s*<!--.*offline[\s_-]*route.*-->\s*", re.I)
FENCE = re.compile(r"^(\s*)```(.*)$")
DEFAULTED = re.compile(r"\$\{([A-Za-z_]\w*):-([^}]*)\}")
REFERENCE = re.compile(r"\$(?:\{([A-Za-z_]\w*)\}|([A-Za-z_]\w*))")
ASSIGNED = re.compile(r"(?:^|[;&|(]\s*|\bexport\s+|\bfor\s+)([A-Za-z_]\w*)(?:=|\s+in\b)", re.M)
SIZES = re.compile(r"The sizes are variables\s+\(([^)]*)\)")
ROUTE_DIR = ".route"


class RouteError(Exception):
    """A page whose marked blocks are malformed, or a route that failed (the message says where and why)."""


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass
class Step:
    command: Command
    seconds: float = 0.0
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        return lines[-1] if lines else ""


@dataclass
class Route:
    page: Path
    workdir: Path
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0

    def step(self, pattern: str) -> Step:
        """The last step whose command matches the regular expression `pattern` (re.search)."""
        found = [s for s in self.steps if re.search(pattern, s.command.text)]
        if not found:
            raise KeyError(f"no command of the route matches {pattern!r}")
        return found[-1]


def marked_blocks(page: Path) -> list[tuple[int, str]]:
    """(line of the block's first command, text) of each marked block of `page`, in page order. A marker that is
    not followed by a ```bash block on the next line, or a ```bash block that never closes, is a RouteError. Fenced
    code is skipped, so a page can show the marker inside a code block."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, fence, k = [], None, 0
    while k < len(lines):
        m = FENCE.match(lines[k])
        if fence is not None:
            if m and m.group(1) == fence and not m.group(2).strip():
                fence = None
        elif m:
            fence = m.group(1)
        elif MISSPELT.fullmatch(lines[k]) and lines[k].strip() != MARKER:
            raise RouteError(f"{page.name}:{k + 1}: write the marker as {MARKER!r} alone on its line, not "
                             f"{lines[k].strip()!r}")
        elif lines[k].strip() == MARKER:
            opening = lines[k + 1] if k + 1 < len(lines) else ""
            if opening.strip() != "```bash":
                raise RouteError(f"{page.name}:{k + 1}: {MARKER} must be followed by a ```bash block on the next "
                                 f"line, not {opening.strip()!r}")
            end = next((j for j in range(k + 2, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                raise RouteError(f"{page.name}:{k + 2}: the marked ```bash block never closes")
            blocks.append((k + 3, "\n".join(lines[k + 2 : end])))
            k = end
        k += 1
    return blocks


def _complete(text: str) -> bool:
    """Whether `text` is a whole command: no `\\` continuation and no quote left open."""
    if text.endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:  # "No closing quotation": a quoted argument over several lines (python -c "...")
        return False
    return True


def commands(page: Path) -> list[Command]:
    """The commands of the page's route, in order: one per line, `\\` continuations and multi-line quoted
    arguments kept whole, blank and comment-only lines dropped."""
    found = []
    for first, text in marked_blocks(page):
        lines, k = text.split("\n"), 0
        while k < len(lines):
            start, command = k, lines[k]
            while not _complete(command.rstrip()) and k + 1 < len(lines):
                k += 1
                command += "\n" + lines[k]
            k += 1
            if not _complete(command.rstrip()):
                raise RouteError(f"{page.name}:{first + start}: the command does not end inside its block")
            if command.strip() and not command.strip().startswith("#"):
                found.append(Command(page.name, first + start, command.strip()))
    return found


def variables(page: Path) -> dict[str, str]:
    """The route's size variables and their defaults (`${N:-600}` -> {"N": "600"}). A variable given two different
    defaults, or a variable read with no default that no earlier command sets, is a RouteError."""
    defaults: dict[str, str] = {}
    assigned: set[str] = set()
    for c in commands(page):
        for name, default in DEFAULTED.findall(c.text):
            if defaults.setdefault(name, default) != default:
                raise RouteError(f"{c.where}: ${{{name}}} defaults to {default}, elsewhere on the page to "
                                 f"{defaults[name]}")
        bare = DEFAULTED.sub("", c.text)
        for m in REFERENCE.finditer(bare):
            name = m.group(1) or m.group(2)
            if name not in assigned:  # under `set -u` even a name defaulted elsewhere must be set to be read bare
                raise RouteError(f"{c.where}: ${name} has no default (write ${{{name}:-VALUE}}) and no earlier "
                                 f"command of the route sets it")
        assigned |= set(ASSIGNED.findall(c.text))
    return defaults


def documented_sizes(page: Path) -> set[str] | None:
    """The names in the page's sentence "The sizes are variables (N, STEPS)", or None without one."""
    m = SIZES.search(page.read_text(encoding="utf-8"))
    return None if m is None else {n.strip() for n in m.group(1).split(",") if n.strip()}


def build_script(steps: list[Step], record: Path) -> str:
    """One bash script: each command in a brace group (no subshell: its variables stay) with stdout and stderr
    to RECORD/NN.out/.err, between markers on the script's own stdout."""
    parts = [f"cd {shlex.quote(str(record.parent))}"]
    for k, step in enumerate(steps):
        out = shlex.quote(str(record / f"{k:02d}"))
        parts.append(f"echo '@@route start {k}'\n{{ {step.command.text}\n}} </dev/null >{out}.out 2>{out}.err\n"
                     f"echo '@@route end {k}'")
    return "\n".join(parts) + "\n"


def environment(sizes: dict[str, str], page_variables: dict[str, str] | None = None) -> dict[str, str]:
    """The route's environment: this Python's bin/ first on PATH (its `vlmtune`), this checkout's src/ first on
    PYTHONPATH, offline, one thread unless set; the page's variables unset (their defaults apply) but for `sizes`."""
    env = {k: v for k, v in os.environ.items() if k not in (page_variables or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(sizes)
    return env


def run(page: Path, workdir: Path, sizes: dict[str, str] | None = None, timeout: float | None = None,
        echo=None) -> Route:
    """Run the page's marked blocks in `workdir` (created; it must be empty or absent) with `sizes` set. Returns the
    Route (each step's command, wall time, stdout, stderr); a failing command or the timeout is a RouteError with
    the command, its page line, and the tail of its output. `echo(step)` is called as each command starts (with
    step.rc None) and ends."""
    page, workdir = page.resolve(), workdir.resolve()
    declared = variables(page)
    unknown = set(sizes or {}) - set(declared)
    if unknown:
        raise RouteError(f"{page.name} has no size variable {sorted(unknown)}; its variables: {sorted(declared)}")
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        raise RouteError(f"{workdir} is not empty: a route starts in a fresh directory")
    (workdir / "configs").symlink_to(REPO / "configs", target_is_directory=True)
    record = workdir / ROUTE_DIR
    record.mkdir()
    route = Route(page, workdir, [Step(c) for c in commands(page)])
    script = record / "route.sh"
    script.write_text(build_script(route.steps, record), encoding="utf-8")
    started = time.monotonic()
    proc = subprocess.Popen(["bash", "-euo", "pipefail", str(script)], cwd=workdir, env=environment(sizes or {},
                            declared), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    current, t0, timed_out, stray = None, started, False, []
    try:
        for line in _lines(proc, started, timeout):
            kind, _, k = line.strip().removeprefix("@@route ").partition(" ")
            if not line.startswith("@@route ") or not k.isdigit():
                stray.append(line)  # the shell's own messages, outside every command's redirection
                continue
            step = route.steps[int(k)]
            if kind == "start":
                current, t0 = step, time.monotonic()
            elif kind == "end":
                step.seconds, step.rc = time.monotonic() - t0, 0
                _collect(step, record, int(k))
                current = None
            if echo:
                echo(step)
    except TimeoutError:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
    rc = proc.wait()
    route.seconds = time.monotonic() - started
    if current is not None or rc or timed_out:
        if current is None:
            raise RouteError(f"{page.name}: the route's shell exited with {rc} outside any command:\n"
                             f"{_tail(''.join(stray))}")
        current.seconds, current.rc = time.monotonic() - t0, rc
        _collect(current, record, route.steps.index(current))
        if echo:
            echo(current)
        why = f"timed out after {timeout:.0f} s of the route" if timed_out else f"exit status {rc}"
        raise RouteError(f"{current.command.where}: {why} (in {workdir}):\n  {current.command.text}\n"
                         f"--- stdout (last lines) ---\n{_tail(current.stdout)}\n"
                         f"--- stderr (last lines) ---\n{_tail(current.stderr)}")
    return route


def _lines(proc: subprocess.Popen, started: float, timeout: float | None):
    """The script's own stdout line by line, as each is written (read by a thread: a select() on a buffered pipe
    would hold back lines already read); TimeoutError once `timeout` seconds have passed since `started`."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    while True:
        left = None if timeout is None else timeout - (time.monotonic() - started)
        if left is not None and left <= 0:
            raise TimeoutError
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            raise TimeoutError from None
        if line is None:
            return
        yield line


def _collect(step: Step, record: Path, k: int) -> None:
    for stream in ("out", "err"):
        path = record / f"{k:02d}.{stream}"
        if path.exists():
            setattr(step, f"std{stream}", path.read_text(encoding="utf-8", errors="replace"))


def _tail(text: str, n: int = 25) -> str:
    lines = text.rstrip().splitlines()
    return "\n".join(line[:400] for line in lines[-n:]) or "(nothing)"


def _echo(step: Step) -> None:
    if step.rc is None:
        print(f"\n$ {step.command.text}    # {step.command.where}", flush=True)
    else:
        status = "" if step.rc == 0 else f", exit status {step.rc}"
        print(f"  [{step.seconds:.1f} s{status}] {step.last_line[:2000]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: python tests/offline_route.py docs/vizwiz-llava.md --out "
                                            "/tmp/vizwiz-route")
    parser.add_argument("page", type=Path, help="a docs page (docs/X.md or README.md)")
    parser.add_argument("--out", type=Path, required=True, help="the working directory (new or empty)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a size variable instead of the page's default (repeatable)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds for the whole route")
    parser.add_argument("--list", action="store_true", help="print the route's commands and variables; run nothing")
    a = parser.parse_args(argv)
    try:
        sizes = dict(s.split("=", 1) for s in a.set)
    except ValueError:
        parser.error("--set takes NAME=VALUE")
    try:
        if a.list:
            print(f"variables: {variables(a.page)}")
            for c in commands(a.page):
                print(f"{c.where}: {c.text}")
            return 0
        route = run(a.page, a.out, sizes, a.timeout, echo=_echo)
    except RouteError as e:
        print(f"\noffline route failed: {e}", file=sys.stderr)
        return 1
    print(f"\n{a.page}: {len(route.steps)} commands in {route.seconds:.1f} s; outputs in {a.out}/{ROUTE_DIR}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
