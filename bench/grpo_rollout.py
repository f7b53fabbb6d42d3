"""GRPO rollout speed (issue 26): rollout tokens/s and the share of a GRPO step in generation vs training, for vlmtune's
batched, KV-cached rollout against two baselines, one script.

    .venv/bin/python bench/grpo_rollout.py --models tiny --repeats 3 --threads 1 --trl-path /work/trl-pkgs  # ~1 min
    .venv/bin/python bench/grpo_rollout.py --models qwen2_vl --repeats 1 --threads 1  # ~3.5 minutes; markdown
    .venv/bin/python bench/grpo_rollout.py --quick      # smoke test (tiny model, k 2 and 4, 4 tokens; ~15 s)

Contenders (each run in every configuration, in one fresh subprocess per model, interleaved per repeat):
(a) vlmtune: `train/grpo.rollout` itself, the code path of `train.method: grpo`: the prompt repeated k times in one
    batch, one `generate` call (KV cache on), seeded sampling; its `generate_s` is the generation time.
(b) one at a time: the same prompt encoded once (batch 1) and `generate` called k times, KV cache on.
(c) no cache: the k rows in one batch, `generate(..., use_cache=False)` (each new token re-runs the whole sequence,
    the image included).
Every contender samples with the rollout's options (temperature 1, top_p 1, top_k off, placeholder tokens
suppressed) and `min_new_tokens = max_new_tokens`, so each completion is exactly L tokens long in all three and
tokens/s compare the same work (a random model would otherwise stop at different points).

The GRPO step: after (a)'s rollout, the training forward/backward of its rows (`policy_losses`, the loop's GRPO loss,
LoRA r=16 on the family's targets made by vlmtune's `make_trainable`) and an AdamW step, timed. The step's share in
generation = generate_s / (the whole rollout call (encode, generate, rewards) + forward/backward + optimizer step).

Models: `tiny`: the built-in LLaVA-architecture model at its default BuiltinCfg (fp32, 64x64 images);
`qwen2_vl`: ../shared/real-models/Qwen__Qwen2-VL-2B-Instruct's config at real width and vocabulary, random weights,
cut to 2 language layers and 2 vision blocks, the real processor and chat template, 224x224 images (64 image
tokens), fp32 by default: `--dtype bfloat16` (or auto) gives the bf16 base with fp32 LoRA under autocast that
training uses, whose `generate` ran about 9x slower than fp32 on this CPU (BENCHMARKS.md). (c) runs on the
real-width cut at the shortest length only (its cost grows with the square of the length).

(d) with `--trl-path` (TRL installed outside the venv, as bench/real_scale.py): TRL's GRPOTrainer on the tiny
model, LoRA r=16, one prompt and k completions per step, `min_new_tokens = L`; its model's `generate` calls are timed
(wrapped) and its steps by a callback: its rollout tokens/s and generation share beside vlmtune's.
Each time is the best (minimum) of `--repeats`; the machine is shared, so the ratios between contenders measured in
the same run are the result, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO.parent / "shared" / "real-models" / "Qwen__Qwen2-VL-2B-Instruct"
CONTENDERS = ("batched", "single", "nocache")
LABELS = {"batched": "vlmtune rollout (batched, KV cache)", "single": "one at a time (KV cache)",
          "nocache": "batched, no KV cache"}


def _model(spec: dict):
    """(family, Loaded, dtype name) of the spec's model, seeded."""
    import torch

    from vlmtune.models import FAMILIES

    torch.manual_seed(spec["seed"])
    if spec["model"] == "tiny":
        from vlmtune.config import BuiltinCfg
        from vlmtune.models.builtin import build_builtin

        return FAMILIES["llava"], build_builtin(BuiltinCfg(), seed=spec["seed"]), "float32", {}
    from real_scale_workers import _cut_config, pick_dtype
    from transformers import AutoModelForImageTextToText

    from vlmtune.models.family import Loaded

    picked = pick_dtype(spec.get("dtype", "auto"))
    family = FAMILIES["qwen2_vl"]
    config = _cut_config({"config_dir": str(CONFIG), "layers": 2, "vision_depth": 2})
    model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, picked["dtype"]))
    return family, Loaded(model=model, processor=family.load_processor(str(CONFIG)), family="qwen2_vl"), \
        picked["dtype"], {"why": picked["why"]}


def _options(model, tok, t, length: int) -> dict:
    """The rollout's sampling options (train/grpo.rollout), each completion exactly `length` tokens."""
    from vlmtune.infer import stop_ids
    from vlmtune.train.grpo import placeholder_ids

    return {"do_sample": True, "num_beams": 1, "temperature": t.grpo_temperature, "top_p": t.grpo_top_p,
            "top_k": t.grpo_top_k, "max_new_tokens": length, "min_new_tokens": length,
            "suppress_tokens": sorted(placeholder_ids(model, tok) - stop_ids(model, tok)) or None}


