"""Measured peak memory of a training step, for the validation of `vlmtune plan` (tests/train/test_plan_memory.py).

    python tests/train/plan_measure.py MODEL_DIR FAMILY DTYPE MICRO_BATCH [LORA_R LORA_DROPOUT] [--mode MODE]

MODE: `lora` (the default: LoRA r/dropout on the family's targets), `full` (`lora.enabled: false` with the recipe
defaults: vision, projector and language all trained, every weight upcast to float32 by `make_trainable`),
`lora_ckpt` / `full_ckpt` (the same with `train.gradient_checkpointing`, enabled by train/build.py's own calls:
`train.trainable.enable_checkpointing` on the base model, then `make_trainable`, which removes the input-grad hooks
checkpointing put in a frozen vision tower).

Run in a fresh process: the model is built from MODEL_DIR's config (a real config with its depth cut) with random
weights, made trainable by vlmtune's `make_trainable`, a micro-batch of the plan's assumed sample (the real processor,
`plan.lengths`' assumption) encoded by the family, then `forward_losses` + backward + AdamW step under the training
loop's autocast, twice (the peak is the larger of the two steps': from the second on AdamW's states exist through
the forward and backward). What is measured is the bytes of live tensor storages (every op's outputs seen through
a TorchDispatchMode, each storage counted once and released when it is freed), not RSS: RSS also holds the Python heap,
the libraries and the allocator's cache, which a GPU's allocated-bytes counter does not. AdamW runs as
torch runs it on a GPU (foreach: one float32 temporary the size of a parameter group's trainables at the step; on a
CPU torch would loop per tensor instead). Prints one JSON line: the peak, the first step's peak, the second step's
peak per phase (forward, backward, optimizer step), the live bytes at the start (weights, buffers, inputs) and after
the second forward, and the run config it used (`cfg`, for the plan to read the same).
"""

from __future__ import annotations

import json
import sys
import weakref

import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary


class LiveBytes(TorchDispatchMode):
    """Live and peak bytes of tensor storages created by ops (and those registered with `track`)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen = WeakIdKeyDictionary()
        self.refs = []

    def track(self, t) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        st = t.untyped_storage()
        if st in self.seen:
            return
        n = st.nbytes()
        self.seen[st] = n
        self.live += n
        self.peak = max(self.peak, self.live)

        def freed(_ref, n=n):
            self.live -= n

        self.refs.append(weakref.ref(st, freed))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            self.track(t)
        return out


MODES = ("lora", "full", "lora_ckpt", "full_ckpt")


def run_config(model_dir: str, family_name: str, dtype: str, micro: int, r: int = 16, dropout: float = 0.05,
               mode: str = "lora") -> dict:
    """The run config (as a dict for RunCfg.from_dict) of one measurement."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: one of {MODES}")
    lora = {"enabled": True, "r": r, "alpha": 2 * r, "dropout": dropout} if mode.startswith("lora") \
        else {"enabled": False}
    return {"model": {"family": family_name, "path": model_dir, "dtype": dtype}, "lora": lora,
            "train": {"micro_batch_size": micro, "global_batch_size": micro,
                      "gradient_checkpointing": mode.endswith("_ckpt"),
                      "mixed_precision": "no" if dtype == "float32" else "bf16"}}


def main(model_dir: str, family_name: str, dtype: str, micro: int, r: int = 16, dropout: float = 0.05,
         mode: str = "lora") -> dict:
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vlmtune.config import RunCfg
    from vlmtune.data.sample import Sample, assistant, user
    from vlmtune.models import get_family
    from vlmtune.models.loss import forward_losses
    from vlmtune.train.optim import adamw
    from vlmtune.train.plan.lengths import ASSUMED_ANSWER, ASSUMED_IMAGE, ASSUMED_QUESTION
    from vlmtune.train.trainable import enable_checkpointing, make_trainable

    torch.manual_seed(0)
    raw = run_config(model_dir, family_name, dtype, micro, r, dropout, mode)
    cfg = RunCfg.from_dict(raw)
    family = get_family(family_name)
    model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model_dir),
                                                    dtype=getattr(torch, dtype))
    if cfg.train.gradient_checkpointing:  # train/build.py's call: on the base model, before make_trainable
        enable_checkpointing(model)
    model = make_trainable(cfg, family, model)
    model.train()
    processor = family.load_processor(model_dir)
    img = Image.new("RGB", ASSUMED_IMAGE, (127, 127, 127))
    sample = Sample(id="assumed", messages=[user(ASSUMED_QUESTION), assistant(ASSUMED_ANSWER)], images=["x"])
    batch = family.encode(processor, [sample] * micro, [[img]] * micro, "train", 1 << 30)
    inputs = dict(batch.inputs)
    labels = inputs.pop("labels")
    inputs = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in inputs.items()}
    optimizer = adamw(model, 1e-4, 0.0, betas=(0.9, 0.95))
    for group in optimizer.param_groups:  # AdamW as torch runs it on a GPU (foreach); on a CPU it defaults to a
        group["foreach"] = True           # per-tensor loop whose temporaries are two copies of the largest tensor
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else torch.autocast("cpu",
                                                                                                     enabled=False)
    tracker = LiveBytes()
    with tracker:
        for t in [*model.parameters(), *model.buffers(), *inputs.values(), labels]:
            tracker.track(t)
        start = tracker.live
        steps = []
        for _ in range(2):  # the second step is the steady state: AdamW's states exist through its forward/backward
            tracker.peak = tracker.live
            with autocast:
                sums, counts = forward_losses(model, family, inputs, labels, keep_logits=True)
            loss = sums.sum() / counts.sum()
            phases = {"forward": tracker.peak, "after_forward": tracker.live}
            tracker.peak = tracker.live
            loss.backward()
            phases["backward"], tracker.peak = tracker.peak, tracker.live
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)  # as the training loop does
            phases["step"] = tracker.peak
            steps.append(phases)
            del sums, counts, loss
    peaks = [max(v for k, v in phases.items() if k != "after_forward") for phases in steps]
    return {"peak": max(peaks), "first_step_peak": peaks[0], "phases": steps[-1], "start": start,
            "after_forward": steps[-1]["after_forward"], "tokens": int(labels.shape[-1]),
            "rows": int(labels.shape[0]), "mode": mode, "cfg": raw}


if __name__ == "__main__":
    a = sys.argv[1:]
    run_mode = "lora"
    if "--mode" in a:
        i = a.index("--mode")
        run_mode = a[i + 1]
        del a[i:i + 2]
    torch.set_num_threads(2)
    print(json.dumps(main(a[0], a[1], a[2], int(a[3]), *(int(a[4]), float(a[5])) if len(a) > 4 else (),
                          mode=run_mode)))
