"""data.answer_targets: training on the ten human answers of VizWiz/VQAv2 (train/targets.py). Sampled answers follow
the annotators' agreement and a resumed run draws the same ones; the weighted loss is the agreement-weighted token
mean computed answer by answer; every answer is checked against max_length before step 0."""

import json
import shutil
from collections import Counter

import pytest
import torch
from helpers import tiny_run_cfg
from safetensors.torch import load_file

from vlmtune.config import RunCfg
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.train import targets
from vlmtune.train.batching import encode_batch
from vlmtune.train.loop import fit, setup

VOTES = ["red"] * 5 + ["Red."] + ["light blue"] * 2 + ["unanswerable", "blue"]
"""Ten annotators: "red" and "Red." are one answer to the VQA metric (6 votes); "light blue" 2; the rest 1 each."""


@pytest.fixture(scope="module")
def vizwiz_dir(tmp_path_factory):
    """Stand-in VizWiz (ten disagreeing answers per question) at 32x32, imported: 38 train / 10 val."""
    from vlmtune.data.formats import get_format, import_dataset
    from vlmtune.data.standin import write_standin

    tmp = tmp_path_factory.mktemp("vizwiz")
    write_standin("vizwiz", tmp / "raw", 48, seed=0, size=32)
    import_dataset(get_format("vizwiz"), tmp / "raw", tmp / "data", progress=False)
    return tmp / "data"


def _sample(answers, sid="q1"):
    return Sample(id=sid, messages=[user("What colour is this shirt?"), assistant("red")], images=["images/a.png"],
                  answers=answers)


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_answer_choices_group_answers_as_the_vqa_metric_does():
    assert targets.answer_choices(_sample(VOTES)) == [("red", 0.6), ("light blue", 0.2), ("unanswerable", 0.1),
                                                      ("blue", 0.1)]
    # blank answers are left out; no answers, or no final assistant turn: the single target stays
    assert targets.answer_choices(_sample(["yes", " ", "no", "yes"])) == [("yes", 2 / 3), ("no", 1 / 3)]
    assert targets.answer_choices(_sample(None)) == []
    question = Sample(id="t", messages=[user("What is this?")], images=["images/a.png"], answers=["x"] * 10)
    assert targets.answer_choices(question) == [] and targets.variants(question) == [(question, 1.0)]


def test_sampled_targets_follow_the_agreement_distribution():
    items = [(0, _sample(VOTES, f"q{i}")) for i in range(50)]
    drawn = [targets.draw(0, step, items) for step in range(200)]  # 10,000 draws
    texts = Counter(s.target for step in drawn for _, s in step)
    n = sum(texts.values())
    assert set(texts) == {"red", "light blue", "unanswerable", "blue"}
    for text, share in [("red", 0.6), ("light blue", 0.2), ("unanswerable", 0.1), ("blue", 0.1)]:
        assert abs(texts[text] / n - share) < 0.02, (text, texts)  # 0.02 is over 4 standard deviations
    # a function of (seed, step, position): the same again, another seed draws otherwise
    again = [targets.draw(0, step, items) for step in range(3)]
    assert [[s.target for _, s in d] for d in again] == [[s.target for _, s in d] for d in drawn[:3]]
    assert [s.target for _, s in targets.draw(1, 0, items)] != [s.target for _, s in drawn[0]]
    # each drawn sample keeps its question and image; its id names the answer drawn
    _, first = drawn[0][0]
    assert first.messages[0] == items[0][1].messages[0] and first.images == items[0][1].images
    assert first.id == f"q0#answer{[t for t, _ in targets.answer_choices(items[0][1])].index(first.target)}"


