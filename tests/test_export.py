"""`vlmtune export`: a standalone HF directory whose outputs equal the run's Predictor, for full and LoRA runs."""

import json

import pytest
import torch
from helpers import tiny_run_cfg

from vlmtune.cli import main
from vlmtune.config import RunCfg
from vlmtune.data.images import load_images
from vlmtune.data.store import read_samples
from vlmtune.export import export
from vlmtune.infer import Predictor
from vlmtune.train.loop import train


def _standalone_answers(out, samples, images, max_new_tokens=4):
    """Answers from the exported directory through the plain Auto classes (no vlmtune loading code)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmtune.models import FAMILIES
    from vlmtune.models.family import Loaded

    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    family = FAMILIES[json.loads((out / "vlmtune.json").read_text())["family"]]
    p = Predictor(loaded=Loaded(model, processor, family.name), family=family, max_new_tokens=max_new_tokens)
    return p.generate(samples, images), model


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora-merged"])
def test_export_gives_the_same_answers_as_the_run(tmp_path, fashion_dir, capsys, lora):
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir, lora={"enabled": lora, "r": 4},
                                        train={"lr": 1e-2}))
    train(cfg)
    out = tmp_path / "exported"
    assert main(["export", "--model", str(cfg.run_dir), "--out", str(out)] + (["--merge"] if lora else [])) == 0
    files = set(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["files"])
    assert {"config.json", "generation_config.json", "model.safetensors", "chat_template.jinja",
            "tokenizer.json", "processor_config.json"} <= files, files
    assert not any(f.startswith("adapter_") for f in files)
    samples, _ = read_samples(fashion_dir, split="val")
    images = [load_images(fashion_dir, s) for s in samples]
    ours = Predictor.from_path(cfg.run_dir, max_new_tokens=4).generate(samples, images)
    exported, model = _standalone_answers(out, samples, images)
    assert exported == ours
    assert not any("lora_" in n for n, _ in model.named_parameters())


def test_export_refuses_an_unmerged_adapter_and_an_existing_directory(tmp_path, fashion_dir, capsys):
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir, lora={"enabled": True, "r": 4},
                                        train={"max_steps": 2, "eval_every": 0, "save_every": 2}))
    train(cfg)
    assert main(["export", "--model", str(cfg.run_dir), "--out", str(tmp_path / "x")]) != 0
    assert "pass --merge" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    (tmp_path / "taken").mkdir()
    assert main(["export", "--model", str(cfg.run_dir), "--out", str(tmp_path / "taken"), "--merge"]) != 0
    assert "already exists" in capsys.readouterr().err


def test_merged_weights_equal_base_plus_scaled_lora_product(tmp_path, fashion_dir):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir, lora={"enabled": True, "r": 4, "alpha": 8},
                                        train={"lr": 1e-2, "max_steps": 3, "eval_every": 0, "save_every": 3}))
    train(cfg)
    export(cfg.run_dir, tmp_path / "m", merge=True)
    merged = dict(AutoModelForImageTextToText.from_pretrained(tmp_path / "m").named_parameters())
    base = dict(AutoModelForImageTextToText.from_pretrained(cfg.run_dir / "base").named_parameters())
    adapter = load_file(next((cfg.run_dir / "checkpoints").iterdir()) / "adapter_model.safetensors")
    a_key = next(k for k in adapter if k.endswith("q_proj.lora_A.weight"))
    w_key = a_key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
    b = adapter[a_key.replace("lora_A", "lora_B")]
    expected = base[w_key].detach() + (8 / 4) * b @ adapter[a_key]
    torch.testing.assert_close(merged[w_key].detach(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(merged[w_key], base[w_key])


@pytest.mark.parametrize("family_name", ["llava", "llava_next", "paligemma", "gemma3"])
def test_export_writes_the_hub_layout_of_flat_vision_towers(family_name, tmp_path):
    """A model built in code (tiny, built-in, composed) saves its CLIP/SigLIP tower flat (`vision_tower.embeddings`);
    the export writes the hub's `vision_tower.vision_model.` keys that vLLM and older transformers load, and
    transformers 5 reads them back to the same weights and logits."""
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    from vlmtune.models import get_family

    tiny = get_family(family_name).tiny()
    src = tmp_path / "src"
    tiny.model.save_pretrained(src)
    tiny.processor.save_pretrained(src)
    with safe_open(src / "model.safetensors", "pt") as f:
        assert any(k.startswith("vision_tower.embeddings") for k in f.keys())
    out = export(src, tmp_path / "out")["out"]
    with safe_open(f"{out}/model.safetensors", "pt") as f:
        keys = list(f.keys())
    tower = [k for k in keys if k.startswith("vision_tower.")]
    assert tower and all(k.startswith("vision_tower.vision_model.") for k in tower)
    back = AutoModelForImageTextToText.from_pretrained(out).eval()
    mine = tiny.model.eval().state_dict()
    assert back.state_dict().keys() == mine.keys()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in mine.items())
    from vlmtune.export import hub_layout

    assert hub_layout(tmp_path / "out") == 0  # already in the hub's layout: nothing renamed twice
