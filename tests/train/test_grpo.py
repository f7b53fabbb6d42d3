"""GRPO's parts (train/grpo.py) against hand computations: the rewards from vlmtune's metrics on known completions,
the group advantages (a group whose rewards are all equal gets exactly zero), the clipped token loss with its KL;
and per family: a rollout trains on exactly the sampled tokens, and one GRPO step changes only trainable
parameters; with LoRA the KL reference is the adapter-disabled model."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from vlmtune.config import RewardCfg, TrainCfg
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.infer import answer_text, stop_ids
from vlmtune.models import FAMILIES
from vlmtune.models.family import freeze_group_of
from vlmtune.models.labels import IGNORE_INDEX
from vlmtune.models.loss import accepts_logits_to_keep, logit_prefix_of
from vlmtune.train.grpo import (
    EPS,
    Reward,
    group_advantages,
    grpo_loss,
    policy_losses,
    reward_functions,
    rollout,
    rollout_seed,
    score,
)


def sample(i: int = 0, answers=None, question: str = "What colour is the top?", target: str = "red") -> Sample:
    return Sample(id=f"s{i}", images=["a.png"], messages=[user(question), assistant(target)], answers=answers)


def image(colour: str = "red") -> Image.Image:
    img = Image.new("RGB", (40, 40), "white")
    img.paste(Image.new("RGB", (20, 20), colour), (10, 10))
    return img


def three_letters(sample, completion: str) -> float:
    return float(len(completion) == 3)


def test_rewards_are_vlmtunes_metrics_a_format_and_a_function_weighted():
    t = TrainCfg(method="grpo", rewards=[RewardCfg(metric="relaxed_accuracy"), RewardCfg(metric="vqa_accuracy"),
                                         RewardCfg(metric="anls"), RewardCfg(metric="exact_match"),
                                         RewardCfg(format=r"^[0-9.]+$", weight=0.1),
                                         RewardCfg(function=f"{__name__}:three_letters", weight=0.5)])
    rewards = reward_functions(t)
    assert [r.name for r in rewards] == ["relaxed_accuracy", "vqa_accuracy", "anls", "exact_match",
                                         "format:^[0-9.]+$", f"{__name__}:three_letters"]
    chart = sample(0, answers=["10"], target="10")
    vqa = sample(1, answers=["red"] * 2 + ["crimson"] * 8, target="crimson")
    total, each = score(rewards, [chart, chart, vqa, vqa], ["10.4", "", "red", "Crimson"])
    # 10.4 is within 5% of 10 (relaxed), not an exact match; a number (the format)
    assert each[0].tolist()[:2] == [1.0, 0.0] and each[0, 3] == 0 and each[0, 4] == 1 and each[0, 5] == 0
    assert each[1].tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # empty: no metric credit, no format credit
    # 2 of 10 humans said red: the mean over the 10 leave-one-out sets of min(1, matches / 3) = (8 * 2/3 + 2/3) / 10
    assert each[2, 1] == pytest.approx(0.6) and each[2, 3] == 1 and each[2, 5] == 1
    assert each[3, 1] == 1 and each[3, 2] == 1 and each[3, 3] == 1  # normalised "crimson": 8 humans
    weights = torch.tensor([1, 1, 1, 1, 0.1, 0.5], dtype=torch.float64)
    torch.testing.assert_close(total, each @ weights)


def failing(sample, completion: str) -> float:
    values = {"ok": 1, "yes": True, "nan": float("nan"), "none": None}
    return values[completion] if completion in values else 1 / 0


def test_a_reward_function_that_raises_or_returns_no_number_is_named_with_the_sample():
    rewards = reward_functions(TrainCfg(method="grpo", rewards=[RewardCfg(function=f"{__name__}:failing")]))
    total, _ = score(rewards, [sample(0, answers=["1"], target="1")] * 2, ["ok", "yes"])  # an int, a bool: 1 each
    assert total.tolist() == [1.0, 1.0]
    for completion, error in [("boom", r"raised ZeroDivisionError: division by zero \(sample 's3', completion "
                                       "'boom'\)"), ("nan", "returned nan for sample 's3'"),
                              ("none", "returned None for sample 's3': a finite number is needed")]:
        with pytest.raises(ValueError, match=rf"reward '{__name__}:failing' {error}"):
            score(rewards, [sample(3, answers=["1"], target="1")], [completion])


def test_group_advantages_and_a_group_without_spread():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.1, 0.1, 0.1, 0.1], dtype=torch.float64)
    adv, flat = group_advantages(rewards, 4)
    std = math.sqrt(4 * 0.25 / 3)  # unbiased
    expected = [0.5 / (std + EPS), -0.5 / (std + EPS)] * 2
    assert adv[:4].tolist() == pytest.approx([expected[0], expected[1], expected[1], expected[0]])
    assert adv[4:].tolist() == [0.0] * 4 and flat.tolist() == [False, True]  # exactly 0, not float rounding


def test_the_clipped_token_loss_and_kl_equal_a_hand_computation():
    logps = torch.tensor([-1.0, -2.0, -0.5, -3.0], requires_grad=True)
    old = torch.tensor([-1.0, -2.5, -0.1, -2.0])  # ratios 1, e^0.5, e^-0.4, e^-1
    adv = torch.tensor([1.0, 1.0, -2.0, -2.0])
    ref = torch.tensor([-1.5, -2.0, -0.5, -2.0])
    loss, clipped, kl = grpo_loss(logps, old, adv, epsilon=0.2, beta=0.1, ref_logps=ref)
    r = [1.0, math.exp(0.5), math.exp(-0.4), math.exp(-1.0)]
    pg = [-min(r[0] * 1, 1.0), -min(r[1], 1.2), -min(r[2] * -2, 0.8 * -2), -min(r[3] * -2, 0.8 * -2)]
    k3 = [math.exp(d) - d - 1 for d in (-0.5, 0.0, 0.0, 1.0)]
    assert loss.tolist() == pytest.approx([p + 0.1 * k for p, k in zip(pg, k3, strict=True)], rel=1e-6)
    assert kl.tolist() == pytest.approx(k3, rel=1e-6)
    # clipped: token 1 (ratio 1.65 > 1.2 with A > 0); tokens 2, 3 (ratio < 0.8 with A < 0) take the clipped value
    assert clipped.tolist() == [False, True, True, True]
    loss.sum().backward()
    # a clipped token gives no policy gradient: only the KL's d/dlogp = 0.1 * (1 - exp(ref - logp))
    assert logps.grad[1].item() == pytest.approx(0.1 * (1 - math.exp(0.0)), abs=1e-7)
    assert logps.grad[0].item() == pytest.approx(-1.0 + 0.1 * (1 - math.exp(-0.5)), rel=1e-6)
    # the ratio at the rollout (old = the weights themselves, one update per rollout) is 1: nothing clipped
    same = grpo_loss(logps.detach(), logps.detach(), adv, 0.2)[1]
    assert not same.any()


def test_the_sampling_seed_depends_on_seed_step_and_micro_batch_only():
    assert rollout_seed(0, 3, 1) == rollout_seed(0, 3, 1)
    assert len({rollout_seed(0, 3, 1), rollout_seed(0, 4, 1), rollout_seed(0, 3, 2), rollout_seed(1, 3, 1)}) == 4


@pytest.fixture(params=sorted(FAMILIES))
def family_and_tiny(request):
    family = FAMILIES[request.param]
    torch.manual_seed(0)
    return family, family.tiny()


def _t(**kw) -> TrainCfg:
    return TrainCfg(method="grpo", grpo_generations=4, grpo_max_new_tokens=3, rewards=[RewardCfg(metric="anls")],
                    **kw)


LENGTH = [Reward("length", 1.0, lambda s, c: float(len(c)))]
"""A reward with spread among random completions: every group's advantages are non-zero."""


