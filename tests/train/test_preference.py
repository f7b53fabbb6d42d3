"""Preference pairs (`Sample.chosen` / `rejected`) and the DPO loss (train/preference.py): the record checks, the loss
against a hand computation, and per family: a pair batch carries the family's extras to both answers (its
log-probabilities equal those of the chosen and rejected samples encoded alone) and DPO steps raise the margin."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from PIL import Image

from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import FAMILIES
from vlmtune.models.labels import IGNORE_INDEX
from vlmtune.models.loss import accepts_logits_to_keep, logit_prefix_of
from vlmtune.train.preference import answer_logps, dpo_loss, encode_pairs, pair_samples, split_pairs


def pair(i: int = 0, chosen: str = "red", rejected: str = "a blue square", **kw) -> Sample:
    return Sample(id=f"pair-{i}", images=["a.png"], messages=[user("What colour is the top?")], chosen=chosen,
                  rejected=rejected, **kw)


def image(colour: str = "red") -> Image.Image:
    img = Image.new("RGB", (40, 40), "white")
    img.paste(Image.new("RGB", (20, 20), colour), (10, 10))
    return img


# ---------------------------------------------------------------- the record


def test_a_pair_is_two_ordinary_samples_answering_the_same_prompt():
    chosen, rejected = pair(answers=["red", "crimson"]).pair()
    assert chosen.messages[-1] == assistant("red") and rejected.messages[-1] == assistant("a blue square")
    assert chosen.messages[:-1] == rejected.messages[:-1] == [user("What colour is the top?")]
    assert chosen.images == rejected.images == ["a.png"] and chosen.answers == ["red", "crimson"]
    assert chosen.chosen is None and chosen.target == "red"
    assert pair().gold() == ["red"] and pair(answers=["crimson"]).gold() == ["crimson"]


@pytest.mark.parametrize(("fields", "error"), [
    ({"chosen": "red"}, "needs both 'chosen' and 'rejected'"),
    ({"rejected": "red"}, "needs both 'chosen' and 'rejected'"),
    ({"chosen": "red", "rejected": "  "}, "an empty rejected answer"),
    ({"chosen": "red", "rejected": "red "}, "the same answer"),
    ({"chosen": "red", "rejected": "blue", "messages": [user("q?"), assistant("red")]}, "end with the user's turn"),
])
def test_a_malformed_pair_is_refused_naming_the_sample(fields, error):
    row = {"id": "p7", "images": ["a.png"], "messages": [user("What colour?")]} | fields
    with pytest.raises(ValueError, match=error) as e:
        Sample.from_json(json.loads(json.dumps(row)))
    assert "p7" in str(e.value)


def test_the_manifest_schema_types_the_pair_fields():
    row = {"id": "p1", "messages": [user("q?", 0)], "chosen": 3, "rejected": ""}
    with pytest.raises(ValueError, match=r"chosen: must be a string, got integer 3; rejected: must not be empty"):
        Sample.from_json(row)
    assert Sample.from_json(pair().to_json()) == pair()
    with pytest.raises(ValueError, match="not a preference pair"):
        Sample(id="s", messages=[user("q?", 0), assistant("a")]).pair()


# ---------------------------------------------------------------- the loss


def test_the_dpo_loss_equals_a_hand_computation():
    policy_c, policy_r = torch.tensor([-3.0, -7.5]), torch.tensor([-4.0, -2.0])
    ref_c, ref_r = torch.tensor([-3.5, -6.0]), torch.tensor([-3.0, -2.5])
    beta = 0.2
    out = dpo_loss(policy_c, policy_r, ref_c, ref_r, beta)
    for i in range(2):
        z = beta * ((policy_c[i] - ref_c[i]) - (policy_r[i] - ref_r[i])).item()
        assert out.losses[i].item() == pytest.approx(math.log(1 + math.exp(-z)), rel=1e-6)
    smoothed = dpo_loss(policy_c, policy_r, ref_c, ref_r, beta, label_smoothing=0.1)
    z = beta * ((-3.0 + 3.5) - (-4.0 + 3.0))
    expected = 0.9 * math.log(1 + math.exp(-z)) + 0.1 * math.log(1 + math.exp(z))
    assert smoothed.losses[0].item() == pytest.approx(expected)
    stats = out.stats(policy_c, policy_r)
    assert stats["rewards/chosen"] == pytest.approx(beta * ((-3.0 + 3.5) + (-7.5 + 6.0)) / 2)
    assert stats["rewards/margin"] == pytest.approx(stats["rewards/chosen"] - stats["rewards/rejected"])
    assert stats["rewards/accuracy"] == 0.5  # pair 0: margin 0.3 > 0; pair 1: -0.4
    assert stats["logps/rejected"] == pytest.approx(-3.0)


def test_the_reference_gets_no_gradient_and_bad_settings_are_refused():
    policy = torch.tensor([-3.0, -4.0], requires_grad=True)
    ref = torch.tensor([-3.0, -4.0], requires_grad=True)
    dpo_loss(policy[:1], policy[1:], ref[:1], ref[1:]).losses.sum().backward()
    assert policy.grad.abs().sum() > 0 and ref.grad is None
    with pytest.raises(ValueError, match="beta must be positive"):
        dpo_loss(policy, policy, ref, ref, beta=0)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(policy, policy, ref, ref, label_smoothing=0.5)


# ---------------------------------------------------------------- per family


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_and_tiny(request):
    family = FAMILIES[request.param]
    torch.manual_seed(0)
    return family, family.tiny()


def _logps(model, family, batch):
    return answer_logps(model, family, batch, accepts_logits_to_keep(model), logit_prefix_of(family, model))


def test_a_pair_batch_gives_each_answer_the_log_prob_it_has_alone(family_and_tiny):
    """Every extra input the family builds (grids, token types, masks) reaches the chosen AND the rejected rows."""
    family, tiny = family_and_tiny
    model = tiny.model.eval()
    samples = [pair(0), pair(1, chosen="blue", rejected="it is green")]
    images = [[image()], [image("blue")]]
    batch = encode_pairs(family, tiny.processor, samples, images, 512)
    assert batch.ids == [s.id for s in pair_samples(samples)]
    with torch.no_grad():
        logps, counts = _logps(model, family, batch)
        chosen, rejected = split_pairs(logps)
        rows = pair_samples(samples)
        alone = [_logps(model, family, family.encode(tiny.processor, [s], [images[i % 2]], "train", 512))
                 for i, s in enumerate(rows)]
    torch.testing.assert_close(chosen, torch.cat([a[0] for a in alone[:2]]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rejected, torch.cat([a[0] for a in alone[2:]]), rtol=1e-4, atol=1e-4)
    assert counts.tolist() == [int(a[1]) for a in alone]
    labels = batch.inputs["labels"]
    assert [int((row != IGNORE_INDEX).sum()) for row in labels] == counts.tolist()
    assert (chosen < 0).all() and (rejected < 0).all()


def test_dpo_steps_raise_the_chosen_answers_margin(family_and_tiny):
    family, tiny = family_and_tiny
    policy = copy.deepcopy(tiny.model).eval()  # no dropout: the reference pass and the first policy pass agree
    samples = [pair(0), pair(1, chosen="blue", rejected="it is green")]
    batch = encode_pairs(family, tiny.processor, samples, [[image()], [image("blue")]], 512)
    with torch.no_grad():
        ref_c, ref_r = split_pairs(_logps(policy, family, batch)[0])
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=3e-3)
    margins = []
    for _ in range(4):
        chosen, rejected = split_pairs(_logps(policy, family, batch)[0])
        out = dpo_loss(chosen, rejected, ref_c, ref_r, beta=0.5)
        if not margins:  # policy == reference: every implicit reward is 0, the loss log 2
            torch.testing.assert_close(out.losses, torch.full_like(out.losses, math.log(2)), rtol=1e-4, atol=1e-4)
        margins.append(out.stats(chosen, rejected)["rewards/margin"])
        out.losses.mean().backward()
        opt.step()
        opt.zero_grad()
    print(family.name, "DPO margins:", [round(m, 4) for m in margins])
    assert margins[-1] > margins[0] and margins[-1] > 0
