"""Where and in what precision a model runs for inference: one policy for every command that loads a model to use it
(`eval`, `predict`, `serve`, `data autolabel`, `chart ask|eval`, the demo).

    --device auto|cuda|cuda:N|mps|cpu    auto (the default): the first CUDA device, else Apple's MPS, else the CPU
    --dtype  float32|bfloat16|float16    default: what the run trained in (`model.dtype`, kept in vlmtune.json), else
                                         the checkpoint's config.json, else float32

Under torchrun / accelerate launch each process takes its own device from Accelerate instead (`join_processes`).
A quantised (bitsandbytes) model is placed by bitsandbytes when it loads and is not moved again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")


def resolve_device(spec: str | None = "auto"):
    """`--device` -> a torch.device; a device that is not there is a clear error, not a crash at the first tensor."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    m = re.fullmatch(r"(cpu|mps|cuda)(?::(\d+))?", spec)
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise ValueError(f"--device {spec!r}: expected auto, cpu, mps, cuda or cuda:N")
    kind, index = m.group(1), m.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: no CUDA device is visible here (torch.cuda.is_available() is False)")
        if index is not None and int(index) >= torch.cuda.device_count():
            raise ValueError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", int(index) if index is not None else torch.cuda.current_device())
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps: Apple's MPS backend is not available here")
    return torch.device(kind)


def checkpoint_dtype(model_dir: str | Path, meta: dict, override: str | None = None) -> str:
    """The dtype a model is loaded in for inference: `override` (--dtype), else the run's `model.dtype` (vlmtune.json),
    else the checkpoint's own config.json `dtype` / `torch_dtype`, else float32."""
    if override:
        if override not in DTYPES:
            raise ValueError(f"--dtype {override!r}: expected one of {', '.join(DTYPES)}")
        return override
    if meta.get("dtype") in DTYPES:
        return meta["dtype"]
    config = Path(model_dir) / "config.json"
    if config.is_file():
        cfg = json.loads(config.read_text())
        for key in ("dtype", "torch_dtype"):
            if cfg.get(key) in DTYPES:
                return cfg[key]
    return "float32"


def place(model, device) -> None:
    """Move a loaded model to `device`, unless bitsandbytes already placed it (a quantised model is not movable)."""
    if device is not None and not getattr(model, "is_quantized", False):
        model.to(device)
