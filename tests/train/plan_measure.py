"""Measured peak memory of ONE training step, for the validation of `vlmtune plan` (tests/train/test_plan_memory.py).

    python tests/train/plan_measure.py MODEL_DIR FAMILY DTYPE MICRO_BATCH [LORA_R LORA_DROPOUT]

Run in a fresh process: the model is built from MODEL_DIR's config (a real config with its depth cut) with random
weights, LoRA applied by vlmtune's `make_trainable`, a micro-batch of the plan's assumed sample (the real processor,
`plan.lengths`' assumption) encoded by the family, then `forward_losses` + backward + AdamW step under the training
loop's autocast. What is measured is the bytes of live tensor storages (every op's outputs seen through a
TorchDispatchMode, each storage counted once and released when it is freed), not RSS: RSS also holds the Python heap,
the libraries and the allocator's cache, which a GPU's allocated-bytes counter does not. Prints one JSON line.
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


def main(model_dir: str, family_name: str, dtype: str, micro: int, r: int = 16, dropout: float = 0.05) -> dict:
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vlmtune.config import RunCfg
    from vlmtune.data.sample import Sample, assistant, user
    from vlmtune.models import get_family
    from vlmtune.models.loss import forward_losses
    from vlmtune.train.optim import adamw
    from vlmtune.train.plan.lengths import ASSUMED_ANSWER, ASSUMED_IMAGE, ASSUMED_QUESTION
    from vlmtune.train.trainable import make_trainable

    torch.manual_seed(0)
    cfg = RunCfg.from_dict({"model": {"family": family_name, "path": model_dir, "dtype": dtype},
                            "lora": {"enabled": True, "r": r, "alpha": 2 * r, "dropout": dropout},
                            "train": {"micro_batch_size": micro, "global_batch_size": micro,
                                      "mixed_precision": "no" if dtype == "float32" else "bf16"}})
    family = get_family(family_name)
    model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model_dir),
                                                    dtype=getattr(torch, dtype))
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
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else torch.autocast("cpu",
                                                                                                     enabled=False)
    tracker = LiveBytes()
    with tracker:
        for t in [*model.parameters(), *model.buffers(), *inputs.values(), labels]:
            tracker.track(t)
        start = tracker.live
        with autocast:
            sums, counts = forward_losses(model, family, inputs, labels, keep_logits=True)
        loss = sums.sum() / counts.sum()
        after_forward = tracker.live
        loss.backward()
        optimizer.step()
    return {"peak": tracker.peak, "start": start, "after_forward": after_forward, "loss": float(loss),
            "tokens": int(labels.shape[-1]), "rows": int(labels.shape[0])}


if __name__ == "__main__":
    a = sys.argv[1:]
    torch.set_num_threads(2)
    print(json.dumps(main(a[0], a[1], a[2], int(a[3]), *(int(a[4]), float(a[5])) if len(a) > 4 else ())))
