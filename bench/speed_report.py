"""The report of bench/train_speed.py: its measurements as markdown (throughput, memory, loss curves, FLOPs and
MFU, the vision cache, where vlmtune's step time goes).
"""

from __future__ import annotations

import os
import statistics
import time

from flops import human_flops
from speed_harness import final_loss, throughput

FRAMEWORKS = ("vlmtune", "trl", "hf")
LABELS = {"vlmtune": "vlmtune `train()`", "trl": "TRL SFTTrainer", "hf": "HF Trainer + vlmtune encode"}


def fmt(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def report(args, m: dict) -> str:
    """The markdown of the measurements `m` (train_speed.py's `parent_main` gathers them) under the options `args`."""
    fl, prep0, per_step, peak, runs = m["flops"], m["prep"], m["per_step"], m["peak"], m["runs"]
    cache, cache_note, cache_steps, spe = m["cache"], m["cache_note"], m["cache_steps"], m["steps_per_epoch"]
    phases, prof, discarded, disturbed = m["phases"], m["cprofile"], m["discarded"], m["disturbed"]
    t_all, work = m["t_all"], m["work"]
    out = []
    say = out.append
    say(f"Built-in LLaVA-architecture model, default BuiltinCfg (CLIP 4x128 on 64x64, patch 8 -> "
        f"{fl['image_tokens']} image tokens; Llama 2x128; {fl['params']:,} parameters, {fl['trainable']:,} "
        f"trainable with LoRA r=8 + projector); synthetic fashion, n={args.n} ({prep0['n_train']} train); "
        f"batch {args.batch}, {args.steps} steps, lr {args.lr:g} cosine, seed {args.seed}, LoRA dropout "
        f"{args.lora_dropout:g}, fp32, {peak['threads']} torch threads. Medians of {args.repeats} runs, each a "
        f"fresh subprocess, interleaved; throughput over steps {args.warmup}..{args.steps} (the first "
        f"{args.warmup} are warmup). Other processes may share these {os.cpu_count()} cores.\n")
    say(f"Batches: TRL's collator on the prompt/completion rows gives tensors identical to vlmtune's "
        f"`family.encode` (input_ids, attention_mask, labels, pixel_values, first 3 steps): "
        f"**{'yes' if prep0['trl_batches_identical'] else 'NO'}**. The HF Trainer's collator is `family.encode`.\n")
    tok_per_sample = sum(p[0] for p in per_step[: args.steps]) / (args.steps * args.batch)
    tgt_per_sample = sum(p[2] for p in per_step[: args.steps]) / (args.steps * args.batch)
    say(f"Tokens per sample: {tok_per_sample:.1f} (of them {prep0['image_tokens']} image tokens; padding excluded); "
        f"trained (target) tokens per sample: {tgt_per_sample:.2f} (answer + `</s>`).\n")

    say("## Throughput, memory, loss\n")
    say("| trainer | samples/s | tokens/s | ms/step | of it data (ms) | samples/s from the median step | "
        "start to first step (s) | process wall (s) | peak RSS (MiB) | final loss (mean of last 10 steps) | "
        "speed vs TRL | other processes (cores) |")
    say("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    med: dict[str, dict] = {}
    for kind in FRAMEWORKS:
        tps = [throughput(r, args.warmup, args.batch, per_step) for r in runs[kind]]
        med[kind] = {k: statistics.median(t[k] for t in tps) for k in tps[0]}
        med[kind]["wall"] = statistics.median(r["wall"] for r in runs[kind])
        med[kind]["first"] = statistics.median(r["times"][0] - r["t0"] for r in runs[kind])
        med[kind]["rss"] = statistics.median(r["rss_mib"] for r in runs[kind])
        med[kind]["loss"] = statistics.median(final_loss(r) for r in runs[kind])
        med[kind]["all_sps"] = [t["samples_s"] for t in tps]
        med[kind]["other"] = statistics.median(r["other_cores"] for r in runs[kind])
    for kind in FRAMEWORKS:
        m = med[kind]
        say(f"| {LABELS[kind]} | {fmt(m['samples_s'])} | {fmt(m['tokens_s'], 0)} | {fmt(m['ms_step'], 2)} | "
            f"{fmt(m['data_ms_step'], 2)} | {fmt(m['samples_s_median_step'])} | {fmt(m['first'])} | "
            f"{fmt(m['wall'])} | {fmt(m['rss'], 0)} | "
            f"{m['loss']:.4f} | {m['samples_s'] / med['trl']['samples_s']:.2f}x | {m['other']:.2f} |")
    say("")
    every = [f"{k}: " + ", ".join(f"{fmt(x)} ({r['other_cores']:.2f})"
                                   for x, r in zip(med[k]["all_sps"], runs[k], strict=True)) for k in FRAMEWORKS]
    say("samples/s of every run (other processes' cores): " + "; ".join(every) + ".\n")
    paired = [v / t for v, t in zip(med["vlmtune"]["all_sps"], med["trl"]["all_sps"], strict=True)]
    by_median = med["vlmtune"]["samples_s_median_step"] / med["trl"]["samples_s_median_step"]
    say("vlmtune / TRL within each repeat (runs interleaved): " + ", ".join(f"{x:.2f}x" for x in paired) +
        f"; from the median step times: {by_median:.2f}x.\n")
    say("'other processes': CPU time used by everything else on the machine during the run's timed window (from "
        "/proc/stat minus the run's own /proc/<pid>/stat), per second; each run starts once that is below "
        f"{args.quiet_cores:g} cores (waiting at most {args.quiet_wait:g} s), and a run disturbed by more is run "
        f"again (at most {args.retries} times; the least disturbed attempt counts). Runs discarded: "
        f"{', '.join(discarded) if discarded else 'none'}; kept although disturbed (no quiet attempt): "
        f"{', '.join(disturbed) if disturbed else 'none'}.\n")
    say("samples/s is steps x batch over the window's wall time; 'from the median step' is batch / the median "
        "step time of the run (robust to bursts from other processes), median over the runs.\n")
    say("'of it data': time per step spent producing the batch: vlmtune `step_batches` (image reads + "
        "`family.encode`); TRL `datasets` row fetch (PNG decode) + its collator (chat template, processor); HF "
        "Trainer its collator (image reads + `family.encode`).\n")
    say("Process wall covers the whole subprocess: imports, tokenizer training and model build, data loading, the "
        "steps, and for vlmtune saving the base model and the final checkpoint (not inside the timed window).\n")

    # ---- loss curves
    say("### Loss curves (same init, same data order, no dropout)\n")
    marks = sorted({1, 2, 5, 10, 25, 50, args.steps} & set(range(1, args.steps + 1)))
    say("| step | " + " | ".join(LABELS[k] for k in FRAMEWORKS) + " |")
    say("|---:|" + "---:|" * len(FRAMEWORKS))
    for s in marks:
        say(f"| {s} | " + " | ".join(f"{runs[k][0]['losses'][s - 1]:.5f}" for k in FRAMEWORKS) + " |")
    say("")
    ref = runs["vlmtune"][0]["losses"]
    for k in ("trl", "hf"):
        diffs = [abs(a - b) for a, b in zip(runs[k][0]["losses"], ref, strict=True)]
        last = abs(final_loss(runs[k][0]) - final_loss(runs["vlmtune"][0]))
        say(f"- {LABELS[k]} vs vlmtune (run 1): max |loss difference| over {len(diffs)} steps {max(diffs):.2e} "
            f"(step {diffs.index(max(diffs)) + 1}), at step 1 {diffs[0]:.2e}, difference of the last-10 means "
            f"{last:.2e}.")
    rep_spread = {k: max(final_loss(r) for r in runs[k]) - min(final_loss(r) for r in runs[k]) for k in FRAMEWORKS}
    say("- Spread of the last-10 mean between repeats of the same trainer: " +
        ", ".join(f"{k} {v:.1e}" for k, v in rep_spread.items()) + ".")
    say(f"- Mean step loss over the window, for scale: {statistics.fmean(ref):.4f} (steps 1-{len(ref)}).\n")

    # ---- FLOPs and MFU
    say("## FLOPs and model-FLOPs utilisation (vlmtune)\n")
    cf, an = fl["counted_fwd"], fl["analytic_fwd"]
    an_total = sum(an.values())
    say(f"Forward FLOPs per sample, step-0 batch (padded to {fl['seq_padded']} positions, {fl['seq_real']:.1f} real; "
        f"logits only at the loss positions, as vlmtune computes them). Counted = FlopCounterMode (matmuls and "
        f"convolutions; it does not count CPU SDPA attention); analytic = 2 x weights-in-matmuls x tokens + "
        f"4 x T^2 x d per attention layer.\n")
    say("| part | counted | analytic | share of analytic |")
    say("|---|---:|---:|---:|")
    rows = [("vision tower (patch embed + 4 layers' linears)", cf["vision tower"], an["vision tower"]),
            ("vision attention scores/values (SDPA)", None, an["vision attention (sdpa)"]),
            ("projector", cf["projector"], an["projector"]),
            ("language model linears (+ LoRA)", cf["language model"], an["language model"]),
            ("language attention scores/values (SDPA)", None, an["language attention (sdpa)"]),
            ("LM head (loss positions only)", cf["LM head"], an["LM head"])]
    for name, c, a in rows:
        say(f"| {name} | {human_flops(c) if c is not None else '-'} | {human_flops(a)} | {100 * a / an_total:.1f}% |")
    say(f"| **total** | {human_flops(fl['counted_fwd_total'])} | {human_flops(an_total)} | 100% |")
    vis = an["vision tower"] + an["vision attention (sdpa)"]
    say(f"\nVision tower share of forward FLOPs: {100 * vis / an_total:.1f}% analytic, "
        f"{100 * cf['vision tower'] / fl['counted_fwd_total']:.1f}% counted (>= 1/3 required).\n")
    pk = max(peak["2048"], peak["4096"])
    sps = med["vlmtune"]["samples_s"]
    nominal = 3 * an_total * sps
    # + SDPA, which the counter misses: language attention forward + backward (~3x), vision forward only (frozen)
    executed = (fl["counted_step_total"] + 3 * an["language attention (sdpa)"] + an["vision attention (sdpa)"]) * sps
    say(f"Measured fp32 matmul peak ({peak['threads']} threads): 2048x2048 {peak['2048'] / 1e9:.1f} GFLOP/s, "
        f"4096x4096 {peak['4096'] / 1e9:.1f} GFLOP/s (best of 10 / 3); peak used: {pk / 1e9:.1f} GFLOP/s.\n")
    say("| measure | FLOPs per sample | at vlmtune's " + fmt(sps) + " samples/s | MFU |")
    say("|---|---:|---:|---:|")
    say(f"| model FLOPs: 3 x forward (analytic) | {human_flops(3 * an_total)} | {nominal / 1e9:.1f} GFLOP/s | "
        f"**{100 * nominal / pk:.1f}%** |")
    say(f"| executed: fwd+bwd counted on one step (+ SDPA analytic) | "
        f"{human_flops(executed / sps)} | {executed / 1e9:.1f} GFLOP/s | {100 * executed / pk:.1f}% |")
    say("\nThe executed count is lower than 3 x forward: with LoRA on the language model the vision tower is "
        "frozen and gets no backward pass at all, and the frozen base weights need input gradients only.\n")

    # ---- vision cache
    say(f"## vlmtune `train.vision_cache` auto vs off ({args.cache_epochs} epochs = {cache_steps} steps)\n")
    if args.cache_epochs <= 0:
        say("skipped (--cache-epochs 0)\n")
    elif cache_note:
        say(f"vision cache: not available. The config rejected `--train.vision_cache`: `{cache_note.splitlines()[0]}`"
            "\n")
    else:
        say("Both modes: LoRA as above but with `--train.freeze_projector true` (the cache is exact only when the "
            "vision tower and the projector both get no gradient; with the projector trained, auto stays off).\n")
        say("| vision_cache | loop said | samples/s (all) | epoch 1 | epochs 2+ | process wall (s) | peak RSS (MiB) "
            "| final loss | other processes (cores) |")
        say("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for mode in ("auto", "off"):
            rs = cache[mode]
            allw = statistics.median(throughput(r, args.warmup, args.batch)["samples_s"] for r in rs)
            e1 = statistics.median(throughput(r, args.warmup, args.batch, hi=spe)["samples_s"] for r in rs)
            e2 = statistics.median(throughput(r, args.warmup, args.batch, lo=spe)["samples_s"] for r in rs) \
                if cache_steps > spe else float("nan")
            said = rs[0].get("vision_cache_said", "?").removeprefix("vision cache: ")
            said = said.split(", ")[0] if said.startswith("on") else said
            wall, rss = (statistics.median(r[k] for r in rs) for k in ("wall", "rss_mib"))
            say(f"| {mode} | {said} | {fmt(allw)} | {fmt(e1)} | {fmt(e2)} | {fmt(wall)} | {fmt(rss, 0)} | "
                f"{statistics.median(final_loss(r) for r in rs):.4f} | "
                f"{statistics.median(r['other_cores'] for r in rs):.2f} |")
        say(f"\nMedians of {args.cache_repeats} runs each.\n")

    # ---- where vlmtune's time goes
    say(f"## Where vlmtune's step time goes ({phases['steps']} steps, one run)\n")
    say("| phase | ms/step | share |")
    say("|---|---:|---:|")
    covered = 0.0
    for name, sec in sorted(phases["phases"].items(), key=lambda kv: -kv[1]):
        covered += sec
        say(f"| {name} | {1000 * sec / phases['steps']:.2f} | {100 * sec / phases['total']:.1f}% |")
    rest = phases["total"] - covered
    say(f"| rest of the loop (stats, .item(), scheduler) | {1000 * rest / phases['steps']:.2f} | "
        f"{100 * rest / phases['total']:.1f}% |")
    say(f"| **total** | {1000 * phases['total'] / phases['steps']:.2f} | 100% |")
    say(f"\ncProfile of `fit` over {prof['steps']} steps ({prof['total']:.2f} s under the profiler, which inflates "
        "Python-heavy code): top functions by own time\n")
    say("| function | calls | own s | cumulative s |")
    say("|---|---:|---:|---:|")
    for r in prof["by_tottime"]:
        say(f"| `{r['fn']}` | {r['calls']} | {r['tottime']:.3f} | {r['cumtime']:.3f} |")
    say("\nand by cumulative time (call wrappers of torch.nn.Module / transformers / peft left out):\n")
    say("| function | calls | cumulative s | per step ms |")
    say("|---|---:|---:|---:|")
    shown = 0
    for r in prof["by_cumtime"]:
        if r["fn"].startswith("<") or "cProfile" in r["fn"]:
            continue
        say(f"| `{r['fn']}` | {r['calls']} | {r['cumtime']:.3f} | {1000 * r['cumtime'] / prof['steps']:.2f} |")
        shown += 1
        if shown >= args.top + 5:
            break
    say("")
    total_s = time.perf_counter() - t_all
    say(f"Benchmark wall time: {total_s / 60:.1f} min. Work directory: {work}")
    return "\n".join(out)