def test_weighted_loss_is_the_agreement_weighted_sum_of_each_answers_loss(tmp_path, vizwiz_dir):
    """One optimizer step (2 micro-batches of 2 questions) under `weighted`: the logged loss and the gradient norm
    equal those of sum_q sum_a w_qa * loss_sum(q, a) / sum_q sum_a w_qa * tokens(q, a), computed one answer at a
    time."""
    from vlmtune.models.loss import forward_losses

    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, vizwiz_dir, data={"val_split": None, "answer_targets": "weighted"},
                                        train={"max_steps": 1, "micro_batch_size": 2, "global_batch_size": 4,
                                               "grad_clip": 1e9, "save_every": 0, "eval_every": 0}))
    state = setup(cfg)
    model = state.model
    model.train()
    items = state.mixture.step_items(0, 0, 4)
    loss_sum = token_sum = 0.0
    for j, s in items:
        options = targets.variants(s)
        for v, w in options:
            batch = encode_batch(state, [(j, v)])
            labels = batch.inputs.pop("labels")
            sums, counts = forward_losses(model, state.family, batch.inputs, labels, True)
            loss_sum = loss_sum + w * sums.sum()
            token_sum += w * counts.sum().item()
    assert max(len(targets.variants(s)) for _, s in items) > 1, "the step must hold disagreeing annotators"
    expected = loss_sum / token_sum
    expected.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    model.zero_grad(set_to_none=True)

    fit(state)
    row = next(r for r in _rows(cfg.run_dir) if "loss" in r)
    assert row["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert row["grad_norm"] == pytest.approx(norm.item(), rel=1e-4)


@pytest.mark.parametrize("mode", ["weighted", "sampled"])
def test_soft_targets_equal_single_when_the_annotators_agree(tmp_path, vizwiz_dir, mode):
    """A sample whose ten answers are its target trains exactly as under `single` (weighted: weights 1, same rows;
    sampled: the one answer drawn every time), so what soft targets change is the annotators' disagreement only."""
    from vlmtune.data.images import load_images
    from vlmtune.data.store import read_samples, write_dataset

    samples, _ = read_samples(vizwiz_dir, split="train")
    agreed = tmp_path / "agreed"
    write_dataset(agreed, [(Sample(**{**s.to_json(), "answers": [s.target] * 10}), load_images(vizwiz_dir, s))
                           for s in samples[:16]])
    losses = []
    for m in ("single", mode):
        cfg = tiny_run_cfg(tmp_path / m, agreed, data={"val_split": None, "answer_targets": m},
                           train={"max_steps": 4, "save_every": 0, "log_every": 1})
        fit(setup(RunCfg.from_dict(cfg)))
        losses.append([r["loss"] for r in _rows(tmp_path / m / "runs/t") if "loss" in r])
    assert len(losses[0]) == 4
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_a_run_with_sampled_targets_resumes_exactly(tmp_path, vizwiz_dir):
    """Stopped after its step-3 checkpoint and run again, a run drawing answers ends as an uninterrupted one."""
    def cfg(name):
        return RunCfg.from_dict(tiny_run_cfg(tmp_path, vizwiz_dir, name=name, data={"answer_targets": "sampled"},
                                             train={"save_every": 3, "eval_every": 0, "keep_checkpoints": 5}))

    fit(setup(cfg("straight")))
    runs = tmp_path / "runs"
    shutil.copytree(runs / "straight", runs / "resumed", ignore=shutil.ignore_patterns("step-6", "best"))
    assert not (runs / "resumed/checkpoints/step-6").exists()
    state = setup(cfg("resumed"))
    assert state.step == 3
    fit(state)
    losses = {n: [(r["step"], r["loss"]) for r in _rows(runs / n) if "loss" in r] for n in ("straight", "resumed")}
    assert losses["resumed"] == losses["straight"] and len(losses["straight"]) == 6
    a, b = (load_file(runs / n / "checkpoints/step-6/model.safetensors") for n in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the draws changed what was trained: the same run under `single` logs other losses
    fit(setup(RunCfg.from_dict(tiny_run_cfg(tmp_path, vizwiz_dir, name="single", train={"eval_every": 0}))))
    single = [(r["step"], r["loss"]) for r in _rows(runs / "single") if "loss" in r]
    assert single != losses["straight"]


def test_sampled_targets_with_the_vision_cache_train_the_drawn_answer(tmp_path, vizwiz_dir):
    """With the frozen-vision cache on, a sample seen again with another answer is trained on that answer (the
    cache keeps encoded rows by sample id): the losses equal those of the same run without the cache."""
    losses = []
    for cache in ("auto", "off"):
        cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path / cache, vizwiz_dir,
                                            data={"val_split": None, "answer_targets": "sampled"},
                                            train={"freeze_vision": True, "freeze_projector": True,
                                                   "vision_cache": cache, "max_steps": 12, "save_every": 0}))
        state = setup(cfg)
        assert (state.vision_cache is not None) == (cache == "auto")
        fit(state)
        losses.append([r["loss"] for r in _rows(cfg.run_dir) if "loss" in r])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


