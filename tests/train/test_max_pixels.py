"""`model.max_pixels`: fewer image tokens for the families whose image tokens follow the image's size, set into the
real processors (Qwen2-VL/2.5-VL, GLM-4.1V, SmolVLM, LLaVA-NeXT, Mllama, Pix2Struct), refused by the fixed-size ones,
carried by every checkpoint and export so inference sees images as training did, and offered by `vlmtune plan`."""

from __future__ import annotations

import json
import math

import pytest
from helpers import SHARED, tiny_run_cfg
from PIL import Image

from vlmtune import cli
from vlmtune.config import ModelCfg, RunCfg
from vlmtune.data.resize import limit_pixels, resized_size
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import apply_max_pixels, get_family

REAL = SHARED / "real-models"
QWEN2 = REAL / "Qwen__Qwen2-VL-2B-Instruct"
needs = pytest.mark.skipif(not (QWEN2 / "config.json").is_file(), reason="no ../shared/real-models")
SIZES = [(1600, 1200), (300, 2000), (640, 480)]


def _image_tokens_in(processor, family, size) -> int:
    sample = Sample(id="a", messages=[user("What colour?"), assistant("green")], images=["a.png"])
    batch = family.encode(processor, [sample], [[Image.new("RGB", size, (10, 200, 30))]], "train", 1 << 20)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return batch.inputs["input_ids"][0].tolist().count(image_id)


@needs
@pytest.mark.parametrize("name, folder, max_pixels", [
    ("qwen2_vl", "Qwen__Qwen2-VL-2B-Instruct", 256 * 28 * 28),
    ("qwen2_5_vl", "Qwen__Qwen2.5-VL-3B-Instruct", 100_000),
    ("qwen3_vl", "Qwen__Qwen3-VL-4B-Instruct", 200_000),
    ("qwen3_5", "Qwen__Qwen3.5-0.8B", 150_000),
    ("smolvlm", "HuggingFaceTB__SmolVLM2-256M-Video-Instruct", 600 * 600),
    ("glm4v", "zai-org__GLM-4.1V-9B-Thinking", 256 * 28 * 28),  # its processor's limits count two frames
])
def test_real_processors_give_fewer_image_tokens(name, folder, max_pixels):
    """With the limit, the real processor makes every image at most `max_pixels` pixels and fewer image tokens
    than without it; the family's `image_tokens` (what the plan and `data stats` count) still equals the tokens the
    encoded sample holds."""
    family = get_family(name)
    processor = family.load_processor(str(REAL / folder))
    before = {s: _image_tokens_in(processor, family, s) for s in SIZES}
    said = apply_max_pixels(processor, ModelCfg(family=name, path="x", max_pixels=max_pixels))
    assert said
    for size in SIZES:
        w, h = resized_size(*size, processor.image_processor)
        after = _image_tokens_in(processor, family, size)
        print(name, size, before[size], "->", after, (w, h), said)
        assert w * h <= max_pixels and after == family.image_tokens(processor, *size)
        assert after < before[size]
    if name.startswith(("qwen", "glm4v")):  # a token per 28x28 block (32x32 from Qwen3-VL on), the limit nearly reached
        block = 32 * 32 if name.startswith("qwen3") else 28 * 28
        tokens = {s: _image_tokens_in(processor, family, s) for s in SIZES}
        assert all(n * block == math.prod(resized_size(*s, processor.image_processor)) for s, n in tokens.items())
        assert 0.8 * max_pixels // block < max(tokens.values()) <= max_pixels // block


