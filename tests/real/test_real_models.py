"""Real-width models (the checkpoint's real config.json, random weights, depth cut to 2 layers per tower) in bf16
with the real processor, through vlmtune's own training loop: a LoRA step and a full step with finite losses in which
only the intended parameters change; then `export --merge` and a reload in a fresh process with plain transformers
and no vlmtune import, which gives the logits vlmtune's own reload gives."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import tiny_run_cfg

from tests.real.conftest import real_path
from vlmtune.config import RunCfg
from vlmtune.models import FAMILIES, glm4v

# 2-layer cuts of the small checkpoints (under 0.5B parameters each): in `make test`
SMALL = ["qwen2_vl", "smolvlm", "pix2struct", "blip2"]
# 2-layer cuts of the 3B-11B checkpoints are 0.5-1.5B parameters (the embedding and head alone are 0.3-1B at real
# width): marked `large`, run by `make test-large`, which `.ci/run` runs after `make test`. Qwen3.5-0.8B's cut is
# small but slow on CPU (its linear-attention layers' torch fallback: 135 s for its two tests), so it is here too.
# the largest full steps (Gemma 3's 1.2B-parameter cut: ~19 GB of fp32 state) first, in a process that holds nothing
LARGE = ["gemma3", "gemma4", "qwen2_5_vl", "llava", "mllama", "glm4v", "qwen3_5", "qwen3_vl"]
# a full step of the Llama-3.2-11B-Vision cut trains 1.5B parameters (GLM-4.1V-9B's 1.8B: its untied 151k x 4096
# embedding and head): fp32 weights, gradients and AdamW's two moments are ~24-29 GB, over a 24 GB CI machine's
# memory; it runs where CUDA is (`make test-gpu`)
FULL_ON_GPU = {"mllama", "glm4v"}
CONFIGS = {"glm4v": glm4v.load_config}
"""Families whose real config.json needs converting (GLM-4.1V's older flat layout): how `load` reads it."""


def _params(names, full: bool = False):
    return [pytest.param(n, marks=[*([pytest.mark.large] if n in LARGE else []),
                                   *([pytest.mark.gpu] if full and n in FULL_ON_GPU else [])]) for n in names]


def _cut(config, depth: int = 2):
    """Every tower `depth` layers deep, widths untouched."""
    text = getattr(config, "text_config", None)
    if getattr(text, "num_kv_shared_layers", None) is not None:  # Gemma 4: rebuilt, its per-layer settings follow
        d = text.to_dict()
        overrides = d.pop("per_layer_config") or {}  # the global layers' head_dim
        kinds = list(dict.fromkeys(d["layer_types"]))[:depth]  # a sliding and a global layer, the global one last
        d.update(num_hidden_layers=len(kinds), layer_types=sorted(kinds, key="full_attention".__eq__),
                 num_kv_shared_layers=0,  # no later layer left to reuse another's KV
                 global_head_dim=next(iter(overrides.values()), {}).get("head_dim", d["head_dim"]))
        config.text_config = type(text)(**d)
    for sub in (config, *(getattr(config, f"{k}_config", None) for k in ("text", "vision", "audio"))):
        if sub is None:
            continue
        for attr in ("num_hidden_layers", "depth"):
            if isinstance(getattr(sub, attr, None), int):
                setattr(sub, attr, min(getattr(sub, attr), depth))
        if isinstance(getattr(sub, "layer_types", None), list):
            kinds = sub.layer_types
            sub.layer_types = kinds[:depth]
            if "linear_attention" in kinds[:depth] and "full_attention" in kinds:  # Qwen3.5: one layer of each kind
                sub.layer_types = kinds[:depth - 1] + ["full_attention"]
        if getattr(sub, "deepstack_visual_indexes", None):  # Qwen3-VL: DeepStack taps the layers that are left
            sub.deepstack_visual_indexes = list(range(min(len(sub.deepstack_visual_indexes), depth)))
        if isinstance(getattr(sub, "num_global_layers", None), int):  # Mllama's vision tower: a second stack
            sub.num_global_layers = min(sub.num_global_layers, depth)
        if isinstance(getattr(sub, "fullatt_block_indexes", None), list):
            sub.fullatt_block_indexes = [i for i in sub.fullatt_block_indexes if i < depth]
        if isinstance(getattr(sub, "intermediate_layers_indices", None), list):  # as many (the projector's width)
            sub.intermediate_layers_indices = [min(i, depth - 1) for i in sub.intermediate_layers_indices]
        if isinstance(getattr(sub, "cross_attention_layers", None), list):  # Mllama: keep one cross-attention layer
            sub.cross_attention_layers = [depth - 1]
    return config


@pytest.fixture(scope="module")
def real_model_dir(request, tmp_path_factory):
    """A checkpoint directory of the real config (cut), real processor and generation config, random bf16 weights."""
    from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig

    name = request.param  # from the tests' indirect parametrisation
    path = real_path(name)
    out = tmp_path_factory.mktemp(name)
    torch.manual_seed(0)
    config = _cut(CONFIGS.get(name, AutoConfig.from_pretrained)(path))
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    try:
        model.generation_config = GenerationConfig.from_pretrained(path)
    except OSError:
        pass
    model.save_pretrained(out)
    FAMILIES[name].load_processor(path).save_pretrained(out)
    del model
    yield name, out
    shutil.rmtree(out, ignore_errors=True)  # 1-4 GB each: one family's at a time on disk, not all of `make test-large`


def _run(tmp_path, data, base, name: str, lora: bool):
    batch = 1 if name in LARGE else 2
    from vlmtune.train.loop import fit, setup

    cfg = RunCfg.from_dict(tiny_run_cfg(
        tmp_path / ("lora" if lora else "full"), data, model={"family": name, "path": str(base), "dtype": "bfloat16"},
        data={"max_length": 4096, "val_split": None}, lora={"enabled": lora, "r": 4, "dropout": 0.0},
        train={"max_steps": 1, "micro_batch_size": batch, "global_batch_size": batch, "lr": 1e-3, "warmup_steps": 0,
               "eval_every": 0, "save_every": 1, "mixed_precision": "bf16", "freeze_vision": not lora,
               "freeze_projector": lora}))
    state = setup(cfg)
    model = state.accelerator.unwrap_model(state.model)
    # copies in each parameter's own dtype (a float32 copy of a 2B-parameter bf16 cut alone is 8 GB)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(state)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach().to(before[n].dtype), before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    losses = [r["loss"] for r in map(json.loads, (cfg.run_dir / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    return cfg, losses, changed, trainable, model


FRESH = """
import json, sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText
model = AutoModelForImageTextToText.from_pretrained(sys.argv[1]).eval()
inputs = load_file(sys.argv[2])
with torch.no_grad():
    logits = model(**inputs).logits.float()
torch.save(logits, sys.argv[3])
print(json.dumps({"vlmtune": "vlmtune" in sys.modules, "dtype": str(model.dtype)}))
"""


@pytest.mark.parametrize("real_model_dir", _params(SMALL + LARGE, full=True), indirect=True)
def test_full_step_trains_language_and_projector_only(real_model_dir, tmp_path, fashion_dir):
    name, base = real_model_dir
    family = FAMILIES[name]
    _, losses, changed, trainable, _ = _run(tmp_path, fashion_dir, base, name, lora=False)
    assert losses and all(map(torch.isfinite, torch.tensor(losses)))
    assert changed and changed <= trainable, sorted(changed - trainable)[:3]
    vision = tuple(family.freeze_groups["vision"])
    assert not any(n.startswith(vision) for n in changed), "freeze_vision: the vision tower stays as it was"
    shutil.rmtree(tmp_path, ignore_errors=True)  # GBs of real-width checkpoints: not kept by pytest


@pytest.mark.parametrize("real_model_dir", _params(SMALL + LARGE), indirect=True)
def test_lora_step_then_export_reloads_without_vlmtune(real_model_dir, tmp_path, fashion_dir):
    from safetensors.torch import save_file

    from vlmtune.data.images import load_images
    from vlmtune.data.store import read_samples
    from vlmtune.export import export
    from vlmtune.models.family import input_dtype
    from vlmtune.runs import load_for_inference

    name, base = real_model_dir
    family = FAMILIES[name]
    cfg, losses, changed, trainable, model = _run(tmp_path, fashion_dir, base, name, lora=True)
    assert losses and all(map(torch.isfinite, torch.tensor(losses)))
    assert changed and changed <= trainable and all("lora_" in n for n in changed), sorted(changed - trainable)[:3]
    del model  # the trained model's GBs, before the export and two reloads
    gc.collect()

    out = tmp_path / "exported"
    export(cfg.run_dir, out, merge=True)
    loaded = load_for_inference(cfg.run_dir, device="cpu")
    samples, _ = read_samples(fashion_dir, split="val")
    n = 1 if name in LARGE else 2
    batch = family.encode(loaded.processor, samples[:n], [load_images(fashion_dir, s) for s in samples[:n]], "train",
                          4096)
    batch = batch.to("cpu", input_dtype(loaded.model))  # as the Predictor passes them: floating inputs in bf16
    # labels stay: an encoder-decoder (Pix2Struct) builds its decoder inputs from them
    inputs = {k: v for k, v in batch.inputs.items() if isinstance(v, torch.Tensor)}
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(tmp_path / "inputs.safetensors"))
    with torch.no_grad():
        ours = loaded.model(**inputs).logits.float()  # the adapter applied at run time
        del loaded
        exported = load_for_inference(out, device="cpu").model(**inputs).logits.float()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", FRESH, str(out), str(tmp_path / "inputs.safetensors"),
                           str(tmp_path / "logits.pt")], capture_output=True, text=True, env=env, timeout=900,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert not info["vlmtune"] and info["dtype"] == "torch.bfloat16"
    theirs = torch.load(tmp_path / "logits.pt", weights_only=True)
    assert torch.equal(theirs, exported), "plain transformers and vlmtune read the export alike"
    # merged weights (W + BA rounded once to bf16) against the adapter applied at run time: bf16 rounding only, a
    # few bf16 steps (2**-8 relative) at the logits' scale
    keep, tolerance = torch.ones(theirs.shape[:-1], dtype=torch.bool), 2 ** -6
    if name == "gemma4":
        # Gemma 4 attends with scale 1 over RMS-normed queries and keys: at random weights its attention logits have
        # a std of ~sqrt(head_dim) = 16, so bf16 noise moves the attention (among a plain image's near-identical
        # tokens it flips the key attended). Measured here: text positions agree 100% in argmax with a mean |diff|
        # of 4.2% of the mean |logit|, the (never labelled) image positions 89%. The text positions are compared,
        # within 2**-4; the merge itself is exact in float32 (tests/models/test_gemma4.py).
        keep, tolerance = inputs["mm_token_type_ids"] == 0, 2 ** -4
    assert (theirs.argmax(-1) == ours.argmax(-1))[keep].float().mean() > 0.95
    assert (theirs - ours)[keep].abs().mean() < tolerance * ours[keep].abs().mean()
    shutil.rmtree(tmp_path, ignore_errors=True)  # GBs of real-width checkpoints and exports: not kept by pytest