@pytest.mark.parametrize("mode", ["sampled", "weighted"])
def test_an_answer_too_long_for_max_length_is_found_before_step_0(tmp_path, vizwiz_dir, mode):
    """Any answer may be drawn, so each must fit: one long minority answer names its sample (file:line) at setup;
    with skip_bad the sample is listed in rejected.jsonl and the rest train."""
    from vlmtune.data.images import load_images
    from vlmtune.data.store import read_samples, write_dataset

    samples, _ = read_samples(vizwiz_dir)
    line, long = next((i, s) for i, s in enumerate(samples, 1) if s.split == "train")  # the test split has no answers
    long.answers = [long.target] * 9 + ["a very long answer " * 20]
    data = tmp_path / "data"
    write_dataset(data, [(s, load_images(vizwiz_dir, s)) for s in samples])
    for m in ("single", mode):  # the target itself fits: only the answers' check finds it
        cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path / m, data, data={"answer_targets": m, "val_split": None},
                                            train={"max_steps": 1}))
        if m == "single":
            setup(cfg)
            continue
        with pytest.raises(ValueError, match=rf"manifest.jsonl:{line}: .*sample '{long.id}.*exceed max_length=128"):
            setup(cfg)
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path / "skip", data, data={"answer_targets": mode, "val_split": None,
                                                                       "skip_bad": True}, train={"max_steps": 1}))
    state = setup(cfg)
    assert long.id not in {s.id for s in state.mixture.sources[0].samples}
    assert len(state.mixture.sources[0].samples) == len([s for s in samples if s.split == "train"]) - 1
    rejected = [json.loads(x) for x in (cfg.run_dir / "rejected.jsonl").read_text().splitlines()]
    assert [r["file"].endswith("manifest.jsonl") and r["line"] for r in rejected] == [line]


def test_weighted_rows_of_a_sample_share_its_mirroring(tmp_path, vizwiz_dir):
    """Under train.hflip every answer row of a sample shows the image as the sample's flip decided."""
    from vlmtune.train.batching import hflip_mask, step_batches

    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, vizwiz_dir, data={"val_split": None, "answer_targets": "weighted"},
                                        train={"hflip": True, "micro_batch_size": 8, "global_batch_size": 8}))
    state = setup(cfg)
    items = state.mixture.step_items(0, 0, 8)
    flips = hflip_mask(0, 0, 8)
    assert any(flips) and not all(flips)
    chunks, batches, weights = step_batches(state, 0, 0, 1)
    rows, row_weights, owner = targets.expand(items)
    assert [s.id for _, s in chunks[0]] == [s.id for _, s in rows]
    assert weights[0].tolist() == pytest.approx(row_weights) and len(rows) > len(items)
    pixels = batches[0].inputs["pixel_values"]  # [rows, C, H, W]
    for r, i in enumerate(owner):
        alone = encode_batch(state, [items[i]], [flips[i]]).inputs["pixel_values"][0]
        assert torch.equal(pixels[r], alone)


def test_weighted_loss_is_the_same_packed(tmp_path, vizwiz_dir):
    """train.packing: the answer rows packed into one row per micro-batch give the padded run's losses."""
    losses = []
    for packing in (False, True):
        cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path / str(packing), vizwiz_dir,
                                            data={"val_split": None, "answer_targets": "weighted"},
                                            train={"packing": packing, "max_steps": 2, "save_every": 0}))
        fit(setup(cfg))
        losses.append([r["loss"] for r in _rows(cfg.run_dir) if "loss" in r])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
