"""The workers of bench/real_scale.py, each run in a fresh subprocess (`real_scale.py --worker NAME SPEC RESULT`):
`prep` builds the cut real-config model and the data, the contenders (vlmtune, TRL, HF Trainer) train it with
their step times, losses and per-phase times measured from inside (hooks on the model: `PhaseClock`).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from speed_workers import (
    _env_setup,
    _hf_args,
    _ordered_samples,
    _record_vlmtune_steps,
    _run_trainer,
    _step_recorder,
    _timed,
    _trl_dataset,
    _vlmtune_cfg,
)


def pick_dtype(want: str) -> dict:
    """bf16 where this CPU runs it at least as fast as fp32 (a 2048^2 matmul, best of 5 each), else fp32."""
    import torch

    speed = {}
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a, b = torch.randn(2048, 2048, dtype=dt), torch.randn(2048, 2048, dtype=dt)
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - t)
        speed[name] = 2 * 2048**3 / best
    capability = torch.backends.cpu.get_cpu_capability()
    if want != "auto":
        dtype, why = want, "--dtype"
    elif speed["bfloat16"] >= speed["float32"]:
        dtype, why = "bfloat16", f"bf16 matmul {speed['bfloat16'] / speed['float32']:.1f}x fp32 ({capability})"
    else:
        dtype, why = "float32", f"bf16 matmul only {speed['bfloat16'] / speed['float32']:.2f}x fp32 ({capability})"
    return {"dtype": dtype, "why": why, "matmul_flops": speed, "capability": capability,
            "threads": torch.get_num_threads()}


def _cut_config(spec: dict):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(spec["config_dir"])
    config.text_config.num_hidden_layers = spec["layers"]
    config.text_config.layer_types = config.text_config.layer_types[: spec["layers"]]
    config.vision_config.depth = spec["vision_depth"]
    if spec.get("narrow"):  # --quick: narrow towers (the vocabulary stays: it is the tokenizer's)
        t, v = config.text_config, config.vision_config
        t.hidden_size, t.intermediate_size, t.num_attention_heads, t.num_key_value_heads = 64, 128, 4, 2
        t.rope_parameters = {**t.rope_parameters, "mrope_section": [2, 3, 3]}  # sums to head_dim / 2 = 8
        v.embed_dim, v.num_heads, v.hidden_size = 64, 4, 64
    return config


def w_prep(spec: dict) -> dict:
    """dtype; the cut model with seeded random weights saved with the real processor; data at the real image size;
    vlmtune's data order; tokens per step; whether TRL's batches equal vlmtune's."""
    import torch
    from transformers import AutoModelForImageTextToText

    from vlmtune.data.dataset import load_split, synthesize
    from vlmtune.data.images import load_images
    from vlmtune.data.mix import Mixture
    from vlmtune.models import get_family

    out = {"dtype": pick_dtype(spec["dtype"])}
    dtype = out["dtype"]["dtype"]
    family = get_family("qwen2_vl")
    base = Path(spec["work"]) / "base"
    torch.manual_seed(spec["seed"])
    config = _cut_config(spec)
    model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(base)
    processor = family.load_processor(spec["config_dir"])
    processor.save_pretrained(base)
    n_vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in n)
    out.update(params=sum(p.numel() for p in model.parameters()), vision_params=n_vision, model_dir=str(base),
               hidden=config.text_config.hidden_size, vocab=config.text_config.vocab_size,
               vision_dim=config.vision_config.embed_dim)
    del model

    root = Path(spec["data"])
    if not (root / "manifest.jsonl").is_file():
        synthesize(root, "fashion", spec["n"], seed=0, size=spec["image_size"])
    train = load_split(root, "train", False)
    mix = Mixture([("train", train, 1.0)])
    b = spec["batch"]
    items = [s for k in range(spec["steps"]) for _, s in mix.step_items(spec["seed"], k, b)]
    (Path(spec["work"]) / "order.json").write_text(json.dumps([s.id for s in items]))
    per_step = []  # (non-pad tokens incl. image tokens, padded positions, target tokens)
    for k in range(spec["steps"]):
        chunk = items[k * b : (k + 1) * b]
        batch = family.encode(processor, chunk, [load_images(root, s) for s in chunk], "train", spec["max_length"])
        per_step.append((int(batch.inputs["attention_mask"].sum()), int(batch.inputs["attention_mask"].numel()),
                         batch.n_target_tokens))
    img = load_images(root, items[0])[0]
    out.update(n_train=len(train), per_step=per_step, image_size=list(img.size),
               image_tokens=int((batch.inputs["input_ids"] == processor.image_token_id).sum()) // b)
    try:
        import trl
    except ImportError as e:
        out["trl"] = None
        out["trl_error"] = str(e)
        return out
    out["trl"] = trl.__version__
    out["trl_check"] = _trl_batch_check(family, processor, root, items[: 2 * b], b, spec["max_length"])
    return out


def _trl_collator(processor):
    """TRL's VLM collator on prompt/completion rows (completion-only loss), less one label per answer: TRL's
    completion is the template's `ANSWER<|im_end|>\\n`; vlmtune does not train the `\\n` after `<|im_end|>` (generation
    stops at `<|im_end|>`), so it is masked here to train the very same tokens."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    collator = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True)
    end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def collate(rows):
        out = collator(rows)
        labels = out["labels"]
        after_end = labels[:, :-1] == end  # [B, T-1]
        labels[:, 1:][after_end] = -100
        return out

    return collate


def _trl_batch_check(family, processor, root, items, b, max_length) -> dict:
    """Do TRL's batches (with `_trl_collator`) equal vlmtune's `family.encode`, key by key?"""
    import torch

    from vlmtune.data.images import load_images

    ds = _trl_dataset(root, items)
    collate = _trl_collator(processor)
    same: dict[str, bool] = {}
    for k in range(len(items) // b):
        chunk = items[k * b : (k + 1) * b]
        ours = family.encode(processor, chunk, [load_images(root, s) for s in chunk], "train", max_length).inputs
        theirs = collate([ds[i] for i in range(k * b, (k + 1) * b)])
        for key in sorted(set(ours) | set(theirs)):
            a, t = ours.get(key), theirs.get(key)
            ok = a is not None and t is not None and a.shape == t.shape and bool(torch.equal(a, t))
            same[key] = same.get(key, True) and ok
    return same


class PhaseClock:
    """Wall time per step phase from hooks on the model (CPU: synchronous, so the time stamps are the work):
    vision forward, language-model forward, LM head + loss forward (from the final norm's output to `backward()`:
    the logits, the loss and whatever a trainer computes from the logits meanwhile), backward through the head and
    loss (until the gradient reaches the final norm's output), backward through the language model (to the end of
    `backward()`)."""

    def __init__(self, model):
        import torch

        self.events: list[tuple[str, float]] = []
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        lm = inner.model.language_model
        stamp = self.stamp
        inner.model.visual.register_forward_pre_hook(lambda *a: stamp("vision>"))
        inner.model.visual.register_forward_hook(lambda *a: stamp("vision<"))
        lm.register_forward_pre_hook(lambda *a: stamp("language>"))
        lm.norm.register_forward_hook(lambda *a: stamp("language<"))
        lm.norm.register_full_backward_pre_hook(lambda *a: stamp("head_bwd<"))
        original = torch.Tensor.backward

        def backward(tensor, *a, **k):
            stamp("bwd>")
            try:
                return original(tensor, *a, **k)
            finally:
                stamp("bwd<")

        torch.Tensor.backward = backward

    def stamp(self, name: str) -> None:
        self.events.append((name, time.perf_counter()))


def phase_totals(events: list, lo: float, hi: float) -> dict:
    """Seconds per phase over the events between perf_counter times lo and hi."""
    # head + loss fwd: from the final norm's output to backward(), not from the LM head module's hooks: TRL's fused
    # head (trl.trainer.utils.add_fused_lm_head) multiplies by lm_head.weight without calling the module
    spans = {"vision": ("vision>", "vision<"), "language fwd": ("language>", "language<"),
             "head+loss fwd": ("language<", "bwd>"), "head+loss bwd": ("bwd>", "head_bwd<"),
             "language bwd": ("head_bwd<", "bwd<")}
    totals = dict.fromkeys(spans, 0.0)
    last: dict[str, float] = {}
    for name, t in events:
        if not lo < t <= hi:
            continue
        for phase, (start, end) in spans.items():
            if name == end and start in last:
                totals[phase] += t - last.pop(start)
        last[name] = t
    return totals


def _model_and_cfg(spec: dict):
    """The base model + LoRA exactly as vlmtune's setup makes it (seed, then load, then `make_trainable`)."""
    from accelerate.utils import set_seed

    from vlmtune.models import get_family, load_model
    from vlmtune.train.trainable import make_trainable

    cfg = _vlmtune_cfg(spec)
    set_seed(cfg.train.seed)
    family = get_family(cfg.model.family)
    loaded = load_model(cfg.model, seed=cfg.train.seed)
    return cfg, family, loaded, make_trainable(cfg, family, loaded.model)


def w_vlmtune(spec: dict) -> dict:
    t0 = time.perf_counter()
    from vlmtune.train import loop

    cfg = _vlmtune_cfg(spec)
    rec = _record_vlmtune_steps(loop, t0)
    rec["data"] = []
    loop.step_batches = _timed(loop.step_batches, rec["data"])
    clocks = []
    built = loop.build_model

    def build_model(*a, **k):
        loaded, model, meta = built(*a, **k)
        clocks.append(PhaseClock(model))
        return loaded, model, meta

    loop.build_model = build_model
    loop.save = lambda *a, **k: None  # the end-of-run checkpoint is not part of the steps
    loop.train(cfg)
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    return {**rec, "events": clocks[0].events}


def w_trl(spec: dict) -> dict:
    t0 = time.perf_counter()
    from trl import SFTConfig, SFTTrainer

    root, samples = _ordered_samples(spec)
    cfg, family, loaded, model = _model_and_cfg(spec)
    clock = PhaseClock(model)
    args = _hf_args(SFTConfig, spec, Path(spec["work"]) / "runs" / spec["name"], max_length=None,
                    completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=_trl_dataset(root, samples),
                         processing_class=loaded.processor, data_collator=_trl_collator(loaded.processor))
    return {**_run_trainer(trainer, _step_recorder(), t0, []), "events": clock.events}


def w_hf(spec: dict) -> dict:
    t0 = time.perf_counter()
    from transformers import Trainer, TrainingArguments

    from vlmtune.data.images import load_images

    root, samples = _ordered_samples(spec)
    cfg, family, loaded, model = _model_and_cfg(spec)
    clock = PhaseClock(model)

    def collate(chunk):
        return family.encode(loaded.processor, chunk, [load_images(root, s) for s in chunk], "train",
                             spec["max_length"]).inputs

    args = _hf_args(TrainingArguments, spec, Path(spec["work"]) / "runs" / spec["name"], remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=samples, data_collator=collate)
    return {**_run_trainer(trainer, _step_recorder(), t0, []), "events": clock.events}


def w_head(spec: dict) -> dict:
    """The LM head + loss alone, forward and backward, on random bf16 hidden states of one batch's shape (all its
    positions) under bf16 autocast: TRL's fused chunked head (as SFTTrainer calls it) or the full logits with
    float32 cross-entropy (what the model's own loss does). Returns the RSS high-water mark before and after."""
    import resource

    import torch

    def rss() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    torch.manual_seed(0)
    n, d, v = spec["positions"], spec["hidden"], spec["vocab"]
    weight = torch.randn(v, d, dtype=torch.bfloat16) * 0.02
    hidden = torch.randn(n, d, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    before, t = rss(), time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if spec["head"] == "trl":
            from trl.kernels import ChunkedLogProbFunction
            from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

            out = ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None,
                                               1.0, ("log_probs", "entropy", "is_top1"))
            loss = -out[0].mean()
        else:
            logits = hidden @ weight.t()  # [n, vocab]
            loss = torch.nn.functional.cross_entropy(logits.float(), targets)
    loss.backward()
    return {"before_mib": before, "after_mib": rss(), "seconds": time.perf_counter() - t}


WORKERS = {"prep": w_prep, "vlmtune": w_vlmtune, "trl": w_trl, "hf": w_hf, "head": w_head}


def worker_main(name: str, spec_path: str, result_path: str) -> None:
    _env_setup()
    spec = json.loads(Path(spec_path).read_text())
    result = WORKERS[name](spec)
    Path(result_path).write_text(json.dumps(result))
    print(f"{name}: done", file=sys.stderr)