def test_a_grpo_step_trains_the_sampled_tokens_and_only_trainable_parameters(family_and_tiny):
    family, tiny = family_and_tiny
    model, t = tiny.model, _t()
    for name, p in model.named_parameters():
        p.requires_grad_(freeze_group_of(family, name) not in ("vision", "projector"))
    samples, images = [sample(0), sample(1, question="What is it?", target="a shirt")], [[image()], [image("blue")]]
    ro = rollout(model, family, tiny.processor, samples, images, None, LENGTH, t, 512, seed=7)
    again = rollout(model, family, tiny.processor, samples, images, None, LENGTH, t, 512, seed=7)
    assert ro.completions == again.completions and len(ro.completions) == 8  # seeded: the same completions
    labels = ro.batch.inputs["labels"]
    assert ro.batch.n_target_tokens == int((labels != IGNORE_INDEX).sum())
    assert ((labels != IGNORE_INDEX).sum(1) >= torch.tensor(ro.lengths)).all()  # the answer (+ its stop token)
    tok, stop = tiny.processor.tokenizer, stop_ids(model, tiny.processor.tokenizer)
    trained = [[x for x in row[row != IGNORE_INDEX].tolist() if x not in stop] for row in labels]
    assert [answer_text(tok, ids) for ids in trained] == ro.completions  # exactly the sampled tokens are trained
    if family.shift_labels:  # ... at the positions they were sampled at
        mask = labels != IGNORE_INDEX
        assert torch.equal(ro.batch.inputs["input_ids"][mask], labels[mask])
        assert ro.batch.inputs["attention_mask"][mask].all()
    assert ro.advantages.abs().sum() > 0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    inputs = {k: v for k, v in ro.batch.inputs.items() if k != "labels"}
    sums, counts, (kl, clipped) = policy_losses(model, family, inputs, labels, ro, t, accepts_logits_to_keep(model),
                                                logit_prefix_of(family, model))
    assert counts.tolist() == (labels != IGNORE_INDEX).sum(1).tolist() and kl == 0 and clipped == 0
    (sums.sum() / counts.sum()).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable, sorted(changed - trainable)[:3]


def test_the_kl_reference_is_the_adapter_disabled_model():
    from peft import LoraConfig, get_peft_model

    family = FAMILIES["llava"]
    torch.manual_seed(0)
    tiny = family.tiny()
    model = get_peft_model(tiny.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    t = _t(grpo_beta=0.5)
    samples, images = [sample(0), sample(1)], [[image()], [image("blue")]]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    kls = []
    for step in range(3):
        ro = rollout(model, family, tiny.processor, samples, images, None, LENGTH, t, 512, seed=step)
        inputs = {k: v for k, v in ro.batch.inputs.items() if k != "labels"}
        sums, counts, (kl, _) = policy_losses(model, family, inputs, ro.batch.inputs["labels"], ro, t,
                                              accepts_logits_to_keep(model), 0)
        kls.append(kl)
        (sums.sum() / counts.sum()).backward()
        opt.step()
        opt.zero_grad()
    assert kls[0] == pytest.approx(0.0, abs=1e-6)  # a fresh adapter (B = 0): the policy IS the reference
    assert kls[-1] > 1e-6
