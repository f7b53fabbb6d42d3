"""Contrastive fine-tuning: batches, loss, recall gain over the untrained model, resume, freezing."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import get_cosine_schedule_with_warmup

from vlmtune.retrieval.encoder import DualEncoder
from vlmtune.retrieval.evaluate import evaluate, load_gallery
from vlmtune.retrieval.train import RetrievalTrainCfg, epoch_batches, train
from vlmtune.runs import checkpoints


def test_epoch_batches_visit_each_image_once_and_keep_identical_captions_apart(caption_data):
    g = load_gallery(caption_data, "train")
    g.texts[1] = g.texts[0].upper()  # a duplicate caption (up to case) for another image
    g.texts[2] = g.texts[0]
    batches = epoch_batches(g, epoch=0, seed=0, batch_size=len(g.images))  # one batch would hold all three
    images = [i for b in batches for i, _ in b]
    assert sorted(images) == list(range(len(g.images)))
    for b in batches:
        keys = [" ".join(g.texts[t].lower().split()) for _, t in b]
        assert len(keys) == len(set(keys))
    assert len(batches) == 3  # the two repeats were deferred to later batches
    assert epoch_batches(g, 0, 0, 32) == epoch_batches(g, 0, 0, 32) != epoch_batches(g, 1, 0, 32)


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_fine_tuning_clip_beats_the_untrained_model(models, caption_data, tmp_path):
    cfg = RetrievalTrainCfg(model=str(models["clip"]), data=str(caption_data), out=str(tmp_path / "run"), epochs=6,
                            batch_size=32, lr=2e-3)
    summary = train(cfg)
    rows = _metrics(tmp_path / "run")
    assert [r["step"] for r in rows][:2] == [0, 8] and rows[-1]["step"] == summary["steps"] == summary["total_steps"]
    losses = [r["train_loss"] for r in rows[1:]]
    assert losses[-1] < 0.7 * losses[0], losses
    test = load_gallery(caption_data, "test")
    before = evaluate(DualEncoder.load(models["clip"], "cpu"), test)
    after = evaluate(DualEncoder.load(tmp_path / "run", "cpu"), test)  # a run directory means its best/
    print("untrained", before, "\nfine-tuned", after)
    assert after["rsum"] > before["rsum"] + 100, (before, after)
    assert after["t2i_R@5"] > before["t2i_R@5"] + 15 and after["i2t_R@5"] > before["i2t_R@5"] + 15
    best = json.loads((tmp_path / "run" / "best" / "retrieval.json").read_text())
    assert best["step"] == summary["best"]["step"] > 0 and best["val"]["rsum"] == max(r["rsum"] for r in rows)


def test_siglip_sigmoid_loss_decreases(models, caption_data, tmp_path):
    cfg = RetrievalTrainCfg(model=str(models["siglip"]), data=str(caption_data), out=str(tmp_path / "run"), epochs=2,
                            batch_size=32, lr=2e-3)
    train(cfg)
    rows = _metrics(tmp_path / "run")
    assert rows[-1]["train_loss"] < 0.85 * rows[1]["train_loss"]
    assert rows[-1]["log_scale"] != pytest.approx(2.302585, abs=1e-4)  # the temperature is learned


def _weights(path):
    return load_file(path / "model.safetensors")


def _last_weights(run):
    """The model weights of the run's latest checkpoints/step-N."""
    return _weights(checkpoints(run)[-1])


