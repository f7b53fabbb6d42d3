"""The llava family (and the built-in model, one of its members): label masking, limits, LoRA, save/load."""

import pytest
import torch
from PIL import Image

from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import FAMILIES, SampleTooLong
from vlmtune.models.labels import IGNORE_INDEX, trained_tokens

FAMILY = FAMILIES["llava"]


def _vqa(i=0, answer="red", question="What colour is the top?"):
    return Sample(id=f"q{i}", messages=[user(question), assistant(answer)], images=["a.png"])


def _img(colour="red", size=(32, 32)):
    return [Image.new("RGB", size, colour)]


def test_trained_tokens_are_exactly_answer_and_end(tiny_llava):
    tok = tiny_llava.processor.tokenizer
    samples = [_vqa(0, "red"), _vqa(1, "dark red", "Describe the colour of the top in two words, please.")]
    batch = FAMILY.encode(tiny_llava.processor, samples, [_img(), _img(size=(50, 20))], "train", 256)
    ids, labels = batch.inputs["input_ids"], batch.inputs["labels"]
    got = [trained_tokens(tok, ids[b], labels[b]) for b in range(2)]
    print("trained tokens:", got)
    assert got[0] == ["Ġred", "</s>"]
    assert got[1] == tok.convert_ids_to_tokens(tok(" dark red").input_ids) + ["</s>"]
    # nothing else: no image, pad, role or question token carries a label
    image_id = tiny_llava.processor.image_token_id
    assert not ((labels != IGNORE_INDEX) & (ids == image_id)).any()
    assert not ((labels != IGNORE_INDEX) & (batch.inputs["attention_mask"] == 0)).any()
    assert batch.n_target_tokens == sum(len(g) for g in got)
    # image tokens are all there: (32/8)^2 = 16 per image
    assert int((ids == image_id).sum()) == 2 * 16


def test_multi_turn_trains_every_assistant_turn(tiny_llava):
    tok = tiny_llava.processor.tokenizer
    s = Sample(id="mt", images=["a.png"], messages=[
        user("What colour is the top?"), assistant("red"),
        user("And the bottom?", n_images=0), assistant("blue")])
    b = FAMILY.encode(tiny_llava.processor, [s], [_img()], "train", 256)
    assert trained_tokens(tok, b.inputs["input_ids"][0], b.inputs["labels"][0]) == ["Ġred", "</s>", "Ġblue", "</s>"]


def test_logits_at_loss_positions_give_the_same_loss_and_gradients(tiny_llava):
    from vlmtune.models.loss import accepts_logits_to_keep, loss_positions, token_losses

    model = tiny_llava.model
    assert accepts_logits_to_keep(model)
    samples = [_vqa(0, "red"), _vqa(1, "dark red", "Describe the colour of the top in two words, please.")]
    b = FAMILY.encode(tiny_llava.processor, samples, [_img(), _img("blue")], "train", 256)
    labels = b.inputs.pop("labels")
    kept = loss_positions(labels, FAMILY.shift_labels)
    assert int(kept.sum()) == b.n_target_tokens < labels.numel() // 4  # a small part of the sequence

    def loss_and_grads(**kw):
        model.zero_grad()
        logits = model(**b.inputs, **kw).logits
        sums, counts = token_losses(logits, labels, FAMILY.shift_labels, kw.get("logits_to_keep"))
        (sums.sum() / counts.sum()).backward()
        return sums.detach(), counts, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full_sums, full_counts, full_grads = loss_and_grads()
    kept_sums, kept_counts, kept_grads = loss_and_grads(logits_to_keep=kept)
    model.zero_grad()
    assert torch.equal(full_counts, kept_counts)
    torch.testing.assert_close(kept_sums, full_sums)
    assert full_grads.keys() == kept_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(kept_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_text_only_and_image_samples_share_a_batch(tiny_llava):
    text_only = Sample(id="t", messages=[user("Say yes.", n_images=0), assistant("yes")])
    b = FAMILY.encode(tiny_llava.processor, [text_only, _vqa()], [[], _img()], "train", 256)
    assert b.inputs["pixel_values"].shape[0] == 1
    assert torch.isfinite(tiny_llava.model(**b.inputs).loss)


def test_too_long_sample_is_rejected_not_truncated(tiny_llava):
    long_q = "What colour is the top? " * 20
    with pytest.raises(SampleTooLong, match=r"sample 'q7': \d+ tokens \(16 image tokens \+ \d+ text tokens\) exceed"):
        FAMILY.encode(tiny_llava.processor, [_vqa(7, question=long_q)], [_img()], "train", 40)


def test_generate_prompt_is_left_padded_and_stops(tiny_llava):
    p = tiny_llava.processor
    samples = [_vqa(0), _vqa(1, question="What is the person wearing on top today?")]
    b = FAMILY.encode(p, samples, [_img(), _img()], "generate", 256)
    assert "labels" not in b.inputs
    assert (b.inputs["attention_mask"][:, -1] == 1).all(), "left padding: every prompt ends at the last column"
    text = p.tokenizer.decode(b.inputs["input_ids"][1], skip_special_tokens=False)
    assert text.endswith("ASSISTANT:")
    out = tiny_llava.model.generate(**b.inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] - b.inputs["input_ids"].shape[1] <= 3


def test_builtin_round_trips_through_auto_classes(tmp_path, tiny_llava):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    tiny_llava.model.save_pretrained(tmp_path)
    tiny_llava.processor.save_pretrained(tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    processor = AutoProcessor.from_pretrained(tmp_path)
    b = FAMILY.encode(processor, [_vqa()], [_img()], "train", 256)
    b0 = FAMILY.encode(tiny_llava.processor, [_vqa()], [_img()], "train", 256)
    assert torch.equal(b.inputs["input_ids"], b0.inputs["input_ids"])
    tiny_llava.model.eval()
    with torch.no_grad():
        assert torch.equal(model(**b.inputs).logits, tiny_llava.model(**b0.inputs).logits)


def test_lora_trains_only_adapters_and_freezing_holds(tiny_llava):
    import copy

    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(tiny_llava.model), LoraConfig(r=4, target_modules=FAMILY.lora_targets[0]))
    targeted = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    assert targeted and all("language_model" in n for n in targeted), "LoRA only on the language model"
    b = FAMILY.encode(tiny_llava.processor, [_vqa()], [_img()], "train", 256)
    model(**b.inputs).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all("lora_" in n for n in with_grad)


def test_freeze_groups_cover_every_parameter(tiny_llava):
    from vlmtune.models.family import freeze_group_of

    groups = {freeze_group_of(FAMILY, n) for n, _ in tiny_llava.model.named_parameters()}
    assert groups == {"vision", "projector", "language"}
