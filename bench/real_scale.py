"""Training speed and memory at real model size (issue 23 part 2): vlmtune's `train()` vs TRL's SFTTrainer vs a plain
HF Trainer on the real Qwen2-VL-2B-Instruct config, side by side, each run a fresh subprocess.

    .venv/bin/python bench/real_scale.py                       # full: ~15-25 minutes on 2 quiet CPU cores; markdown
    .venv/bin/python bench/real_scale.py --quick               # the whole path with tiny sizes, < 2 minutes
    .venv/bin/python bench/real_scale.py --trl-path /work/trl-pkgs   # TRL installed outside the venv

TRL: `pip install 'vlmtune[bench]'` (trl==1.16.0), or keep it out of the venv with
`.venv/bin/pip install --no-deps --target /work/trl-pkgs trl==1.16.0` (its dependencies, transformers, accelerate and
datasets, are vlmtune's own) and pass `--trl-path /work/trl-pkgs`: it goes on the workers' PYTHONPATH. Without an
importable TRL the script says so and runs the other two.

What is compared (same in all three):
- model: ../shared/real-models/Qwen__Qwen2-VL-2B-Instruct's config.json at real width (hidden 1536, vision 1280)
  and real vocabulary (151,936), random weights (seeded), depth cut to `--layers` language layers and
  `--vision-depth` vision blocks; the real processor and chat template (vlmtune's `qwen2_vl` family);
- data: the synthetic fashion world drawn at `--image-size` (896x896: 1,024 image tokens per sample with the
  processor's defaults), in vlmtune's order (`Mixture.step_items`), read sequentially by TRL and the HF Trainer;
- LoRA r=16 alpha 32 dropout 0 on the family's `lora_targets`, projector and vision frozen (vlmtune's LoRA default),
  made by vlmtune's own `make_trainable` (trainables in fp32 on a bf16 base) after the same seed, so all three start
  from the same adapters; bf16 autocast where this CPU's bf16 matmul beats fp32 (printed), else fp32;
- AdamW (0.9, 0.95), no weight decay, cosine to 0 without warmup, clipping 1.0, batch `--batch`.

(a) vlmtune `train()`: logits only at the answer positions (`logits_to_keep`), vision cache off.
(b) TRL SFTTrainer with its VLM collator on prompt/completion rows, completion-only loss. Assistant-only loss needs
    `{% generation %}` markers, which Qwen2-VL's chat template does not have, so TRL cannot do it on `messages` rows.
    TRL's completion also trains the `\\n` after `<|im_end|>`; the collator is wrapped to mask that one token, so
    the three train the same tokens (prep checks the batches key by key). TRL 1.16 never holds the full (sequence x
    vocabulary) logits either: SFTTrainer patches the model with a chunked fused LM head (trl.trainer.utils
    `add_fused_lm_head`, trl/kernels/chunked_logprob.py) that returns per-token log-probabilities, entropy and top-1
    hits. But it scores only the answer positions where Triton runs (CUDA, XPU); elsewhere, on this CPU, it scores
    every position, in tiles of (up to 4,096 tokens x 32,768 vocabulary entries) with float32 softmax temporaries.
(c) HF Trainer whose collator is vlmtune's `family.encode`: the model computes full logits and its own loss.

Reported: samples/s and tokens/s over steps (warmup, steps], peak RSS (os.wait4), step losses side by side, and the
share of step time in the vision tower / language model / LM head + loss (hooks on the model, bench/real_scale_workers
`PhaseClock`), and with TRL present the LM head + loss alone at the run's shape: TRL's fused head vs full logits
(memory and time). Runs are interleaved (a, b, c, a, b, c); the harness (bench/speed_harness.py) measures other
processes' CPU use during each run and repeats disturbed runs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from speed_harness import REPO, QuietRuns, run_worker, throughput

CONTENDERS = ("vlmtune", "trl", "hf")
LABELS = {"vlmtune": "vlmtune `train()`", "trl": "TRL SFTTrainer", "hf": "HF Trainer + vlmtune encode"}
CONFIG = REPO.parent / "shared" / "real-models" / "Qwen__Qwen2-VL-2B-Instruct"
LOSS_TOLERANCE = 2e-2
"""Largest |loss difference| per step accepted as equal: bf16 autocast gives the contenders' different but
equivalent op orders (full vs kept logits, fused vs separate loss) differences of ~1e-3 relative."""


def phase_shares(run: dict, warmup: int) -> dict:
    from real_scale_workers import phase_totals

    lo, hi = run["times"][warmup - 1], run["times"][-1]
    t = phase_totals(run["events"], lo, hi)
    total = hi - lo
    parts = {"vision": t["vision"], "language": t["language fwd"] + t["language bwd"],
             "logits + loss": t["head+loss fwd"] + t["head+loss bwd"]}
    parts["other (data, optimizer, trainer)"] = total - sum(parts.values())
    return {k: v / total for k, v in parts.items()}


def report(args, prep: dict, runs: dict, quiet: QuietRuns, t_all: float, heads: dict) -> str:
    out: list[str] = []
    say = out.append
    kinds = [k for k in CONTENDERS if runs.get(k)]
    per_step = prep["per_step"]
    n = args.steps * args.batch
    tokens = sum(p[0] for p in per_step[: args.steps]) / n
    targets = sum(p[2] for p in per_step[: args.steps]) / n
    d = prep["dtype"]
    width = "NARROWED (--quick)" if args.quick else "real"
    say(f"Qwen2-VL-2B-Instruct config at {width} width (hidden {prep['hidden']}, vision {prep['vision_dim']}, "
        f"vocabulary "
        f"{prep['vocab']:,}), {args.layers} language layer(s), {args.vision_depth} vision block(s), random weights: "
        f"{prep['params'] / 1e6:.0f}M parameters ({prep['vision_params'] / 1e6:.0f}M vision). Images "
        f"{prep['image_size'][0]}x{prep['image_size'][1]}: **{prep['image_tokens']} image tokens** per sample; "
        f"{tokens:.0f} tokens per sample in all, {targets:.1f} trained. LoRA r={args.lora_r}; batch {args.batch}; "
        f"{args.steps} steps, throughput over steps {args.warmup}..{args.steps}; {args.repeats} interleaved run(s) "
        f"per contender, medians.\n")
    say(f"dtype: **{d['dtype']}** ({d['why']}; 2048^2 matmul fp32 {d['matmul_flops']['float32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {d['matmul_flops']['bfloat16'] / 1e9:.0f} GFLOP/s, {d['threads']} torch threads, "
        f"{os.cpu_count()} cores).\n")
    if prep.get("trl") is None:
        say(f"TRL: not importable ({prep.get('trl_error')}); ran vlmtune and the HF Trainer only.\n")
    else:
        chk = prep["trl_check"]
        say(f"TRL {prep['trl']}: its collator's batches equal vlmtune's `encode` (first 2 steps, key by key): " +
            ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in chk.items()) + ".\n")
    say("| trainer | samples/s | tokens/s | s/step | peak RSS (MiB) | speed vs TRL | RSS vs TRL | "
        "vision | language | logits + loss | other | other processes (cores) |")
    say("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    med: dict[str, dict] = {}
    for k in kinds:
        tps = [throughput(r, args.warmup, args.batch, per_step) for r in runs[k]]
        shares = [phase_shares(r, args.warmup) for r in runs[k]]
        med[k] = {x: statistics.median(t[x] for t in tps) for x in ("samples_s", "tokens_s", "ms_step")}
        med[k]["rss"] = statistics.median(r["rss_mib"] for r in runs[k])
        med[k]["other"] = max(r["other_cores"] for r in runs[k])
        med[k]["shares"] = {x: statistics.median(s[x] for s in shares) for x in shares[0]}
        med[k]["all"] = [t["samples_s"] for t in tps]
    ref = med.get("trl")
    for k in kinds:
        m = med[k]
        vs = f"{m['samples_s'] / ref['samples_s']:.2f}x" if ref else "-"
        rss = f"{m['rss'] / ref['rss']:.2f}x" if ref else "-"
        say(f"| {LABELS[k]} | {m['samples_s']:.3f} | {m['tokens_s']:.0f} | {m['ms_step'] / 1000:.2f} | "
            f"{m['rss']:.0f} | {vs} | {rss} | " + " | ".join(f"{100 * v:.0f}%" for v in m["shares"].values()) +
            f" | {m['other']:.2f} |")
    say("")
    say("samples/s of every run: " + "; ".join(f"{k}: " + ", ".join(f"{x:.3f}" for x in med[k]["all"])
                                              for k in kinds) + ".")
    if ref and len(runs["trl"]) == len(runs["vlmtune"]):
        paired = [v / t for v, t in zip(med["vlmtune"]["all"], med["trl"]["all"], strict=True)]
        say("vlmtune / TRL samples/s within each interleaved repeat: " + ", ".join(f"{x:.2f}x" for x in paired) + ".")
    say(f"Other processes' CPU use: the largest over a contender's runs is in the table; runs discarded as disturbed: "
        f"{', '.join(quiet.discarded) or 'none'}; kept although disturbed: {', '.join(quiet.disturbed) or 'none'}.\n")

    say("Step losses, run 1 of each:\n")
    say("| step | " + " | ".join(LABELS[k] for k in kinds) + " |")
    say("|---:|" + "---:|" * len(kinds))
    for s in range(args.steps):
        say(f"| {s + 1} | " + " | ".join(f"{runs[k][0]['losses'][s]:.4f}" for k in kinds) + " |")
    say("")
    base = runs["vlmtune"][0]["losses"]
    equal = True
    for k in kinds[1:]:
        diffs = [abs(a - b) for a, b in zip(runs[k][0]["losses"], base, strict=True)]
        ok = max(diffs) <= LOSS_TOLERANCE
        equal = equal and ok
        say(f"- {LABELS[k]} vs vlmtune: max |loss difference| {max(diffs):.2e} (step {diffs.index(max(diffs)) + 1}), "
            f"at step 1 {diffs[0]:.2e}: {'equal' if ok else 'NOT equal'} within {LOSS_TOLERANCE:g}.")
    say("")
    if ref:
        speed = med["vlmtune"]["samples_s"] / ref["samples_s"]
        memory = med["vlmtune"]["rss"] / ref["rss"]
        say(f"Expectation (issue 23): peak memory <= 0.6x TRL's: {memory:.2f}x, "
            f"**{'holds' if memory <= 0.6 else 'does not hold'}**; samples/s >= 1.2x TRL's: {speed:.2f}x, "
            f"**{'holds' if speed >= 1.2 else 'does not hold'}**; losses equal: **{'yes' if equal else 'no'}**.\n")
    say("Phases: wall time between hooks on the model (bench/real_scale_workers.py `PhaseClock`) over the timed "
        "window: vision = the vision tower's forward (frozen: no backward); language = the decoder layers forward "
        "and backward; logits + loss = everything from the final norm's output to `backward()` (LM head, loss, "
        "TRL's entropy / token accuracy), and backward down to the final norm; other = the rest of the step (data, "
        "embedding, clipping, optimizer, trainer code).\n")
    if heads:
        say("The LM head + loss alone, forward and backward, on one step's positions (random bf16 hidden states, "
            "bf16 autocast; RSS high-water mark above the process's before it):\n")
        say("| head | RSS added (MiB) | process peak RSS (MiB) | seconds |")
        say("|---|---:|---:|---:|")
        names = {"trl": "TRL's fused chunked head (every position)", "full": "full logits + float32 cross-entropy"}
        for k, h in heads.items():
            say(f"| {names[k]} | {h['after_mib'] - h['before_mib']:.0f} | {h['rss_mib']:.0f} | {h['seconds']:.1f} |")
        say("")
    say(f"Whole benchmark: {time.perf_counter() - t_all:.0f} s.")
    return "\n".join(out)


def parent_main(args) -> None:
    t_all = time.perf_counter()
    if args.quick:
        args.layers, args.vision_depth, args.image_size = 1, 1, 112
        args.n, args.steps, args.warmup, args.repeats, args.batch = 40, 3, 1, 1, 2
        args.retries, args.quiet_wait = 0, 0
    work = Path(args.work or tempfile.mkdtemp(prefix="vlmtune-real-scale-")).resolve()
    work.mkdir(parents=True, exist_ok=True)

    def note(msg: str) -> None:
        print(f"[{time.perf_counter() - t_all:6.1f}s] {msg}", file=sys.stderr, flush=True)

    script = Path(__file__).resolve()
    quiet = QuietRuns(work, args.warmup, args.quiet_cores, args.quiet_wait, args.retries, note, script,
                      args.trl_path)
    cmd = shlex.join([sys.executable, os.path.relpath(__file__, REPO), *sys.argv[1:]])
    print(f"```\n$ {cmd}\n```\n", flush=True)
    base = {"work": str(work), "data": str(work / f"fashion-{args.image_size}px"), "n": args.n, "seed": args.seed,
            "batch": args.batch, "steps": args.steps, "lr": args.lr, "lora_r": args.lora_r,
            "lora_alpha": 2 * args.lora_r, "lora_dropout": 0.0, "max_length": 4096, "image_size": args.image_size,
            "config_dir": str(args.config), "layers": args.layers, "vision_depth": args.vision_depth,
            "dtype": args.dtype, "train": {"vision_cache": "off"}, "narrow": args.quick}
    note("prep: dtype, cut model, data, TRL batch check")
    prep = run_worker("prep", base, work, "prep", 1, script, args.trl_path)
    mp = "bf16" if prep["dtype"]["dtype"] == "bfloat16" else "no"
    note(f"dtype {prep['dtype']['dtype']} ({prep['dtype']['why']}); {prep['image_tokens']} image tokens per sample")
    if prep.get("trl") is None:
        print(f"TRL not importable ({prep.get('trl_error')}): running vlmtune and the HF Trainer only", flush=True)
    kinds = [k for k in CONTENDERS if k != "trl" or prep.get("trl")]
    spec = {**base, "mixed_precision": mp,
            "model": {"family": "qwen2_vl", "path": prep["model_dir"], "dtype": prep["dtype"]["dtype"]}}
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for rep in range(args.repeats):
        for k in kinds:
            note(f"{k} run {rep + 1}/{args.repeats}: {args.steps} steps")
            runs[k].append(quiet.run(k, {**spec, "name": f"{k}-{rep}"}, f"{k}-{rep}"))
    heads = {}
    if prep.get("trl"):  # what TRL's fused head costs by itself, against full logits, at this run's shape
        positions = max(p[1] for p in prep["per_step"])
        for head in ("trl", "full"):
            note(f"LM head alone: {head}, {positions} positions")
            heads[head] = run_worker("head", {**base, "head": head, "positions": positions, "hidden": prep["hidden"],
                                              "vocab": prep["vocab"]}, work, f"head-{head}", 1, script, args.trl_path)
    print(report(args, prep, runs, quiet, t_all, heads), flush=True)
    if not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        from real_scale_workers import worker_main

        worker_main(*sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=CONFIG, help="a Qwen2-VL checkpoint folder (config + processor)")
    p.add_argument("--layers", type=int, default=2, help="language layers kept")
    p.add_argument("--vision-depth", type=int, default=2, help="vision blocks kept")
    p.add_argument("--image-size", type=int, default=896)
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the throughput window")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=60, help="synthetic fashion samples (80%% train)")
    p.add_argument("--trl-path", help="a directory with TRL in it (pip --target), put on the workers' PYTHONPATH")
    p.add_argument("--quiet-cores", type=float, default=0.3)
    p.add_argument("--quiet-wait", type=float, default=60)
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--work", help="work directory (default: a temporary one, removed at the end)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="the whole path with tiny sizes: 1 layer per tower, width 64, 112x112 images, 3 steps")
    parent_main(p.parse_args())


if __name__ == "__main__":
    main()