@pytest.mark.parametrize("real_model_dir", _params(["qwen2_vl", "qwen2_5_vl", "gemma3"]), indirect=True)
def test_a_packed_row_gives_each_sample_its_padded_loss_in_bf16(real_model_dir):
    """`train.packing` at real width in bf16 with the real processor: samples with images of different sizes, two
    images and none in one row give each sample its padded loss, to bf16 rounding; with the samples of the row able
    to see each other (one sequence) the samples after the first get other losses, well beyond that rounding."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    from vlmtune.data.sample import Sample, assistant, user
    from vlmtune.models.loss import forward_losses
    from vlmtune.train.collate import pack

    name, base = real_model_dir
    family = FAMILIES[name]
    processor = family.load_processor(str(base))
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.bfloat16).eval()
    noise = torch.Generator().manual_seed(0)

    def image(width, height):
        return Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=noise, dtype=torch.uint8).numpy())

    samples = [Sample(id="a", messages=[user("What colour is it?"), assistant("red")], images=["a"]),
               Sample(id="b", messages=[user("Describe both.", 2), assistant("two squares, the second one wider")],
                      images=["b", "c"]),
               Sample(id="t", messages=[user("Say fine.", 0), assistant("fine")], images=[]),
               Sample(id="d", messages=[user("And this one?"), assistant("a tall blue shape")], images=["d"])]
    images = [[image(224, 224)], [image(112, 168), image(336, 112)], [], [image(140, 280)]]
    batch = family.encode(processor, samples, images, "train", 4096).to("cpu", torch.bfloat16)

    def losses(b):
        inputs = dict(b.inputs)
        with torch.no_grad():
            sums, counts = forward_losses(model, family, inputs, inputs.pop("labels"), True, 0, b.segments)
        return sums / counts

    padded = losses(batch)
    packed = pack(batch, family, model)
    got = losses(packed)
    print(f"padded {padded.tolist()} packed {got.tolist()}")
    torch.testing.assert_close(got, padded, rtol=2e-2, atol=2e-2)
    # the row as one sequence: Qwen without the text positions row, Gemma 3 without its masks and positions
    one = {"position_ids": packed.inputs["position_ids"][1:]} if name != "gemma3" else {"attention_mask": None,
                                                                                     "position_ids": None}
    leaky = type(packed)(dict(packed.inputs, **one), packed.ids, packed.n_target_tokens, packed.segments)
    gap = (losses(leaky) - padded).abs()
    print(f"leaky gap {gap.tolist()}")
    assert (gap[1:] > 5 * (got - padded).abs().max() + 1e-3).all()
