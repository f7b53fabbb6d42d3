"""`vlmtune serve --engine vllm`: vLLM's OpenAI-compatible server on an exported run, started in vLLM's own
environment (`make vllm` builds `.venv-vllm`: vLLM pins its own torch and transformers).

    vlmtune serve --engine vllm --model runs/my_run [--tensor-parallel 2] [--lora] --port 8000

`vllm_command` turns what the run says into vLLM's flags, so the served model answers as the evaluated one did:
the run's chat template (the exported processor's, passed explicitly), its generation config with greedy decoding
by default (`--override-generation-config '{"temperature": 0}'`: a request that asks for temperature > 0 samples),
its dtype, its prompt length (`--max-model-len`, the run's data.max_length plus the answer budget) and the server's
image limit per request (`--limit-mm-per-prompt`). `run_server` starts it, waits for /health, prints the URL, and
stops it cleanly on Ctrl-C or SIGTERM (the process group, then a kill after a grace period).
The model directory comes from `cli/serve.py`, which exports the run (merged for an adapter, or the adapter
beside its base with `--lora`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

VLLM_VENV = ".venv-vllm"
START_TIMEOUT_S = 900.0
"""vLLM compiles and profiles before it answers: minutes on a CPU."""
STOP_GRACE_S = 20.0


def find_vllm_python(explicit: str | None = None) -> Path:
    """The Python of vLLM's environment: `explicit` (--vllm-python), $VLMTUNE_VLLM_PYTHON, or `.venv-vllm` in the
    working directory or beside this source tree (an editable install's checkout). FileNotFoundError says how to
    build it."""
    given = explicit or os.environ.get("VLMTUNE_VLLM_PYTHON")
    candidates = [Path(given)] if given else [Path.cwd() / VLLM_VENV / "bin/python",
                                              Path(__file__).resolve().parents[3] / VLLM_VENV / "bin/python"]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"no vLLM environment ({', '.join(map(str, candidates))} not found): run "
                            "`make vllm` in the vlmtune checkout (vLLM in its own venv), or pass --vllm-python")


@dataclass
class VllmModel:
    """What vLLM serves: a standalone model directory, or a base with a LoRA adapter."""

    path: str
    """The model directory (an export) or, with `adapter`, the base (a directory or a hub id)."""
    name: str
    """The served model name clients use (the run's name)."""
    chat_template: Path | None = None
    adapter: Path | None = None
    lora_rank: int | None = None
    dtype: str = "auto"
    max_model_len: int | None = None


def vllm_command(python: Path, model: VllmModel, host: str = "127.0.0.1", port: int = 8000,
                 tensor_parallel: int = 1, max_images: int = 4, api_key: str | None = None,
                 extra: list[str] | None = None) -> list[str]:
    """The argv of vLLM's OpenAI server for `model` (see the module docstring)."""
    argv = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", model.path,
            "--served-model-name", model.name, "--host", host, "--port", str(port), "--dtype", model.dtype,
            "--tensor-parallel-size", str(tensor_parallel), "--generation-config", "auto",
            "--override-generation-config", json.dumps({"temperature": 0.0}),
            "--limit-mm-per-prompt", json.dumps({"image": max_images})]
    if model.chat_template is not None:
        argv += ["--chat-template", str(model.chat_template)]
    if model.max_model_len:
        argv += ["--max-model-len", str(model.max_model_len)]
    if model.adapter is not None:  # the adapter under the run's name; the base under its own path
        argv += ["--enable-lora", "--lora-modules", f"{model.name}={model.adapter}"]
        if model.lora_rank:
            argv += ["--max-lora-rank", str(model.lora_rank)]
    if api_key:
        argv += ["--api-key", api_key]
    return argv + list(extra or [])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError):
        return False


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            return proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.wait()


def run_server(argv: list[str], url: str, log: Path | None = None, start_timeout: float = START_TIMEOUT_S,
               on_ready=None) -> int:
    """Start vLLM (its own process group), wait until /health answers, print the URL (and call `on_ready(url)`),
    then wait; Ctrl-C or SIGTERM stops it cleanly. Returns vLLM's exit status (0 after a stop asked for). A server
    that exits or does not answer in `start_timeout` seconds raises RuntimeError with the tail of its log."""
    log = log or Path(os.environ.get("TMPDIR", "/tmp")) / f"vlmtune-vllm-{os.getpid()}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    stopping = {"asked": False}

    def ask_stop(signum, _frame):
        stopping["asked"] = True
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()  # only the main thread may set a handler
    previous = signal.signal(signal.SIGTERM, ask_stop) if main else None
    try:
        deadline = time.monotonic() + start_timeout
        while not _healthy(url):
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with status {proc.returncode} before it answered; the end of its "
                                   f"log ({log}):\n{_tail(log)}")
            if time.monotonic() > deadline:
                _stop(proc)
                raise RuntimeError(f"vLLM did not answer {url}/health in {start_timeout:.0f} s; the end of its log "
                                   f"({log}):\n{_tail(log)}")
            time.sleep(0.5)
        print(f"vLLM is serving at {url}/v1 (log: {log}); Ctrl-C stops it", file=sys.stderr, flush=True)
        if on_ready is not None:
            on_ready(url)
        return proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        print("vLLM stopped", file=sys.stderr)
        return 0
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            _stop(proc)


def _tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
