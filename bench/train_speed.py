"""Training speed, side by side: vlmtune's loop vs TRL's SFTTrainer vs a plain HF Trainer, one script.

    .venv/bin/python bench/train_speed.py              # full size: ~13 minutes on 2 quiet CPU cores; markdown
    .venv/bin/python bench/train_speed.py --quick      # smoke test (~2 minutes): tiny data, few steps, 1 repeat

Needs `trl` (`pip install 'vlmtune[bench]'`, or `.venv/bin/pip install trl==1.16.0`).

Same model, data, LoRA, batch, steps, learning rate, schedule, optimizer, clipping and seed in all three:
- model: the built-in LLaVA-architecture model at its default BuiltinCfg (CLIP 4x128 on 64x64 images, patch 8 ->
  64 image tokens; Llama 2x128), random weights (seeded); the FLOP split (vision tower vs the rest) is printed;
- data: the synthetic fashion world (`synthesize`), train split, in exactly the order vlmtune draws it
  (`Mixture.step_items(seed, step, batch)`); TRL and the HF Trainer read that list with a sequential sampler;
- LoRA r=8, alpha 16, dropout 0 (so that no random numbers are drawn while training and the three loss curves
  can be compared step by step) on the family's `lora_targets` (the language model's linears), projector trained
  in full (`modules_to_save`; vlmtune with `train.freeze_projector: false`, since issue 19 its
  LoRA default freezes it); the adapters start from the same random init;
- AdamW (0.9, 0.95), weight decay 0, cosine to 0 without warmup, gradient clipping 1.0, fp32, batch 8.

(a) vlmtune: `train(RunCfg)` with eval off (no val split), save_every 0 (one checkpoint, after the last step,
    outside the timed window), report false, trackers [], progress false, log_every 1.
(b) TRL SFTTrainer on `images` + conversational `prompt`/`completion` rows (completion-only loss: the answer and
    `</s>`, the tokens vlmtune trains); the prep step checks that TRL's collator gives bit-identical batches.
(c) a plain HF Trainer whose collator is vlmtune's `family.encode` (the same tensors by construction).

Every run is a fresh subprocess (the parent imports no torch); peak RSS comes from os.wait4. Throughput is over
steps (warmup, steps], from per-step timestamps taken after each optimizer step (vlmtune: its per-step log call;
HF/TRL: a TrainerCallback's on_step_end); all three log every step. Tables give medians of `--repeats` runs,
interleaved (a, b, c, a, b, c, ...). On a shared machine other processes' CPU use is measured during each run's
timed window (/proc/stat minus the run's own /proc/<pid>/stat): a run waits for a quiet machine and is repeated
when disturbed (with 2 cores, one busy neighbour makes torch's 2 threads several times slower).

Also: vlmtune with `--train.vision_cache auto` vs `off` over 3 epochs (if the config rejects the option: "vision
cache: not available"), the FLOP split and model-FLOPs utilisation against this CPU's measured fp32 matmul peak, and
where vlmtune's step time goes (wrapped phases, and cProfile of `fit`).

The parts: bench/speed_workers.py (what each subprocess measures, from inside), bench/speed_harness.py (running
them on a quiet machine, throughput), bench/flops.py (the FLOP counter, shared with bench/vision_cache.py),
bench/speed_report.py (the markdown).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from speed_harness import QuietRuns, run_worker
from speed_report import FRAMEWORKS, report
from speed_workers import REPO, worker_main


def parent_main(args) -> None:
    t_all = time.perf_counter()
    if args.quick:
        args.n, args.steps, args.repeats, args.warmup = min(args.n, 400), min(args.steps, 20), 1, min(args.warmup, 4)
        args.cache_repeats, args.profile_steps = 1, min(args.profile_steps, 10)
    work = Path(args.work or tempfile.mkdtemp(prefix="vlmtune-train-speed-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve() if args.data else work / f"fashion-n{args.n}-seed0"
    base = {"work": str(work), "data": str(data), "n": args.n, "seed": args.seed, "batch": args.batch,
            "steps": args.steps, "lr": args.lr, "lora_r": 8, "lora_alpha": 16, "lora_dropout": args.lora_dropout,
            "builtin": {}, "train": {"freeze_projector": False}}  # the projector trained, as TRL's and HF's workers do

    def note(msg: str) -> None:
        print(f"[{time.perf_counter() - t_all:6.1f}s] {msg}", file=sys.stderr, flush=True)

    cmd = shlex.join([os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable,
                      os.path.relpath(__file__, REPO), *sys.argv[1:]])
    print(f"```\n$ {cmd}\n```\n", flush=True)

    quiet = QuietRuns(work, args.warmup, args.quiet_cores, args.quiet_wait, args.retries, note)
    timed_run = quiet.run
    discarded, disturbed = quiet.discarded, quiet.disturbed

    # ---- prep: data, vlmtune's order, tokens per step, TRL batch check
    note("prep: synthesize data, fix the order, check TRL's batches")
    prep0 = run_worker("prep", {**base, "order_steps": args.steps}, work, "prep")
    spe = -(-prep0["n_train"] // args.batch)  # steps per epoch
    cache_steps = args.cache_epochs * spe
    per_step = prep0["per_step"]
    note("peak: fp32 matmul")
    peak = timed_run("peak", base, "peak")
    note("flops: FlopCounterMode + analytic")
    fl = run_worker("flops", base, work, "flops")

    # ---- the three frameworks, interleaved
    runs: dict[str, list[dict]] = {k: [] for k in FRAMEWORKS}
    for rep in range(args.repeats):
        for kind in FRAMEWORKS:
            note(f"{kind} run {rep + 1}/{args.repeats}: {args.steps} steps")
            runs[kind].append(timed_run(kind, {**base, "name": f"{kind}-{rep}"}, f"{kind}-{rep}"))

    # ---- vision cache: auto vs off over N epochs
    cache: dict[str, list[dict]] = {"auto": [], "off": []}
    cache_note = None
    if args.cache_epochs > 0:
        for rep in range(args.cache_repeats):
            for mode in ("auto", "off"):
                note(f"vision cache {mode} run {rep + 1}/{args.cache_repeats}: {cache_steps} steps")
                try:  # the cache is exact only with the projector frozen too: both modes freeze it
                    r = timed_run("vlmtune", {**base, "steps": cache_steps, "name": f"cache-{mode}-{rep}",
                                              "overrides": ["--train.freeze_projector", "true",
                                                            "--train.vision_cache", mode]}, f"cache-{mode}-{rep}")
                except RuntimeError as e:  # the option exists but the run failed: say so, go on with the rest
                    r = {"unavailable": f"run failed: {str(e).splitlines()[0]}"}
                if "unavailable" in r:
                    cache_note = r["unavailable"].split("; known:")[0]
                    break
                cache[mode].append(r)
            if cache_note:
                break
        if cache_note:
            print(f"vision cache: not available ({cache_note.splitlines()[0]})", flush=True)
            note("vision cache: not available; continuing")

    # ---- where vlmtune's time goes
    note(f"phases: {args.profile_steps} steps")
    phases = timed_run("phases", {**base, "steps": args.profile_steps, "name": "phases"}, "phases")
    note(f"cProfile: {args.profile_steps} steps")
    prof = timed_run("cprofile", {**base, "steps": args.profile_steps, "name": "cprofile", "top": args.top},
                     "cprofile")

    print(report(args, {"flops": fl, "prep": prep0, "per_step": per_step, "peak": peak, "runs": runs, "cache": cache,
                        "cache_note": cache_note, "cache_steps": cache_steps, "steps_per_epoch": spe,
                        "phases": phases, "cprofile": prof, "discarded": discarded, "disturbed": disturbed,
                        "t_all": t_all, "work": work}), flush=True)
    if not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)



def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker_main(*sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the throughput window")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--n", type=int, default=3000, help="synthetic fashion samples (80%% train)")
    p.add_argument("--data", help="an existing synthetic dataset directory (default: synthesized in --work)")
    p.add_argument("--cache-epochs", type=int, default=3, help="epochs of the vision_cache auto/off runs (0: skip)")
    p.add_argument("--cache-repeats", type=int, default=3)
    p.add_argument("--profile-steps", type=int, default=30)
    p.add_argument("--top", type=int, default=15, help="rows of the cProfile tables")
    p.add_argument("--quiet-cores", type=float, default=0.3,
                   help="start a timed run only when other processes use fewer cores than this")
    p.add_argument("--quiet-wait", type=float, default=120, help="longest wait for that, seconds, per run")
    p.add_argument("--retries", type=int, default=2,
                   help="repeat a run up to this many times when other processes used more than --quiet-cores "
                        "during its timed window")
    p.add_argument("--work", help="work directory (default: a temporary one, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    p.add_argument("--quick", action="store_true", help="smoke test: 400 samples, 20 steps, 1 repeat")
    parent_main(p.parse_args())


if __name__ == "__main__":
    main()
