"""The torch side of the GPU runbook (bench/gpu/runbook.py): each function runs in the fresh process run.sh starts
for one item, and returns a JSON-able dict that runbook.py writes as the item's result.

- `make_base`: a checkpoint directory of a real config (../shared/real-models) with random bf16 weights, cut to the
  runbook's depth (and, in dry mode, width), and the family's real processor;
- `train_vlmtune`: a few steps of vlmtune's own loop (`vlmtune.train.loop.setup` / `fit`) on a RunCfg YAML, timing
  each optimizer step (its `log` call, after the loss's `.cpu()`, which synchronises CUDA), counting the tokens of
  each step's batches, the FLOPs of step 0 (FlopCounterMode) and the peak memory;
- `train_trl`: TRL's SFTTrainer on the same base, data, LoRA, batch and steps.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from pathlib import Path

import torch

from vlmtune.config import RunCfg

CARD_PEAK_BF16 = {
    # dense bf16 tensor-core peak (no sparsity), FLOP/s, from NVIDIA's data sheets: H100 (SXM5 / PCIe) and H200
    # "NVIDIA H100 Tensor Core GPU" datasheet (1,979 / 1,513 TFLOPS are with sparsity: halved here); H200 datasheet
    # (same GH100 die and clocks as H100 SXM: 989); A100 datasheet (312, 624 with sparsity).
    "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H200": 989e12, "A100": 312e12,
}


def card_peak(name: str) -> tuple[float | None, str]:
    """(bf16 dense peak FLOP/s, the key matched) of a `torch.cuda.get_device_name()`; (None, reason) if unknown."""
    for key in sorted(CARD_PEAK_BF16, key=len, reverse=True):  # the longest key first: "H100 PCIe" before "H100"
        if all(part in name for part in key.split()):
            return CARD_PEAK_BF16[key], key
    if "H100" in name:  # an H100 name that says neither SXM nor PCIe: NVIDIA names the SXM part "H100 80GB HBM3"
        return CARD_PEAK_BF16["H100 SXM"], "H100 SXM (assumed: the name says neither SXM nor PCIe)"
    return None, f"no bf16 peak known for {name!r} (bench/gpu/workers.py CARD_PEAK_BF16)"


def cut(config, depth: int | None, max_hidden: int | None):
    """Every tower at most `depth` layers deep (None: full depth); where `max_hidden` is set, towers wider than it
    narrowed to fewer heads of the same head size (so rotary sections still fit), intermediate sizes 2x the width."""
    subs = [s for s in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None))
            if s is not None]
    for sub in subs:
        if depth is not None:
            for attr in ("num_hidden_layers", "depth"):
                if isinstance(getattr(sub, attr, None), int):
                    setattr(sub, attr, min(getattr(sub, attr), depth))
            if isinstance(getattr(sub, "layer_types", None), list):
                sub.layer_types = sub.layer_types[:depth]
            if isinstance(getattr(sub, "fullatt_block_indexes", None), list):
                sub.fullatt_block_indexes = [i for i in sub.fullatt_block_indexes if i < depth]
            if isinstance(getattr(sub, "max_window_layers", None), int):
                sub.max_window_layers = min(sub.max_window_layers, depth)
        if max_hidden and sub is not config and getattr(sub, "hidden_size", 0) > max_hidden:
            heads_attr = "num_attention_heads" if hasattr(sub, "num_attention_heads") else "num_heads"
            heads = getattr(sub, heads_attr)
            head_dim = getattr(sub, "head_dim", None) or sub.hidden_size // heads
            new_heads = max(1, max_hidden // head_dim)
            setattr(sub, heads_attr, new_heads)
            if getattr(sub, "head_dim", None):
                sub.head_dim = head_dim
            kv = getattr(sub, "num_key_value_heads", None)
            if isinstance(kv, int):  # the largest divisor of the new head count not above the old kv count
                sub.num_key_value_heads = max(d for d in range(1, new_heads + 1) if new_heads % d == 0 and d <= kv)
            sub.hidden_size = new_heads * head_dim
            if isinstance(getattr(sub, "intermediate_size", None), int):
                sub.intermediate_size = 2 * sub.hidden_size
    text = getattr(config, "text_config", None)
    vision = getattr(config, "vision_config", None)
    if text is not None and vision is not None and hasattr(vision, "out_hidden_size"):  # Qwen's merger output
        vision.out_hidden_size = text.hidden_size
    return config


def make_base(spec: dict) -> dict:
    """The random-weight checkpoint of one model: generated on the GPU when there is one (seconds for 7B), saved."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vlmtune.models import FAMILIES

    out = Path(spec["out"])
    torch.manual_seed(0)
    config = cut(AutoConfig.from_pretrained(spec["real"]), spec["depth"], spec["max_hidden"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t = time.perf_counter()
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    FAMILIES[spec["family"]].load_processor(spec["real"]).save_pretrained(out)
    text = getattr(config, "text_config", config)
    vision = getattr(config, "vision_config", None)
    return {"params": sum(p.numel() for p in model.parameters()), "seconds": time.perf_counter() - t,
            "text_layers": text.num_hidden_layers, "text_hidden": text.hidden_size,
            "vision_layers": getattr(vision, "num_hidden_layers", getattr(vision, "depth", None)),
            "vision_hidden": getattr(vision, "hidden_size", None)}


def _batch_tokens(batch) -> int:
    """Positions the model computes, padding left out: the attention mask's ones, or a packed row's positions."""
    mask = batch.inputs.get("attention_mask")
    if mask is not None:
        return int(mask.sum())
    return int(batch.segments.numel()) if batch.segments is not None else int(batch.inputs["input_ids"].numel())


def _memory(out: dict) -> dict:
    if torch.cuda.is_available():
        out["peak_allocated"] = torch.cuda.max_memory_allocated()
        out["peak_reserved"] = torch.cuda.max_memory_reserved()
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return out


def _device() -> dict:
    import transformers

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak, key = card_peak(name)
        return {"device": name, "peak_flops": peak, "peak_key": key, "cuda": torch.version.cuda,
                "torch": torch.__version__, "transformers": transformers.__version__}
    return {"device": "CPU", "peak_flops": None, "peak_key": "CPU: no bf16 dense peak",
            "cuda": None, "torch": torch.__version__, "transformers": transformers.__version__}


def train_vlmtune(spec: dict) -> dict:
    """`spec["steps"]` steps of vlmtune's loop on the RunCfg at `spec["config"]`: end-of-step times, tokens per step,
    losses, step 0's FLOPs (forward, backward and optimizer, counted by FlopCounterMode), peak memory."""
    from torch.utils.flop_counter import FlopCounterMode

    from vlmtune.train import loop

    cfg = RunCfg.from_file(spec["config"])
    rec: dict = {"times": [], "tokens": [], "losses": [], "flops_step0": None, "tokens_step0": None}
    counter: list = []
    step_batches, log = loop.step_batches, loop.log

    def counted_step_batches(state, step, rank, accum):
        chunks, batches, weights = step_batches(state, step, rank, accum)
        rec["tokens"].append(sum(_batch_tokens(b) for b in batches))
        if step == 0 and spec.get("count_flops", True):  # ends in the step's log call below
            counter.append(FlopCounterMode(display=False))
            counter[0].__enter__()
        return chunks, batches, weights

    def timed_log(state, row):
        rec["times"].append(time.perf_counter())  # the step's loss went .cpu() before this: CUDA is synchronised
        rec["losses"].append(row["loss"])
        if counter and rec["flops_step0"] is None:
            counter[0].__exit__(None, None, None)
            rec["flops_step0"], rec["tokens_step0"] = counter[0].get_total_flops(), rec["tokens"][0]
        log(state, row)

    loop.step_batches, loop.log = counted_step_batches, timed_log
    loop.save = lambda *a, **k: None  # the end-of-run checkpoint is not part of what is measured
    t = time.perf_counter()
    state = loop.setup(cfg)
    rec["setup_s"] = time.perf_counter() - t
    rec["vision_cache"] = state.vision_cache is not None
    rec["fit_start"] = time.perf_counter()
    loop.fit(state)
    return _memory({**rec, **_device()})


def train_trl(spec: dict) -> dict:
    """TRL's SFTTrainer on the vlmtune run's model, data, LoRA (same targets; projector frozen, as in the vlmtune
    row), batch, steps and learning rate: images + conversational prompt/completion rows (completion-only loss)."""
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from vlmtune.data.dataset import load_split
    from vlmtune.data.sample import message_text
    from vlmtune.models import get_family

    cfg = RunCfg.from_file(spec["config"])
    family = get_family(cfg.model.family)
    loaded = family.load(cfg.model)
    targets = list(cfg.lora.targets or family.lora_targets)
    model = get_peft_model(loaded.model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                    lora_dropout=cfg.lora.dropout,
                                                    target_modules=targets[0] if len(targets) == 1 else targets))
    root = Path(cfg.data.path)
    samples = load_split(root, "train", False)
    need = cfg.train.max_steps * cfg.train.micro_batch_size
    samples = (samples * math.ceil(need / len(samples)))[:need]
    ds = datasets.Dataset.from_dict({
        "images": [[str(root / s.images[0])] for s in samples],
        "prompt": [[{"role": "user", "content": message_text(s.messages[0])}] for s in samples],
        "completion": [[{"role": "assistant", "content": message_text(s.messages[1])}] for s in samples]})
    ds = ds.cast_column("images", (getattr(datasets, "List", None) or datasets.Sequence)(datasets.Image()))
    cuda = torch.cuda.is_available()
    args = SFTConfig(output_dir=str(Path(spec["work"]) / "trl-out"),
                     per_device_train_batch_size=cfg.train.micro_batch_size, gradient_accumulation_steps=1,
                     max_steps=cfg.train.max_steps, learning_rate=cfg.train.lr,
                     lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=cfg.train.grad_clip,
                     logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", use_cpu=not cuda,
                     bf16=cuda, seed=cfg.train.seed, dataloader_num_workers=0, disable_tqdm=True, max_length=None,
                     completion_only_loss=True, gradient_checkpointing=cfg.train.gradient_checkpointing)
    rec: dict = {"times": [], "tokens": [], "losses": []}

    class Recorder(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            rec["times"].append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                rec["losses"].append(float(logs["loss"]))

    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=loaded.processor)
    collate = trainer.data_collator

    def counting_collator(rows):
        batch = collate(rows)
        rec["tokens"].append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting_collator
    trainer.add_callback(Recorder())
    rec["fit_start"] = time.perf_counter()
    trainer.train()
    import trl

    return _memory({**rec, **_device(), "trl": trl.__version__})


WORKERS = {"base": make_base, "vlmtune": train_vlmtune, "trl": train_trl}


def main(kind: str, spec: dict) -> dict:
    print(f"worker {kind}: torch {torch.__version__}, cuda {torch.cuda.is_available()}", file=sys.stderr)
    return WORKERS[kind](spec)