@pytest.fixture
def dropout_clip(models, tmp_path):
    """The tiny CLIP with attention dropout on, so that a resume that lost the random state ends elsewhere."""
    path = tmp_path / "clip_dropout"
    shutil.copytree(models["clip"], path)
    config = json.loads((path / "config.json").read_text())
    for tower in ("text_config", "vision_config"):
        config[tower]["attention_dropout"] = 0.2
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_interrupted_run_resumes_to_the_same_weights(dropout_clip, caption_data, tmp_path):
    cfg = RetrievalTrainCfg(model=str(dropout_clip), data=str(caption_data), out=str(tmp_path / "a"), epochs=2,
                            batch_size=64, lr=1e-3, eval_every=2)
    straight = train(cfg)
    cut = dataclasses.replace(cfg, out=str(tmp_path / "b"))
    assert train(cut, stop_after=4)["stopped"]
    assert checkpoints(tmp_path / "b") == [tmp_path / "b" / "checkpoints" / "step-4"]  # step-2 was pruned
    trainer = tmp_path / "b" / "checkpoints" / "step-4" / "trainer"
    assert json.loads((trainer / "state.json").read_text())["step"] == 4
    assert {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt"} <= {p.name for p in trainer.iterdir()}
    assert set(torch.load(trainer / "rng.pt", weights_only=True)) >= {"torch", "python", "numpy"}
    assert not (tmp_path / "b" / "best" / "trainer").exists()  # best/: model files only
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:  # killed after logging step 6, before saving it
        f.write(json.dumps({"step": 6, "epoch": 2, "rsum": 0.0}) + '\n{"step": 8, "ep')
    torch.manual_seed(1234)  # as in a new process: the random state must come from the checkpoint
    resumed = train(cut)
    assert resumed["steps"] == straight["steps"] and not resumed["stopped"]
    assert [p.name for p in checkpoints(tmp_path / "b")] == [f"step-{resumed['steps']}"]
    a, b = _last_weights(tmp_path / "a"), _last_weights(tmp_path / "b")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    assert [r["step"] for r in _metrics(tmp_path / "b")] == list(range(0, resumed["steps"] + 1, 2))  # none redone
    with pytest.raises(ValueError, match="different configuration \\(lr differ"):
        train(dataclasses.replace(cut, lr=5e-4))


def test_a_run_killed_before_its_first_checkpoint_starts_its_log_again(models, caption_data, tmp_path):
    cfg = RetrievalTrainCfg(model=str(models["clip"]), data=str(caption_data), out=str(tmp_path / "run"), epochs=1,
                            batch_size=64, lr=1e-3)
    first = train(cfg)
    shutil.rmtree(tmp_path / "run" / "checkpoints")  # as if killed after its step-0 row, before any checkpoint
    assert train(cfg)["steps"] == first["steps"]
    assert [r["step"] for r in _metrics(tmp_path / "run")] == [0, first["steps"]]  # each step once


def _to_the_old_layout(run, cfg, total):
    """Rewrite a run stopped after one checkpoint into what the code before step-N checkpoints left: one
    checkpoints/last/ with the model files, retrieval.json {step, base} and trainer/{optimizer.pt, scheduler.pt,
    rng.pt, state.json}, where rng.pt held torch's CPU generator only and scheduler.pt was the state of transformers'
    get_cosine_schedule_with_warmup (the LambdaLR of its partials), and no trainable.safetensors. The weights,
    optimizer moments, random state and step are this run's, so resuming must end where an uninterrupted run does."""
    (ckpt,) = checkpoints(run)
    last = run / "checkpoints" / "last"
    ckpt.rename(last)
    trainer = last / "trainer"
    (trainer / "trainable.safetensors").unlink()
    torch.save({"torch": torch.load(trainer / "rng.pt", weights_only=True)["torch"]}, trainer / "rng.pt")
    meta = json.loads((last / "retrieval.json").read_text())
    (last / "retrieval.json").write_text(json.dumps({"step": meta["step"], "base": meta["base"]}, indent=2) + "\n")
    ours = torch.load(trainer / "scheduler.pt", weights_only=True)
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2, 2))]}, {"params": [torch.nn.Parameter(torch.zeros(2))]}]
    old = get_cosine_schedule_with_warmup(torch.optim.AdamW(groups, lr=cfg.lr), math.ceil(cfg.warmup * total), total)
    for _ in range(meta["step"]):
        old.optimizer.step()
        old.step()
    # with one warmup step the two warmup formulas (step / warmup, ours (step + 1) / warmup) agree from step 1 on
    assert math.ceil(cfg.warmup * total) == 1 and old.get_last_lr() == pytest.approx(ours["_last_lr"])
    torch.save(old.state_dict(), trainer / "scheduler.pt")
    return last


def test_a_run_in_the_old_checkpoints_last_layout_resumes(dropout_clip, caption_data, tmp_path):
    cfg = RetrievalTrainCfg(model=str(dropout_clip), data=str(caption_data), out=str(tmp_path / "a"), epochs=2,
                            batch_size=64, lr=1e-3, eval_every=2)
    straight = train(cfg)
    old = dataclasses.replace(cfg, out=str(tmp_path / "old"))
    assert train(old, stop_after=4)["stopped"]
    last = _to_the_old_layout(tmp_path / "old", cfg, straight["total_steps"])
    assert checkpoints(tmp_path / "old") == [] and DualEncoder.load(last, "cpu").family.name == "clip"
    torch.manual_seed(1234)  # as in a new process: the random state must come from the checkpoint
    resumed = train(old)
    assert resumed["steps"] == straight["steps"] and not resumed["stopped"]
    assert not last.exists()  # read once; the new saves replaced it
    assert [p.name for p in checkpoints(tmp_path / "old")] == [f"step-{resumed['steps']}"]
    a, b = _last_weights(tmp_path / "a"), _last_weights(tmp_path / "old")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    assert [r["step"] for r in _metrics(tmp_path / "old")] == list(range(0, resumed["steps"] + 1, 2))
    assert resumed["best"] == straight["best"]


def test_freezing_the_vision_tower_keeps_it_fixed(models, caption_data, tmp_path):
    cfg = RetrievalTrainCfg(model=str(models["clip"]), data=str(caption_data), out=str(tmp_path / "run"), epochs=1,
                            batch_size=64, lr=1e-3, freeze="vision")
    train(cfg)
    before, after = _weights(models["clip"]), _last_weights(tmp_path / "run")
    vision = [n for n in before if n.startswith(("vision_model.", "visual_projection."))]
    text = [n for n in before if n.startswith(("text_model.", "text_projection."))]
    assert vision and text
    assert all(torch.equal(before[n], after[n]) for n in vision)
    assert sum(not torch.equal(before[n], after[n]) for n in text) > len(text) // 2


def test_the_config_is_loaded_by_the_run_configs_loader(tmp_path):
    """retrieve train's YAML goes through config.build_section: `lr: 1e-5` (a string to YAML 1.1) is a float, an
    unknown key is refused naming the known ones, a Literal is checked; flags override the file."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\ndata: d\nout: o\nlr: 1e-5\nfreeze: vision\n")
    cfg = RetrievalTrainCfg.load(recipe, epochs=3, batch_size=None)
    assert (cfg.lr, cfg.freeze, cfg.epochs, cfg.batch_size) == (1e-5, "vision", 3, 64)
    recipe.write_text("model: m\ndata: d\nout: o\nlearning_rate: 1e-5\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rate'\]; known: .*'lr'"):
        RetrievalTrainCfg.load(recipe)
    with pytest.raises(ValueError, match="freeze"):
        RetrievalTrainCfg.load(None, model="m", data="d", out="o", freeze="both")
