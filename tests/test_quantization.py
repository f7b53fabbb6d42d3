"""QLoRA: a 4/8-bit base through bitsandbytes (its CPU backend here; the `gpu`-marked test takes a real CUDA step).

Only the language model is quantised; the vision tower, projector and LM head keep full precision, for every family.
An adapter trained on a quantised base is evaluated on the same quantised base, and exported merged into the full-
precision base."""

from __future__ import annotations

import json

import bitsandbytes as bnb  # a dev dependency: `make test` installs it, and its absence must fail
import pytest
import torch
from helpers import TINY_BUILTIN, save_builtin, tiny_run_cfg

from vlmtune.config import ModelCfg, QuantCfg, RunCfg
from vlmtune.models import FAMILIES
from vlmtune.models.family import freeze_group_of

# bitsandbytes' CPU 4-bit inference path (taken on CPUs with AVX512-BF16) repacks each weight in blocks of 64 input
# features x 32 output features; the 32-wide tiny decoder has layers it cannot pack. Real models' widths are multiples
# of 64, so the QLoRA model here is 64 wide too: the same kernel path a real checkpoint takes on such a CPU.
QLORA_BUILTIN = {**TINY_BUILTIN, "text_dim": 64}


def _quantized_linears(model) -> tuple[set[str], set[str]]:
    """(names of 4/8-bit linear layers, names of full-precision nn.Linear layers)."""
    quant, full = set(), set()
    for name, mod in model.named_modules():
        if isinstance(mod, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            quant.add(name)
        elif isinstance(mod, torch.nn.Linear):
            full.add(name)
    return quant, full


@pytest.fixture(scope="module")
def saved_builtin(tmp_path_factory):
    return save_builtin(tmp_path_factory.mktemp("base"), **QLORA_BUILTIN)


def test_config_checks():
    base = {"model": {"path": "some/model", "quantization": {"bits": 4}}, "data": {"path": "d"}}
    with pytest.raises(ValueError, match="set lora.enabled"):
        RunCfg.from_dict(base)
    with pytest.raises(ValueError, match="built-in model"):
        RunCfg.from_dict({**base, "model": {"quantization": {"bits": 4}}, "lora": {"enabled": True}})
    with pytest.raises(ValueError, match="must be 4 or 8"):
        RunCfg.from_dict({**base, "model": {"path": "m", "quantization": {"bits": 3}}, "lora": {"enabled": True}})
    cfg = RunCfg.from_dict({**base, "lora": {"enabled": True}}, )
    assert cfg.model.quantization == QuantCfg(bits=4, quant_type="nf4", double_quant=True, compute_dtype="bfloat16")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_quantizes_its_language_model_only(name, tmp_path):
    family = FAMILIES[name]
    tiny = family.tiny()
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    q = QuantCfg(bits=4, compute_dtype="float32")
    model = family.load(ModelCfg(family=name, path=str(tmp_path), quantization=q)).model
    quant, full = _quantized_linears(model)
    assert quant, f"{name}: no layer was quantised"
    for layer in quant:
        assert freeze_group_of(family, layer + ".weight") == "language", f"{name}: {layer} quantised"
    for layer in full:  # what stays full precision is the vision side, the projector or the LM head, or an nn.Linear
        # subclass (transformers swaps only `type(m) is nn.Linear` for bitsandbytes: Llama 4's MoE router stays)
        group = freeze_group_of(family, layer + ".weight")
        subclass = type(model.get_submodule(layer)) is not torch.nn.Linear
        assert group != "language" or layer.endswith("lm_head") or subclass, f"{name}: language layer {layer} not " \
            "quantised"
    print(name, f"{len(quant)} quantised, {len(full)} full precision")


def _qlora_run(tmp_path, data_dir, base, bits, **train):
    from vlmtune.train.loop import train as run

    quant = {"bits": bits, "compute_dtype": train.pop("compute_dtype", "float32")}
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, data_dir, model={"path": str(base), "quantization": quant},
                                        lora={"enabled": True, "r": 4}, train={"lr": 1e-2, "max_steps": 8, **train}))
    run(cfg)
    return cfg


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_evaluates_and_exports(tmp_path, fashion_dir, saved_builtin, bits):
    from transformers import AutoModelForImageTextToText

    from vlmtune.data.images import load_images
    from vlmtune.data.store import read_samples
    from vlmtune.export import export
    from vlmtune.infer import Predictor
    from vlmtune.runs import load_for_inference

    cfg = _qlora_run(tmp_path, fashion_dir, saved_builtin, bits)
    losses = [r["loss"] for r in map(json.loads, (cfg.run_dir / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    print(f"{bits}-bit losses", [round(x, 3) for x in losses])
    assert all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0]
    meta = json.loads((cfg.run_dir / "best" / "vlmtune.json").read_text())
    assert meta["quantization"]["bits"] == bits and meta["adapter"]

    loaded = load_for_inference(cfg.run_dir)  # the adapter on the same quantised base it was trained on
    quant, _ = _quantized_linears(loaded.model)
    assert quant and all(".language_model." in q for q in quant)
    samples, _ = read_samples(fashion_dir, split="val")
    answers = Predictor.from_path(cfg.run_dir, max_new_tokens=4).generate(samples, [load_images(fashion_dir, s)
                                                                                     for s in samples])
    assert len(answers) == len(samples) and all(isinstance(a, str) for a in answers)

    info = export(cfg.run_dir, tmp_path / "exported", merge=True)  # merged into the full-precision base
    assert info["trained_on_quantized_base"]["bits"] == bits
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert "quantization_config" not in config
    plain = AutoModelForImageTextToText.from_pretrained(tmp_path / "exported")
    quant, full = _quantized_linears(plain)
    assert not quant and not any("lora_" in n for n, _ in plain.named_parameters())


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tmp_path, fashion_dir):
    from vlmtune.train.loop import train as run

    losses = []
    for on in (False, True):
        cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path / str(on), fashion_dir, train={
            "max_steps": 3, "gradient_checkpointing": on, "eval_every": 0, "save_every": 0}))
        run(cfg)
        losses.append([r["loss"] for r in map(json.loads, (cfg.run_dir / "metrics.jsonl").read_text().splitlines())
                       if "loss" in r])
    assert len(losses[0]) == 3
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_qlora_step_on_cuda(tmp_path, fashion_dir, saved_builtin):
    """A real 4-bit NF4 QLoRA run on a CUDA device with bf16 compute (deselected by default: `pytest -m gpu`)."""
    assert torch.cuda.is_available(), "the gpu-marked tests need a CUDA device"
    cfg = _qlora_run(tmp_path, fashion_dir, saved_builtin, 4, compute_dtype="bfloat16", mixed_precision="bf16")
    meta = json.loads((cfg.run_dir / "best" / "vlmtune.json").read_text())
    assert meta["quantization"]["compute_dtype"] == "bfloat16"
    losses = [r["loss"] for r in map(json.loads, (cfg.run_dir / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    assert losses[-1] < losses[0]
