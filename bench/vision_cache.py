"""Benchmark: LoRA fine-tuning over 3 epochs with and without the frozen-vision cache, on two model shapes.

    .venv/bin/python bench/vision_cache.py                 # ~10 minutes on 2 CPU cores; prints markdown tables
    .venv/bin/python bench/vision_cache.py --models llava --repeats 1

Same model, data, seed, batch and steps in both modes; one run with `train.vision_cache off`, one with `auto`, each
in a fresh `vlmtune train` process, `--repeats` times, alternating; medians are reported. The training time is read
from the run's own log (samples/s per 5 steps), so model building, data generation and the final save are not
counted. The per-step losses of the two modes must agree (asserted).

Models (random weights; the FLOP split of each is measured with torch's FlopCounterMode (bench/flops.py) and printed):
* `llava`: the built-in LLaVA-architecture model (CLIP 4 x 128 on 64x64 images, 8 px patches -> 64 image tokens
  into a Llama 2 x 128): the language model reads every patch, as in LLaVA-1.5.
* `smolvlm`: a SmolVLM-256M-shaped model scaled down (SigLIP-style 4 x 192 on 256x256 images, 16 px patches, pixel
  shuffle 4 -> 16 image tokens into a Llama 4 x 192): like SmolVLM, Idefics3 and (with its 2x2 merge) Qwen2-VL, the
  vision tower sees many more positions than the language model, and is most of the forward FLOPs.

Data: 320 synthetic fashion pictures saved as 640x480 JPEG photos (the size of COCO / VizWiz images), one question
each. LoRA r=8 on the language model (dropout 0), vision tower and projector frozen (`freeze_projector: true`, which
the cache needs), batch 16, 60 steps = 3 epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

N_IMAGES, BATCH, STEPS, LOG_EVERY = 320, 16, 60, 5

CONFIG = {
    "lora": {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.0},
    "data": {"val_split": None, "max_length": 256},
    "train": {"seed": 0, "max_steps": STEPS, "micro_batch_size": BATCH, "global_batch_size": BATCH, "lr": 2e-3,
              "freeze_projector": True, "log_every": LOG_EVERY, "eval_every": 0, "save_every": 0, "progress": False,
              "trackers": []},
    "report": False,
}


def make_photos(root: Path) -> None:
    """Synthetic fashion samples, each picture stretched to a 640x480 JPEG (quality 90)."""
    from PIL import Image

    from vlmtune.data.store import write_dataset
    from vlmtune.data.synthetic import WORLDS

    def items():
        for sample, image in WORLDS["fashion"](N_IMAGES, seed=0, size=240):
            sample.split = "train"
            sample.images = [f"images/{sample.id}.jpg"]
            yield sample, [image.resize((640, 480), Image.Resampling.BICUBIC)]

    write_dataset(root, items())


def build_smolvlm(out: Path) -> None:
    """A SmolVLM-256M-shaped model (see the module docstring), saved as an ordinary HF checkpoint."""
    from transformers import LlamaConfig, SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMVisionConfig
    from transformers.models.idefics3 import Idefics3Processor
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    from vlmtune.models import idefics3

    tok = idefics3.build_tokenizer("<|im_start|>", idefics3.END, "<|im_end|>")
    image_processor = SmolVLMImageProcessorPil(size={"longest_edge": 256}, max_image_size={"longest_edge": 256},
                                               do_image_splitting=False)
    processor = Idefics3Processor(image_processor, tok, image_seq_len=16,
                                  chat_template=idefics3.chat_template("<|im_start|>"))
    vision = SmolVLMVisionConfig(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                                 image_size=256, patch_size=16)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       tie_word_embeddings=False)
    config = SmolVLMConfig(vision_config=vision, text_config=text, scale_factor=4, tie_word_embeddings=False,
                           image_token_id=processor.image_token_id, pad_token_id=tok.pad_token_id)
    model = SmolVLMForConditionalGeneration(config).float()
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids(idefics3.END)
    model.save_pretrained(out)
    processor.save_pretrained(out)


def model_spec(name: str, work: Path) -> dict:
    if name == "llava":
        return {"family": "llava", "path": "builtin"}
    out = work / "smolvlm-model"
    if not out.is_dir():
        build_smolvlm(out)
    return {"family": "smolvlm", "path": str(out)}


def flops_split(model_cfg: dict, data: Path) -> str:
    """FLOPs of the vision tower + projector and of the whole forward, for one training sample of the data."""
    import torch
    from flops import count_flops

    from vlmtune.config import RunCfg
    from vlmtune.data.images import load_images
    from vlmtune.data.store import iter_records
    from vlmtune.models import get_family, load_model

    cfg = RunCfg.from_dict({**CONFIG, "model": model_cfg, "data": {**CONFIG["data"], "path": str(data)}})
    family = get_family(cfg.model.family)
    loaded = load_model(cfg.model)
    model = loaded.model.eval()
    sample = next(iter_records(data))
    batch = family.encode(loaded.processor, [sample], [load_images(data, sample)], "train", 256)
    inputs = {k: v for k, v in batch.inputs.items() if k != "labels"}
    wanted = {k: v for k, v in inputs.items() if k in ("pixel_values", "pixel_attention_mask")}
    with torch.no_grad():
        v = count_flops(model.model.get_image_features, **wanted).total
        f = count_flops(model, **inputs).total
    return (f"vision tower + projector {v / 1e6:.0f} MFLOP of {f / 1e6:.0f} MFLOP per training-sample forward "
            f"({100 * v / f:.0f}%), {inputs['input_ids'].shape[1]} positions in the language model")


def one_run(work: Path, model_cfg: dict, mode: str, tag: str) -> tuple[list[float], list[float]]:
    cfg = json.loads(json.dumps(CONFIG))
    cfg["model"], cfg["name"], cfg["out_dir"] = model_cfg, tag, str(work / "runs")
    cfg["data"]["path"] = str(work / "data")
    cfg["train"]["vision_cache"] = mode
    path = work / f"{tag}.json"
    path.write_text(json.dumps(cfg))
    subprocess.run([sys.executable, "-m", "vlmtune.cli", "train", "--config", str(path)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(x) for x in (work / "runs" / tag / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "samples_per_s" in r]
    return [BATCH * LOG_EVERY / r["samples_per_s"] for r in rows], [r["loss"] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["llava", "smolvlm"], choices=["llava", "smolvlm"])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    work = Path(tempfile.mkdtemp(prefix="vlmtune-cache-bench-"))
    make_photos(work / "data")
    per_epoch = N_IMAGES // BATCH // LOG_EVERY  # log windows per epoch
    for name in a.models:
        model_cfg = model_spec(name, work)
        print(f"\n### {name}: {flops_split(model_cfg, work / 'data')}\n")
        seconds: dict[str, list[list[float]]] = {"off": [], "auto": []}
        losses = {}
        for k in range(a.repeats):
            for mode in ("off", "auto"):
                windows, loss = one_run(work, model_cfg, mode, f"{name}-{mode}-{k}")
                seconds[mode].append(windows)
                losses[mode] = loss
                print(f"{name} run {k} {mode}: {STEPS * BATCH / sum(windows):.1f} samples/s", file=sys.stderr)
        for x, y in zip(losses["off"], losses["auto"], strict=True):
            assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (x, y)

        def rate(mode: str, lo: int, hi: int | None, seconds=seconds) -> float:
            return statistics.median(BATCH * LOG_EVERY * len(w[lo:hi]) / sum(w[lo:hi]) for w in seconds[mode])

        print("| vision_cache | samples/s, 3 epochs | epoch 1 | epochs 2-3 | final loss |\n|---|---:|---:|---:|---:|")
        for mode in ("off", "auto"):
            print(f"| {mode} | {rate(mode, 0, None):.1f} | {rate(mode, 0, per_epoch):.1f} | "
                  f"{rate(mode, per_epoch, None):.1f} | {losses[mode][-1]:.4f} |")
        print(f"\n{name}: speed-up with the cache over 3 epochs {rate('auto', 0, None) / rate('off', 0, None):.2f}x, "
              f"on the epochs that reuse it {rate('auto', per_epoch, None) / rate('off', per_epoch, None):.2f}x; "
              f"per-step losses equal to 1e-4 (medians of {a.repeats})")


if __name__ == "__main__":
    main()
