"""`vlmtune export`: a run (or checkpoint) -> a plain Hugging Face model directory that needs nothing else.

    vlmtune export --model runs/my_run --out exported/           # full fine-tune: the best checkpoint's weights
    vlmtune export --model runs/my_lora_run --out exported/ --merge   # LoRA: the adapter merged into its base

The directory holds the weights, config.json, generation_config.json and every processor file (image processor,
tokenizer, chat template), so `AutoModelForImageTextToText.from_pretrained(out)` and
`AutoProcessor.from_pretrained(out)` load it with no vlmtune, no adapter and no base model beside it. An adapter
run without `--merge` is refused: its weights mean nothing without the base, and the point of an export is a
directory that stands alone (the adapter itself is already in the run's checkpoint for PEFT users).
It is written to a temporary directory and renamed into place, and never over an existing directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlmtune.io import atomic_dir
from vlmtune.runs import META, load_for_inference, resolve_model_dir

REQUIRED_FILES = ("config.json", "generation_config.json")


def export(model: str | Path, out: str | Path, merge: bool = False) -> dict:
    """Write the model at `model` (run, checkpoint or model directory) to `out` as a standalone HF directory."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; export never overwrites (choose a new --out)")
    source = resolve_model_dir(model)
    meta = json.loads((source / META).read_text()) if (source / META).is_file() else {}
    if meta.get("adapter") and not merge:
        raise ValueError(f"{source}: a LoRA adapter; pass --merge to write a standalone model (adapter merged "
                         "into its base), or use the checkpoint directory itself with PEFT")
    # a QLoRA adapter is merged into the full-precision base: merging into 4/8-bit weights would round them again
    loaded = load_for_inference(source, quantized=False)
    model_obj = loaded.model
    if meta.get("adapter"):
        model_obj = model_obj.merge_and_unload()
    with atomic_dir(out) as tmp:
        tmp.mkdir()
        model_obj.save_pretrained(tmp, safe_serialization=True)
        loaded.processor.save_pretrained(tmp)
        missing = [f for f in REQUIRED_FILES if not (tmp / f).is_file()]
        if missing:
            raise RuntimeError(f"{tmp}: export is missing {missing}")
        info = {"family": loaded.family, "exported_from": str(source), "merged": bool(meta.get("adapter")),
                "step": meta.get("step")}
        if meta.get("quantization"):
            info["trained_on_quantized_base"] = meta["quantization"]
        (tmp / META).write_text(json.dumps(info, indent=2) + "\n")
    return {"out": str(out), **info, "files": sorted(p.name for p in out.iterdir())}