@needs
def test_tiling_and_grid_processors_take_the_limit():
    from transformers import AutoImageProcessor

    next_ip = AutoImageProcessor.from_pretrained(REAL / "llava-hf__llava-v1.6-mistral-7b-hf")
    full = next_ip(images=[Image.new("RGB", (1000, 980))], return_tensors="pt")["pixel_values"].shape[1]
    limit_pixels(next_ip, 672 * 336, "llava_next")
    assert next_ip.image_grid_pinpoints == [[336, 672], [672, 336]]
    limited = next_ip(images=[Image.new("RGB", (1000, 980))], return_tensors="pt")["pixel_values"].shape[1]
    assert limited < full  # fewer 336x336 crops, so fewer image tokens
    mllama = AutoImageProcessor.from_pretrained(REAL / "meta-llama__Llama-3.2-11B-Vision-Instruct")
    assert limit_pixels(mllama, 2 * 560 * 560 + 5, "mllama") == "max_image_tiles 2"
    out = mllama(images=[[Image.new("RGB", (1600, 1600))]], return_tensors="pt")
    assert int(out["num_tiles"][0][0]) <= 2
    pix = AutoImageProcessor.from_pretrained(REAL / "google__pix2struct-docvqa-base")
    limit_pixels(pix, 512 * 256, "pix2struct")
    assert pix.max_patches == 512
    pix.is_vqa = False  # the VQA header is rendered with a font from the hub
    patches = pix(images=[Image.new("RGB", (1600, 1200))], return_tensors="pt")
    assert patches["flattened_patches"].shape[1] == 512


@needs
@pytest.mark.parametrize("folder, family", [("llava-hf__llava-1.5-7b-hf", "llava"),
                                            ("Salesforce__blip2-opt-2.7b", "blip2"),
                                            ("google__gemma-3-4b-it", "gemma3")])
def test_fixed_size_families_refuse_it(folder, family):
    from transformers import AutoImageProcessor

    ip = AutoImageProcessor.from_pretrained(REAL / folder)
    with pytest.raises(ValueError, match=f"model.max_pixels does not apply to {family}"):
        limit_pixels(ip, 100_000, family)


def test_a_limit_below_one_image_token_is_refused_and_bad_values_are_config_errors():
    family = get_family("qwen2_vl")
    processor = family.tiny().processor  # 8x8 patches merged 2x2: 256 pixels per image token
    with pytest.raises(ValueError, match="below qwen2_vl's smallest image token \\(256 pixels\\)"):
        limit_pixels(processor.image_processor, 255, "qwen2_vl")
    for bad in (0, -5, 1.5, "lots", True):
        with pytest.raises(ValueError, match="model.max_pixels must be a positive whole number"):
            ModelCfg(max_pixels=bad)


def test_a_run_trains_and_saves_the_limit_so_inference_sees_images_alike(tmp_path, fashion_dir):
    """Training with the limit saves it in every checkpoint's processor files: loading the run (what eval, infer
    and serve do) and a merged export read through plain transformers give the same, smaller image tokens."""
    from transformers import AutoImageProcessor

    from vlmtune.export import export
    from vlmtune.runs import load_for_inference
    from vlmtune.train.loop import train

    family = get_family("qwen2_vl")
    tiny = family.tiny()
    base = tmp_path / "base"
    tiny.model.save_pretrained(base)
    tiny.processor.save_pretrained(base)
    assert family.image_tokens(tiny.processor, 64, 64) == 16  # the tiny processor's own limit: 64x64 pixels
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir, model={"family": "qwen2_vl", "path": str(base),
                                                                       "max_pixels": 32 * 32},
                                        lora={"enabled": True, "r": 4}, train={"max_steps": 2, "save_every": 2,
                                                                              "eval_every": 2}))
    out = train(cfg)
    plan = json.loads((cfg.run_dir / "plan.json").read_text())
    assert plan["recipe"]["max_pixels"] == 1024 and plan["lengths"]["image_tokens"]["max"] <= 4
    loaded = load_for_inference(out["run_dir"])
    assert family.image_tokens(loaded.processor, 64, 64) == 4
    assert _image_tokens_in(loaded.processor, family, (64, 64)) == 4
    merged = export(out["run_dir"], tmp_path / "merged", merge=True)
    plain = AutoImageProcessor.from_pretrained(merged["out"])
    grid = plain(images=[Image.new("RGB", (64, 64))], return_tensors="pt")["image_grid_thw"][0].tolist()
    assert grid[1] * grid[2] // 4 == 4