def worker(spec: dict) -> dict:
    import torch
    from PIL import Image

    from vlmtune.config import LoraCfg, ModelCfg, RewardCfg, RunCfg, TrainCfg
    from vlmtune.data.sample import Sample, assistant, user
    from vlmtune.infer import prompt_length
    from vlmtune.models.family import autocast_for, input_dtype
    from vlmtune.models.loss import accepts_logits_to_keep, logit_prefix_of
    from vlmtune.train.batching import encode_with_videos
    from vlmtune.train.grpo import policy_losses, prompt_of, reward_functions, rollout
    from vlmtune.train.trainable import make_trainable

    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{spec['model']} {time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    family, loaded, dtype, extra = _model(spec)
    say(f"model built ({dtype})")
    cfg = RunCfg(lora=LoraCfg(enabled=True, r=16, alpha=32, dropout=0.0), model=ModelCfg(dtype=dtype),
                 train=TrainCfg(mixed_precision="bf16" if dtype == "bfloat16" else "no"))
    model = make_trainable(cfg, family, loaded.model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95))
    processor, tok = loaded.processor, loaded.processor.tokenizer
    size = spec["image_size"]
    base = loaded.model.generation_config  # peft's generate reads the base model's: every completion L tokens
    out = {"model": spec["model"], "dtype": dtype, **extra, "threads": torch.get_num_threads(),
           "params": sum(p.numel() for p in model.parameters()), "rows": []}

    def prompt(i: int):
        img = Image.new("RGB", (size, size), (40 * i % 256, 90, 200))
        img.paste(Image.new("RGB", (size // 2, size // 2), "red"), (size // 4, size // 4))
        return Sample(id=f"p{i}", images=["x.png"], messages=[user("What colour is the square in the middle?"),
                                                                assistant("red")]), [img]

    def one(k: int, length: int, seed: int, contenders) -> dict:
        t = TrainCfg(method="grpo", grpo_generations=k, grpo_max_new_tokens=length,
                     rewards=[RewardCfg(metric="anls")])
        base.min_new_tokens = length
        sample, images = prompt(seed)
        row = {"k": k, "length": length, "seed": seed}
        opts = _options(model, tok, t, length)
        if "batched" in contenders:
            tic = time.perf_counter()
            ro = rollout(model, family, processor, [sample], [images], None, reward_functions(t), t, 4096, seed)
            row["rollout_s"] = time.perf_counter() - tic
            row["batched_s"], row["batched_tokens"] = ro.generate_s, int(sum(ro.lengths)) + 0
            row["prompt_tokens"] = ro.batch.inputs["input_ids"].shape[1] - length  # the rows: prompt + completion
            model.train()
            inputs = {x: v for x, v in ro.batch.inputs.items() if x != "labels"}
            tic = time.perf_counter()
            with autocast_for(model):
                sums, counts, _ = policy_losses(model, family, inputs, ro.batch.inputs["labels"], ro, t,
                                                accepts_logits_to_keep(model), logit_prefix_of(family, model))
            (sums.sum() / counts.sum()).backward()
            row["train_s"] = time.perf_counter() - tic
            tic = time.perf_counter()
            opt.step()
            opt.zero_grad()
            row["optimizer_s"] = time.perf_counter() - tic
            row["trained_tokens"] = int(counts.sum())
            say(f"k={k} L={length}: rollout {row['rollout_s']:.2f}s, train {row['train_s']:.2f}s")
        model.eval()
        for name in [c for c in contenders if c != "batched"]:
            n = 1 if name == "single" else k
            batch = encode_with_videos(family, processor, [prompt_of(sample)] * n, [list(images)] * n, None,
                                       "generate", 4096).to(model.device, input_dtype(model))
            tokens, tic = 0, time.perf_counter()
            with torch.random.fork_rng(), torch.no_grad(), autocast_for(model):
                torch.manual_seed(seed)
                for _ in range(k // n):
                    new = model.generate(**batch.inputs, **opts, use_cache=name != "nocache")
                    tokens += new[:, prompt_length(family, batch):].numel()
            row[f"{name}_s"], row[f"{name}_tokens"] = time.perf_counter() - tic, tokens
            say(f"k={k} L={length}: {name} {row[f'{name}_s']:.2f}s")
        model.train()
        return row

    one(spec["ks"][0], spec["lengths"][0], 10_000, CONTENDERS)  # warm-up: allocators, kernels, lazy inits
    for r in range(spec["repeats"]):
        for k in spec["ks"]:
            for length in spec["lengths"]:
                nocache = spec["model"] == "tiny" or length == min(spec["lengths"])
                out["rows"].append(one(k, length, r, [c for c in CONTENDERS if c != "nocache" or nocache]))
    return out


def worker_trl(spec: dict) -> dict:
    """TRL's GRPOTrainer on the tiny model: one prompt and its k completions per step (per-device batch k,
    num_generations k), LoRA r=16 on vlmtune's targets, sampled to exactly L tokens; per step the time in the model's
    `generate` (wrapped) and the step's wall time (a callback's timestamps)."""
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from PIL import Image
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from vlmtune.config import BuiltinCfg
    from vlmtune.models import FAMILIES
    from vlmtune.models.builtin import build_builtin

    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    out = {"model": "tiny", "trl": trl.__version__, "rows": []}
    for k in spec["ks"]:
        for length in spec["lengths"]:
            loaded = build_builtin(BuiltinCfg(), seed=spec["seed"])
            gen, stamps = [], []
            plain = loaded.model.generate

            def timed(*a, _plain=plain, _gen=gen, **kw):
                tic = time.perf_counter()
                result = _plain(*a, **kw)
                _gen.append(time.perf_counter() - tic)
                return result

            class Stamp(TrainerCallback):
                def on_step_end(self, args, state, control, _stamps=stamps, **kw):
                    _stamps.append(time.perf_counter())

            loaded.model.generate = timed
            question = {"type": "text", "text": "What colour is the square in the middle?"}
            rows = [{"prompt": [{"role": "user", "content": [{"type": "image"}, question]}],
                     "image": Image.new("RGB", (64, 64), (40 * i, 90, 200))} for i in range(spec["repeats"] + 2)]
            args = GRPOConfig(output_dir=str(Path(spec["work"]) / f"trl-{k}-{length}"), per_device_train_batch_size=k,
                              num_generations=k, max_completion_length=length, max_steps=spec["repeats"] + 1,
                              logging_steps=1, use_cpu=True, report_to=[], bf16=False, top_k=0, temperature=1.0,
                              generation_kwargs={"min_new_tokens": length}, save_strategy="no", seed=spec["seed"],
                              learning_rate=1e-4, adam_beta2=0.95, disable_tqdm=True)
            lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=FAMILIES["llava"].lora_targets[0])
            trainer = GRPOTrainer(model=loaded.model,
                                  reward_funcs=lambda completions, **kw: [float(len(str(c))) for c in completions],
                                  args=args, train_dataset=Dataset.from_list(rows), processing_class=loaded.processor,
                                  peft_config=lora, callbacks=[Stamp()])
            start = time.perf_counter()
            trainer.train()
            steps = [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)]
            for r in range(1, len(steps)):  # step 0: the warm-up
                out["rows"].append({"k": k, "length": length, "trl_s": gen[r], "trl_tokens": k * length,
                                    "trl_step_s": steps[r]})
            print(f"[trl] k={k} L={length}: generate {gen}, steps {steps}", file=sys.stderr, flush=True)
    return out


def summarise(result: dict) -> list[dict]:
    """Best of the repeats per (k, length) (each time its minimum: the run least disturbed by the shared machine's
    other work): tokens/s per contender, the step's shares."""
    rows = []
    for key in sorted({(r["k"], r["length"]) for r in result["rows"]}):
        runs = [r for r in result["rows"] if (r["k"], r["length"]) == key]
        med = {x: min(r[x] for r in runs) for x in runs[0] if x not in ("k", "length", "seed")}
        for c in CONTENDERS:
            if f"{c}_s" in med:
                med[f"{c}_tok_s"] = med[f"{c}_tokens"] / med[f"{c}_s"]
        step = med["rollout_s"] + med["train_s"] + med["optimizer_s"]
        med.update(k=key[0], length=key[1], step_s=step, generate_share=med["batched_s"] / step,
                   train_share=(med["train_s"] + med["optimizer_s"]) / step)
        rows.append(med)
    return rows


def _trl_table(res: dict, ours: dict) -> str:
    mine = {(m["k"], m["length"]): m for m in summarise(ours)}
    lines = [f"**TRL {res['trl']} GRPOTrainer** on the same tiny model (LoRA r=16, one prompt and its k completions "
             "per step; generation = its model's `generate` calls; best of the steps after the first):\n",
             "| k | L | TRL tok/s | vlmtune tok/s | vlmtune vs TRL (generation) | TRL step s | vlmtune step s | "
             "TRL generation share | vlmtune generation share |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key in sorted({(r["k"], r["length"]) for r in res["rows"]}):
        runs = [r for r in res["rows"] if (r["k"], r["length"]) == key]
        gen, step = min(r["trl_s"] for r in runs), min(r["trl_step_s"] for r in runs)
        tok_s, m = runs[0]["trl_tokens"] / gen, mine[key]
        lines.append(f"| {key[0]} | {key[1]} | {tok_s:.1f} | {m['batched_tok_s']:.1f} | "
                     f"{m['batched_tok_s'] / tok_s:.2f}x | {step:.2f} | {m['step_s']:.2f} | {gen / step:.0%} | "
                     f"{m['generate_share']:.0%} |")
    return "\n".join(lines) + "\n"


def report(results: list[dict], args, wall: float) -> str:
    out = [f"```\n$ {shlex.join(['.venv/bin/python', 'bench/grpo_rollout.py', *sys.argv[1:]])}\n```\n",
           f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end; {args.repeats} repeat(s), "
           f"best of each; {wall:.0f} s wall.\n"]
    for res in results:
        if "trl" in res:
            out.append(_trl_table(res, next(r for r in results if r["model"] == "tiny" and "trl" not in r)))
            continue
        desc = ("built-in LLaVA-architecture model (default BuiltinCfg), fp32" if res["model"] == "tiny" else
                f"Qwen2-VL-2B-Instruct config at real width, 2 language layers + 2 vision blocks, {res['dtype']} "
                f"({res.get('why', '')})")
        out.append(f"**{res['model']}**: {desc}; {res['params'] / 1e6:.1f}M parameters, {res['threads']} torch "
                   f"threads.\n")
        out.append("| k | L | prompt tokens | vlmtune tok/s | one-at-a-time tok/s | no-cache tok/s | batched vs "
                   "one-at-a-time | batched vs no cache | step s | generation share | train fwd/bwd+opt share |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for m in summarise(res):
            nc = m.get("nocache_tok_s")
            vs_nc = f"{m['batched_tok_s'] / nc:.2f}x" if nc else "-"
            out.append(f"| {m['k']} | {m['length']} | {m['prompt_tokens']:.0f} | {m['batched_tok_s']:.1f} | "
                       f"{m['single_tok_s']:.1f} | {f'{nc:.1f}' if nc else '-'} | "
                       f"{m['batched_tok_s'] / m['single_tok_s']:.2f}x | "
                       f"{vs_nc} | {m['step_s']:.2f} | "
                       f"{m['generate_share']:.0%} | {m['train_share']:.0%} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, k 2 and 4, 4 tokens, 1 repeat")
    ap.add_argument("--models", default="tiny,qwen2_vl")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=("auto", "float32", "bfloat16"),
                    help="the real-width cut's base dtype (auto: bf16 where its matmul beats fp32)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads in the workers (0: torch's default); 1 on a machine shared with other work")
    ap.add_argument("--trl-path", help="TRL installed outside the venv (pip --target): also run TRL's GRPOTrainer "
                    "on the tiny model")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--worker", nargs=2, metavar=("SPEC", "RESULT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        sys.path.insert(0, str(Path(__file__).parent))
        spec = json.loads(Path(args.worker[0]).read_text())
        Path(args.worker[1]).write_text(json.dumps((worker_trl if spec.get("trl") else worker)(spec)))
        return
    ks, lengths = (4, 8), (8, 32)
    models = args.models.split(",")
    if args.quick:
        ks, lengths, args.repeats, models = (2, 4), (4,), 1, ["tiny"]
    if "qwen2_vl" in models and not CONFIG.is_dir():
        print(f"{CONFIG} is absent: the real-width run is skipped", file=sys.stderr)
        models.remove("qwen2_vl")
    tic, results = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="vlmtune-grpo-bench-") as work:
        for name in models + (["trl"] if args.trl_path and "tiny" in models else []):
            spec = {"model": "tiny" if name == "trl" else name, "trl": name == "trl", "work": work, "seed": 0,
                    "ks": list(ks), "lengths": list(lengths), "repeats": args.repeats,
                    "image_size": 224 if name == "qwen2_vl" else 64,
                    "dtype": args.dtype, "threads": args.threads}
            spec_path, result_path = Path(work) / f"{name}.spec.json", Path(work) / f"{name}.json"
            spec_path.write_text(json.dumps(spec))
            path = [str(REPO / "src"), args.trl_path, os.environ.get("PYTHONPATH")]
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(filter(None, path))}
            subprocess.run([sys.executable, __file__, "--worker", str(spec_path), str(result_path)], env=env,
                           check=True, stdout=sys.stderr)  # TRL prints its log rows: kept out of the markdown
            results.append(json.loads(result_path.read_text()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(report(results, args, time.perf_counter() - tic))


if __name__ == "__main__":
    main()
