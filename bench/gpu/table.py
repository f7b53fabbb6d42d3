"""The markdown table of the GPU runbook (bench/gpu/runbook.py `table`): one row per item, each with its numbers or
the reason it has none (skipped, failed, timed out), under a header with the card, the versions, the date and the
command. Reads WORK/results/ITEM.json (what the item's process wrote), WORK/results/ITEM.rc (its exit code, written
by run.sh) and WORK/logs/ITEM.log. Imports no torch.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

GIB = 2**30
PEAK_SOURCES = ("bf16 dense peaks (no sparsity) from NVIDIA's data sheets: H100 SXM 989 TFLOP/s, H100 PCIe 756, "
                "H200 989, A100 312 (bench/gpu/workers.py CARD_PEAK_BF16)")


def _load(work: Path, item: str) -> dict:
    res = work / "results"
    if (res / f"{item}.json").is_file():
        return json.loads((res / f"{item}.json").read_text())
    rc = (res / f"{item}.rc").read_text().strip() if (res / f"{item}.rc").is_file() else None
    if rc is None:
        return {"failed": "did not run (no result, no exit code)"}
    if rc in ("124", "137"):
        return {"failed": f"timed out (exit {rc}; log: logs/{item}.log)"}
    log = work / "logs" / f"{item}.log"
    last = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:] if log.is_file() else []
    return {"failed": f"exit {rc}: {(last or ['no log'])[0][:160]}"}


def throughput(r: dict) -> dict:
    """tokens/s and ms/step over the steps after the warm-up ones (end-of-step times), FLOPs per token of step 0."""
    times, tokens, w = r.get("times") or [], r.get("tokens") or [], r.get("warmup", 1)
    n = len(times)
    if n <= w:
        return {}
    dt = times[-1] - times[w - 1]
    out = {"tokens_s": sum(tokens[w:n]) / dt, "ms_step": 1000 * dt / (n - w), "timed_steps": n - w}
    if r.get("flops_step0") and r.get("tokens_step0"):
        out["flops_token"] = r["flops_step0"] / r["tokens_step0"]
    return out


def _gib(x) -> str:
    return f"{x / GIB:.2f}"


def _row(item: str, r: dict, results: dict, dry: bool) -> list[str]:
    what = [item, r.get("model", "-"), r.get("method", "-"), r.get("attn", "-")]
    if "skipped" in r:
        return [*what, *["-"] * 6, f"skipped: {r['skipped']}"]
    if "failed" in r:
        return [*what, *["-"] * 6, f"failed: {r['failed']}"]
    if item == "data":
        return [*what, *["-"] * 6, f"{sum(r['counts'].values())} samples at {r['size']}px in {r['seconds']:.1f} s"]
    if item.startswith("base-"):
        note = (f"{r['params'] / 1e6:.0f}M params; layers x width: text {r['text_layers']} x {r['text_hidden']}, "
                f"vision {r['vision_layers']} x {r['vision_hidden']}; made and written in {r['seconds']:.0f} s")
        return [*what, *["-"] * 6, note]
    if item.startswith("serve-"):  # tokens/s of the answers; the "ms/step" column holds the p50 latency
        note = (f"{r['requests']} requests from {r['clients']} clients, max_tokens {r['max_tokens']}: "
                f"{r['rps']:.1f} requests/s, latency p50 / p95 {r['p50']:.2f} / {r['p95']:.2f} s, {r['errors']} errors")
        if r.get("engine"):
            note += f"; {r['engine']}, started in {r['start_s']:.0f} s"
        builtin = results.get("serve-builtin", {})
        if item == "serve-vllm" and "rps" in builtin:
            note += f"; vLLM/builtin requests/s {r['rps'] / builtin['rps']:.2f}x"
        return [*what, f"{r['tps']:.0f}", f"{1000 * r['p50']:.0f} (p50 latency)", "n/a: serving", "-", "-", "-",
                note]
    t = throughput(r)
    if not t:
        return [*what, *["-"] * 6, f"failed: {len(r.get('times') or [])} steps logged, fewer than the warm-up + 1"]
    flops_token, flops_from = t.get("flops_token"), ""
    # FlopCounterMode misses flash-attention kernels and bnb 4-bit matmuls, and TRL's run is not counted: the model
    # FLOPs of the same model's sdpa LoRA row (same data, LoRA and steps) stand for theirs
    ref_name = r.get("vs") or (item.replace("lora-fa2-", "lora-").replace("qlora-", "lora-")
                               if item.startswith(("lora-fa2-", "qlora-")) else None)
    ref = results.get(ref_name, {}) if ref_name else {}
    if ref_name:
        flops_token, flops_from = throughput(ref).get("flops_token"), f" (FLOPs of {ref_name})"
    if r.get("peak_flops") and flops_token:
        mfu = f"{100 * flops_token * t['tokens_s'] / r['peak_flops']:.1f}%{flops_from}"
    elif dry or not r.get("peak_flops"):
        mfu = f"n/a: {r.get('peak_key', 'no peak')}"
    else:
        mfu = "n/a: no FLOP count"
    if "peak_allocated" in r:
        mem = f"{_gib(r['peak_allocated'])} / {_gib(r['peak_reserved'])}"
    else:
        mem = f"n/a: CPU (peak RSS {_gib(r['peak_rss'])})"
    if "plan_bytes" in r:
        plan = f"{_gib(r['plan_bytes'])}"
        ratio = f"{r['peak_allocated'] / r['plan_bytes']:.2f}" if "peak_allocated" in r else "n/a: CPU"
    else:
        plan, ratio = r.get("plan_note", "plan: n/a"), "-"
    notes = [f"loss {r['losses'][-1]:.3f}" if r.get("losses") else "no loss logged", f"{t['timed_steps']} timed steps"]
    if r.get("steps_per_epoch"):
        spe, times = r["steps_per_epoch"], r["times"]
        ends = [times[min(len(times), e * spe) - 1] for e in (1, 2, 3)]
        epochs = [b - a for a, b in zip([r["fit_start"], *ends[:-1]], ends, strict=True)]
        notes.append("epochs " + " / ".join(f"{e:.2f}" for e in epochs) + " s; cache "
                     + ("on" if r.get("vision_cache") else "off"))
    if r.get("vs") and "times" in ref:
        notes.append(f"vlmtune/TRL tokens/s {throughput(ref)['tokens_s'] / t['tokens_s']:.2f}x; trl {r.get('trl')}")
    if item.startswith("pack-") and "times" in results.get("pack-off", {}) and item == "pack-on":
        notes.append(f"on/off tokens/s {t['tokens_s'] / throughput(results['pack-off'])['tokens_s']:.2f}x")
    return [*what, f"{t['tokens_s']:.0f}", f"{t['ms_step']:.0f}", mfu, mem, plan, ratio, "; ".join(notes)]


def write_table(work: Path, names: list[str], dry: bool, command: str, sizes: dict) -> str:
    results = {n: _load(work, n) for n in names}
    info = next((r for r in results.values() if "torch" in r), {})
    device = "dry (CPU)" if dry else info.get("device", "unknown (no item reached the device)")
    keys = sorted({r["plan_key"] for r in results.values() if "plan_key" in r})
    lines = [
        f"### GPU runbook: {device}",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command}`",
        f"- torch {info.get('torch', '?')}, transformers {info.get('transformers', '?')}, CUDA {info.get('cuda')}",
        f"- sizes: {sizes['n']} samples at {sizes['size']}px, micro-batch {sizes['batch']}, {sizes['steps']} steps "
        f"({sizes['warmup']} warm-up, not timed); bf16 weights, bf16 autocast",
        f"- MFU: counted FLOPs of step 0 (torch FlopCounterMode: forward, backward, optimizer) per token x tokens/s, "
        f"over the card's {PEAK_SOURCES}; peak used here: {info.get('peak_key', '-')}",
        f"- peak memory: torch.cuda.max_memory_allocated / max_memory_reserved over the whole process (load "
        f"included); plan: `vlmtune plan --config ... --json`, key used: {', '.join(keys) or 'none'}",
    ]
    if dry:
        lines.append("- **dry run on CPU at tiny sizes (1 layer, narrowed towers, few steps): a test of the path, "
                     "not a measurement**")
    lines += ["", "| item | model | method | attention | tokens/s | ms/step | MFU | peak alloc / reserved GiB "
                  "| plan GiB | measured/plan | note |", "|" + "---|" * 11]
    lines += ["| " + " | ".join(_row(n, results[n], results, dry)) + " |" for n in names]
    return "\n".join(lines) + "\n"