def test_train_and_plan_refuse_it_for_a_fixed_size_family(tmp_path, fashion_dir, capsys):
    cfg = tiny_run_cfg(tmp_path, fashion_dir, model={"max_pixels": 10_000})
    assert cfg["model"]["family"] == "llava"
    config = tmp_path / "c.json"
    config.write_text(json.dumps(cfg))
    for command in (["plan", "--config", str(config)], ["train", "--config", str(config)]):
        rc = cli.main(command)
        err = capsys.readouterr().err
        assert rc == 2, (command, err)
        assert "model.max_pixels does not apply to llava" in err and "Traceback" not in err


@needs
def test_the_plan_offers_fewer_image_tokens_with_their_memory(tmp_path):
    """A Qwen2-VL recipe on large images that does not fit: one of the plan's changes is a pixel limit, with the
    image tokens measured again under it and a smaller predicted peak."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    rows = []
    for k, size in enumerate([(1600, 1200), (1200, 1600), (1400, 1400)]):
        Image.new("RGB", size, (k * 60, 100, 30)).save(root / f"images/{k}.png")
        rows.append({"id": str(k), "messages": [user("What colour?"), assistant("green")],
                     "images": [f"images/{k}.png"], "split": "train"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from vlmtune.train.plan import make_plan

    cfg = RunCfg.from_dict({"model": {"family": "qwen2_vl", "path": str(QWEN2), "dtype": "bfloat16"},
                            "lora": {"enabled": True}, "data": {"path": str(root)},
                            "train": {"mixed_precision": "bf16", "micro_batch_size": 1, "global_batch_size": 1}})
    plan = make_plan(cfg, gpu_memory="8GB")
    assert plan.verdict["fits"] is False
    pixels = [a for a in plan.verdict["alternatives"] if a["change"].startswith("--model.max_pixels")]
    print(plan.text())
    assert len(pixels) == 1 and pixels[0]["peak_bytes"] < plan.memory["total"]
    limit = int(pixels[0]["change"].split()[1])
    assert limit <= plan.lengths["largest_image_pixels"] // 2
    limited = make_plan(RunCfg.from_dict({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "max_pixels": limit}}),
                        gpu_memory="8GB")  # the suggestion, planned as a recipe: the same peak
    assert limited.memory["total"] == pytest.approx(pixels[0]["peak_bytes"])
    assert limited.lengths["image_tokens"]["max"] < plan.lengths["image_tokens"]["max"]


@pytest.mark.parametrize("name", ["llava_next", "llava_onevision"])
def test_grid_families_tile_as_their_model_splits_under_the_limit(name, tmp_path):
    """LLaVA-NeXT / OneVision models split an image's features by the grid they compute from their own
    `config.image_grid_pinpoints`: the limit reaches the model's config too (load_model), so a large image trains
    with fewer tiles and no mismatch, and a checkpoint saved from it carries the same grid as its processor. With the
    processor limited alone, the model splits the features into the wrong grid and fails."""
    import copy

    import torch

    family = get_family(name)
    tiny = family.tiny()
    tiny.model.save_pretrained(tmp_path / "base")
    tiny.processor.save_pretrained(tmp_path / "base")
    grids = tiny.processor.image_processor.image_grid_pinpoints
    limit = sorted(g[0] * g[1] for g in grids)[1]  # keeps the smallest grid resolutions only
    sample = Sample(id="big", messages=[user("What colour?"), assistant("green")], images=["a.png"])
    image = [[Image.new("RGB", (300, 290), (10, 200, 30))]]
    full = family.encode(tiny.processor, [sample], image, "train", 1 << 20)

    processor_only = copy.deepcopy(tiny.processor)
    limit_pixels(processor_only.image_processor, limit, name)
    with pytest.raises(RuntimeError), torch.no_grad():  # what the limit did before the model's config followed it
        tiny.model(**family.encode(processor_only, [sample], image, "train", 1 << 20).inputs)

    from vlmtune.models import load_model

    loaded = load_model(ModelCfg(family=name, path=str(tmp_path / "base"), max_pixels=limit))
    assert loaded.model.config.image_grid_pinpoints == loaded.processor.image_processor.image_grid_pinpoints
    assert all(g[0] * g[1] <= limit for g in loaded.model.config.image_grid_pinpoints)
    batch = family.encode(loaded.processor, [sample], image, "train", 1 << 20)
    assert batch.inputs["input_ids"].shape[1] < full.inputs["input_ids"].shape[1]
    with torch.no_grad():
        loss = loaded.model(**batch.inputs).loss
    assert torch.isfinite(loss)
    loaded.model.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())["image_grid_pinpoints"]
    assert saved == loaded.model.config.image_grid_pinpoints


def test_internvl_takes_the_limit_as_fewer_tiles_and_keeps_it_when_saved(tmp_path):
    """InternVL cuts each image into tiles (as many as its aspect ratio asks, up to max_patches, + a thumbnail): the
    limit lowers max_patches, the encoded samples hold fewer image tokens, `image_tokens` still counts them, and the
    saved processor carries it. A limit below one tile is refused."""
    family = get_family("internvl")
    processor = family.tiny().processor  # 32x32 tiles, up to 6 of them
    sizes = [(100, 20), (96, 64), (200, 200)]
    before = {s: _image_tokens_in(processor, family, s) for s in sizes}
    with pytest.raises(ValueError, match="below internvl's smallest tile \\(1024 pixels\\)"):
        limit_pixels(processor.image_processor, 1000, "internvl")
    said = apply_max_pixels(processor, ModelCfg(family="internvl", path="x", max_pixels=2 * 32 * 32 + 5))
    assert said.startswith("max_patches 2")
    for size in sizes:
        w, h = resized_size(*size, processor.image_processor)
        after = _image_tokens_in(processor, family, size)
        assert w * h <= 2 * 32 * 32 and after == family.image_tokens(processor, *size) - 2  # - <img> </img>
        assert after < before[size] and after <= 3 * processor.image_seq_length  # 2 tiles + the thumbnail
    processor.save_pretrained(tmp_path)
    again = family.load_processor(tmp_path)
    assert again.image_processor.max_patches == 2
    assert _image_tokens_in(again, family, (200, 200)) == _image_tokens_in(processor, family, (200, 200))


@pytest.mark.parametrize("max_pixels, said", [(2 * 32 * 32 + 5, "max_image_tokens 4, max_tiles 2"),
                                              (700, "max_image_tokens 2, no tiles")])
def test_lfm2_vl_takes_the_limit_as_fewer_tiles_and_image_tokens(max_pixels, said):
    """LFM2-VL resizes a small image whole (up to max_image_tokens) and cuts a large one into tiles + a thumbnail: the
    limit caps both, below one tile it resizes every image whole; `image_tokens` still counts what encode makes."""
    family = get_family("lfm2_vl")
    processor = family.tiny().processor  # a token per 16x16 pixels, up to 4 of them whole, else 2-4 32x32 tiles
    sizes = [(200, 200), (96, 64), (120, 40)]
    before = {s: _image_tokens_in(processor, family, s) for s in sizes}
    with pytest.raises(ValueError, match="below lfm2_vl's smallest image token \\(256 pixels\\)"):
        limit_pixels(processor.image_processor, 200, "lfm2_vl")
    assert apply_max_pixels(processor, ModelCfg(family="lfm2_vl", path="x", max_pixels=max_pixels)) == said
    for size in sizes:
        w, h = resized_size(*size, processor.image_processor)
        after = _image_tokens_in(processor, family, size)
        assert w * h <= max_pixels and after == family.image_tokens(processor, *size)
        assert after < before[size], (size, before[size], after)
