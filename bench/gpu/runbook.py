"""The GPU runbook's items, one per fresh process, and the markdown table of their results (issue 23, part 3).

bench/gpu/run.sh drives it; by hand:

    python bench/gpu/runbook.py items [--dry]                  # the items and their time limits, one per line
    python bench/gpu/runbook.py run ITEM --work DIR [--dry]    # one item: DIR/results/ITEM.json
    python bench/gpu/runbook.py table --work DIR --out FILE [--dry] [--command CMD]

Items: `data` (synthetic fashion images at a real size), `base-M` (a random-weight checkpoint of model M's real
config from ../shared/real-models, bf16), then training items on vlmtune's own loop: LoRA with sdpa and with
flash-attention-2, QLoRA (bitsandbytes 4-bit), full fine-tuning (vision frozen), TRL's SFTTrainer on the same LoRA
run, the vision cache on vs off over 3 epochs of a frozen-vision LoRA, packing on vs off; then serving: the same
load (bench/serve_load.py) on the builtin engine and on vLLM (`serve --engine vllm`, where a vLLM environment is).
Each training item's RunCfg is a YAML written here; `vlmtune plan --config YAML --json` predicts its peak memory
where the command exists.
With --dry everything runs on CPU at tiny sizes (1 layer, narrowed towers, few steps): a test of the path, not a
measurement. This file imports no torch; bench/gpu/workers.py does the measuring inside the item's process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from table import write_table

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "real-models"
MODELS = {  # family: (name in the table, folder in ../shared/real-models, GPU depth (None: full), dry max width)
    # dry widths: 128 (one or two heads of the real head size): at SmolVLM's real width (576/768) one CPU step of
    # its ~350 image tokens per sample (a 512px tile of 1,024 patches, several tiles) takes ~9 s on 2 cores
    "qwen2_5_vl": ("Qwen2.5-VL-3B", "Qwen__Qwen2.5-VL-3B-Instruct", None, 128),
    "llava": ("LLaVA-1.5-7B", "llava-hf__llava-1.5-7b-hf", None, 128),
    "smolvlm": ("SmolVLM2-256M", "HuggingFaceTB__SmolVLM2-256M-Video-Instruct", None, 128),
}
GPU = {"n": 64, "size": 448, "batch": 4, "warmup": 3, "steps": 13, "lr": 1e-4}
DRY = {"n": 8, "size": 64, "batch": 2, "warmup": 1, "steps": 3, "lr": 1e-4}
CACHE_MODEL = PACK_MODEL = "smolvlm"  # the smallest model: 3 epochs and 2 packing runs fit the time budget
SERVE_MODEL = "smolvlm"  # the served model: the same requests on the builtin engine and on vLLM (bench/serve_load.py)
SERVE = {"GPU": {"clients": 32, "requests": 512, "max_tokens": 32}, "DRY": {"clients": 4, "requests": 16,
                                                                             "max_tokens": 8}}
TRL_MODEL = "llava"  # LLaVA's processor is the one TRL's VLM collator is known to handle (no video processor)
# bytes per trained parameter in full fine-tuning: fp32 weights (vlmtune upcasts trainables), grads, AdamW's 2 moments
FULL_BYTES_PER_PARAM = 16


def items(dry: bool) -> list[tuple[str, int]]:
    """(item, time limit in seconds), in the order they run: the cheap and the most asked-for first, so a spent
    time budget drops the least important ones."""
    base, train = (180, 300) if dry else (240, 180)  # dry: ~30-70 s an item on 2 busy CPU cores
    out = [("data", 60 if dry else 120)] + [(f"base-{m}", base) for m in MODELS]
    out += [(f"lora-{m}", train) for m in MODELS] + [(f"trl-{TRL_MODEL}", train)]
    out += [("cache-off", train), ("cache-on", train), ("pack-off", train), ("pack-on", train)]
    out += [("serve-builtin", train), ("serve-vllm", 60 if dry else 480)]  # vLLM starts in ~1-2 minutes
    out += [(f"qlora-{m}", train) for m in MODELS]
    out += [(f"lora-fa2-{m}", train) for m in MODELS]
    out += [(f"full-{m}", train) for m in MODELS]  # last: the slowest (AdamW over billions of fp32 parameters)
    return out


def sizes(dry: bool) -> dict:
    return DRY if dry else GPU


def run_cfg(name: str, work: Path, model: str, dry: bool, *, lora: bool = True, attn: str = "sdpa",
            quant: bool = False, cache: bool = False, packing: bool = False, steps: int | None = None) -> dict:
    """The RunCfg (as a dict) of one training item: bf16 weights, bf16 autocast, no eval, no checkpoints."""
    s = sizes(dry)
    model_cfg = {"family": model, "path": str(work / f"base-{model}"), "dtype": "bfloat16",
                 "attn_implementation": attn}
    if quant:
        model_cfg["quantization"] = {"bits": 4, "quant_type": "nf4", "compute_dtype": "bfloat16"}
    return {
        "name": name, "out_dir": str(work / "runs"), "report": False, "model": model_cfg,
        "lora": {"enabled": lora, "r": 16, "alpha": 32, "dropout": 0.0},
        "data": {"path": str(work / "data"), "val_split": None, "max_length": 4096},
        "train": {"seed": 0, "max_steps": steps or s["steps"], "micro_batch_size": s["batch"],
                  "global_batch_size": s["batch"], "lr": s["lr"], "warmup_steps": 0, "log_every": 1,
                  "eval_every": 0, "save_every": 0, "trackers": [], "progress": False, "mixed_precision": "bf16",
                  # LoRA: the language model's adapters only; full: language model + projector, vision frozen
                  "freeze_vision": True, "freeze_projector": lora,
                  "vision_cache": "auto" if cache else "off", "packing": packing},
    }


def spec_of(item: str, work: Path, dry: bool) -> tuple[str, dict, dict]:
    """(worker kind, worker spec, the row's description) of an item, or raises Skip with the reason."""
    s = sizes(dry)
    if item == "data":
        return "data", {}, {"what": "synthetic fashion data", "model": "-"}
    kind, _, model = item.rpartition("-")
    if kind == "base":
        name, folder, depth, width = MODELS[model]
        return "base", {"family": model, "real": str(REAL / folder), "out": str(work / item),
                        "depth": 1 if dry else depth, "max_hidden": width if dry else None}, {"model": name}
    cuda_only = "dry (CPU): {} needs CUDA" if dry else None
    if item.startswith("serve-"):
        return _serve_spec(item, work, dry)
    desc: dict = {"attn": "sdpa", "method": "LoRA r16"}
    if item.startswith(("cache-", "pack-")):
        mode, on = item.split("-")
        model = CACHE_MODEL if mode == "cache" else PACK_MODEL
        epochs = -(-s["n"] // s["batch"])  # steps per epoch: every sample is in the train split
        if mode == "cache":
            cfg = run_cfg(item, work, model, dry, cache=on == "on", steps=3 * epochs)
            desc.update(method="LoRA r16, vision + projector frozen, 3 epochs", cache=on, steps_per_epoch=epochs)
        else:
            cfg = run_cfg(item, work, model, dry, packing=on == "on")
            desc.update(method=f"LoRA r16, packing {on}")
        kind = "vlmtune"
    elif kind == "lora":
        cfg = run_cfg(item, work, model, dry)
    elif kind == "lora-fa2":
        if cuda_only:
            raise Skip(cuda_only.format("flash-attention-2"))
        try:
            import flash_attn  # noqa: F401  # only whether it imports: the worker's transformers loads it
        except ImportError as e:
            raise Skip(f"flash_attn does not import ({e})") from None
        cfg = run_cfg(item, work, model, dry, attn="flash_attention_2")
        desc["attn"] = "flash_attention_2"
    elif kind == "qlora":
        if cuda_only:
            raise Skip(cuda_only.format("QLoRA (bitsandbytes 4-bit)"))
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise Skip(f"bitsandbytes does not import ({e})") from None
        cfg = run_cfg(item, work, model, dry, quant=True)
        desc["method"] = "QLoRA r16 (nf4)"
    elif kind == "full":
        cfg = run_cfg(item, work, model, dry, lora=False)
        desc["method"] = "full (vision frozen)"
        base = _result(work, f"base-{model}")
        card = base.get("card_memory")
        if card and base.get("params") and base["params"] * FULL_BYTES_PER_PARAM > 0.9 * card:
            raise Skip(f"does not fit: {base['params'] / 1e9:.1f}B params x {FULL_BYTES_PER_PARAM} bytes (fp32 "
                       f"weights, grads, AdamW) = {base['params'] * FULL_BYTES_PER_PARAM / 2**30:.0f} GiB > 90% "
                       f"of the card's {card / 2**30:.0f} GiB")
    elif kind == "trl":
        try:
            import trl  # noqa: F401
        except ImportError:
            raise Skip("trl does not import: pass --trl-path DIR (a directory holding the trl package)") from None
        cfg = run_cfg(item, work, model, dry)
        kind = "trl"
        desc.update(method="LoRA r16, TRL SFTTrainer", vs=f"lora-{model}",
                    plan_note=f"plan: n/a (vlmtune's prediction: lora-{model})")
    else:
        raise ValueError(f"unknown item {item!r}")
    if not (work / f"base-{cfg['model']['family']}" / "config.json").is_file():
        raise Skip(f"no base checkpoint (item base-{cfg['model']['family']} failed)")
    path = work / "configs" / f"{item}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    desc.setdefault("model", MODELS[cfg["model"]["family"]][0])
    return kind if kind in ("trl",) else "vlmtune", {"config": str(path), "work": str(work)}, desc


def _serve_spec(item: str, work: Path, dry: bool) -> tuple[str, dict, dict]:
    """serve-builtin / serve-vllm: bench/serve_load.py's load on the base SmolVLM checkpoint, through `vlmtune serve`
    and `vlmtune serve --engine vllm` (vLLM's environment: `.venv-vllm`, or $VLMTUNE_VLLM_PYTHON)."""
    engine = item.split("-", 1)[1]
    if engine == "vllm":
        if dry:
            raise Skip("dry (CPU): vLLM's CPU build is measured by bench/serve_load.py --engines builtin,vllm")
        sys.path.insert(0, str(REPO / "src"))
        from vlmtune.serve.vllm import find_vllm_python

        try:
            find_vllm_python()
        except FileNotFoundError as e:
            raise Skip(f"no vLLM environment on this machine ({str(e).split('(')[0].strip()}; "
                       "make vllm builds the CPU build, a GPU machine needs vLLM's CUDA build)") from None
    model_dir = work / f"base-{SERVE_MODEL}"
    if not (model_dir / "config.json").is_file():
        raise Skip(f"no base checkpoint (item base-{SERVE_MODEL} failed)")
    load = SERVE["DRY" if dry else "GPU"]
    desc = {"model": MODELS[SERVE_MODEL][0], "method": f"serve: {engine}", "attn": "sdpa" if engine == "builtin"
            else "vLLM's", **load}
    return "serve", {"engine": engine, "model_dir": str(model_dir), **load}, desc


class Skip(Exception):
    """An item that does not run here, with the reason its row gives."""


def _result(work: Path, item: str) -> dict:
    path = work / "results" / f"{item}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def find_peak(plan) -> tuple[str, int] | None:
    """(key path, bytes) of the total predicted peak memory in `vlmtune plan --json`'s output, read defensively (the
    plan is another branch's work; on i23-plan it is `memory.total`, bytes): among the numbers whose key names a peak
    or a total (FLOPs, times, budgets and the vision cache's disk/RAM left out), one under a `memory` key first, then
    the shallowest; bytes unless the key says GiB or GB."""
    skip = ("flop", "second", "hour", "mfu", "budget", "disk", "ram_", "alternatives", "param", "token")
    found: list[tuple[str, float]] = []

    def walk(obj, path):
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            low = path.lower()
            if any(w in low for w in skip) or not ("peak" in low or low.endswith(("total", "total_bytes"))):
                return
            scale = 2**30 if "gib" in low else 1e9 if "gb" in low else 1
            found.append((path, obj * scale))

    walk(plan, "")
    if not found:
        return None
    path, value = min(found, key=lambda f: ("memory" not in f[0].lower(), f[0].count("."),
                                            "total" not in f[0].lower(), len(f[0])))
    return path, int(value)


def call_plan(config: Path) -> dict:
    """`vlmtune plan --config CONFIG --json` in a subprocess: {"plan_bytes", "plan_key"} or {"plan_note"}."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run([sys.executable, "-m", "vlmtune.cli", "plan", "--config", str(config), "--json"],
                              capture_output=True, text=True, timeout=180, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:  # it encodes the data set's samples: ~20 s of CPU in the dry run
        return {"plan_note": "plan: n/a (timed out after 180 s)"}
    if done.returncode != 0:
        if "invalid choice" in done.stderr:
            return {"plan_note": "plan: n/a (no `vlmtune plan` in this checkout)"}
        last = (done.stderr.strip().splitlines() or [""])[-1][:120]
        return {"plan_note": f"plan: n/a (exit {done.returncode}: {last})"}
    try:
        plan = json.loads(done.stdout[done.stdout.index("{"):])
    except ValueError:
        return {"plan_note": "plan: n/a (its output is not JSON)"}
    peak = find_peak(plan)
    if peak is None:
        return {"plan_note": "plan: n/a (no peak-memory key in its JSON)"}
    return {"plan_key": peak[0], "plan_bytes": peak[1]}


def make_data(work: Path, dry: bool) -> dict:
    from vlmtune.data.dataset import synthesize

    s = sizes(dry)
    t = time.perf_counter()
    counts = synthesize(work / "data", "fashion", s["n"], seed=0, size=s["size"], val=0.0, test=0.0)
    return {"counts": counts, "size": s["size"], "seconds": time.perf_counter() - t}


def run_item(item: str, work: Path, dry: bool) -> dict:
    try:
        kind, spec, desc = spec_of(item, work, dry)
    except Skip as e:
        return {"skipped": str(e)}
    if kind == "data":
        return {**desc, **make_data(work, dry)}
    if kind == "serve":  # bench/serve_load.py's servers and clients, in this process (vLLM in its own)
        sys.path.insert(0, str(REPO / "bench"))
        import serve_load

        d, m = Path(spec["model_dir"]), spec
        r = (serve_load.serve_and_load(d, 16, m["clients"], m["requests"], m["max_tokens"]) if m["engine"] == "builtin"
             else serve_load.vllm_and_load(d, m["clients"], m["requests"], m["max_tokens"], None))
        return {**desc, **r}
    out = dict(desc)
    if kind == "vlmtune":
        out.update(call_plan(Path(spec["config"])))
    import workers  # torch, transformers: only now, after the plan's subprocess

    result = workers.main(kind, spec)
    if kind == "base" and workers.torch.cuda.is_available():
        result["card_memory"] = workers.torch.cuda.get_device_properties(0).total_memory
    return {**out, **result, "warmup": sizes(dry)["warmup"], "batch": sizes(dry)["batch"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["items", "run", "table"])
    p.add_argument("item", nargs="?")
    p.add_argument("--dry", action="store_true", help="CPU, tiny sizes: the whole path, no measurement")
    p.add_argument("--work", type=Path, help="work directory (base checkpoints, data, results, logs)")
    p.add_argument("--out", type=Path, help="the markdown table (table)")
    p.add_argument("--command", default="bench/gpu/run.sh", help="the command shown in the table's header")
    args = p.parse_args()
    if args.action == "items":
        for name, limit in items(args.dry):
            print(name, limit)
        return
    if args.action == "run":
        (args.work / "results").mkdir(parents=True, exist_ok=True)
        result = run_item(args.item, args.work.resolve(), args.dry)
        (args.work / "results" / f"{args.item}.json").write_text(json.dumps(result, indent=1))
        print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}), file=sys.stderr)
        return
    names = [name for name, _ in items(args.dry)]
    text = write_table(args.work, names, args.dry, args.command, {"GPU": GPU, "DRY": DRY}[("GPU", "DRY")[args.dry]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
