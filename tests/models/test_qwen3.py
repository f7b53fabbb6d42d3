"""Qwen3-VL (dense and MoE) and Qwen3.5: a sample's loss and generation logits do not depend on the padding around
it (Qwen3.5's linear-attention layers included), Qwen3.5's thinking block is prompt not answer, multi-turn samples
the Qwen3.5 template cannot label are refused by name, and loading a Qwen3.5 checkpoint without a generation config
stops at `<|im_end|>`."""

import json

import pytest
import torch
from PIL import Image

from vlmtune.config import ModelCfg
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import FAMILIES
from vlmtune.models.labels import IGNORE_INDEX, trained_tokens
from vlmtune.models.loss import forward_losses


@pytest.fixture(scope="module", params=["qwen3_vl", "qwen3_vl_moe", "qwen3_5"])
def family_and_tiny(request):
    family = FAMILIES[request.param]
    torch.manual_seed(0)
    tiny = family.tiny()
    tiny.model.eval()
    return family, tiny


def _img(size=(40, 40), colour="red"):
    return Image.new("RGB", size, colour)


SHORT = Sample(id="short", images=["a.png"], messages=[user("What colour?"), assistant("red")])
LONG = Sample(id="long", images=["b.png"], messages=[
    user("What colour is the top of the person in this image, and which shape?"),
    assistant("a person wearing a red top and blue trousers, a green circle")])
TEXT = Sample(id="text", images=[], messages=[user("What colour is red?", n_images=0), assistant("red")])


def test_a_samples_loss_is_the_same_alone_and_right_padded_in_a_batch(family_and_tiny):
    """Training pads on the right: a short sample beside long ones gets padding after its tokens, which the causal
    attention and (Qwen3.5) the causal recurrence and convolution of the linear attention never see."""
    family, tiny = family_and_tiny
    images = {"short": [_img()], "long": [_img((90, 40), "blue")], "text": []}

    def losses(samples):
        batch = family.encode(tiny.processor, samples, [images[s.id] for s in samples], "train", 512)
        inputs = dict(batch.inputs)
        labels = inputs.pop("labels")
        with torch.no_grad():
            return forward_losses(tiny.model, family, inputs, labels, False)[0], batch

    together, batch = losses([SHORT, LONG, TEXT])
    assert (batch.inputs["attention_mask"] == 0).sum(dim=1).tolist()[0] > 0, "the short sample is padded"
    for k, sample in enumerate([SHORT, LONG, TEXT]):
        alone, _ = losses([sample])
        torch.testing.assert_close(together[k], alone[0], rtol=1e-5, atol=1e-5)


def test_generation_logits_are_the_same_alone_and_left_padded(family_and_tiny):
    family, tiny = family_and_tiny
    samples, images = [SHORT, LONG], [[_img()], [_img((90, 40), "blue")]]
    batch = family.encode(tiny.processor, samples, images, "generate", 512)
    assert batch.inputs["attention_mask"][0, 0] == 0, "the short prompt is padded on the left"
    with torch.no_grad():
        together = tiny.model(**batch.inputs).logits[:, -1]
        for k in range(2):
            alone = family.encode(tiny.processor, [samples[k]], [images[k]], "generate", 512)
            torch.testing.assert_close(together[k], tiny.model(**alone.inputs).logits[0, -1], rtol=1e-4, atol=1e-5)
        greedy = tiny.model.generate(**batch.inputs, max_new_tokens=4, do_sample=False)
        one = family.encode(tiny.processor, [SHORT], [[_img()]], "generate", 512)
        alone = tiny.model.generate(**one.inputs, max_new_tokens=4, do_sample=False)
    assert greedy[0, -4:].tolist() == alone[0, -4:].tolist()


def test_qwen3_5_trains_the_answer_after_the_empty_thinking_block():
    family = FAMILIES["qwen3_5"]
    tiny = family.tiny()
    tok = tiny.processor.tokenizer
    batch = family.encode(tiny.processor, [SHORT], [[_img()]], "train", 512)
    ids, labels = batch.inputs["input_ids"][0], batch.inputs["labels"][0]
    assert trained_tokens(tok, ids, labels) == tok.convert_ids_to_tokens(tok("red").input_ids) + ["<|im_end|>"]
    first = int((labels != IGNORE_INDEX).nonzero()[0])
    assert tok.decode(ids[:first]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    prompt = family.encode(tiny.processor, [SHORT], [[_img()]], "generate", 512).inputs["input_ids"][0]
    assert torch.equal(prompt, ids[:first])


def test_qwen3_5_refuses_a_multi_turn_sample_by_name():
    """Its template drops the thinking block of answers before the last user turn: the earlier turns do not render
    as prefixes, and the sample is refused rather than trained on misplaced tokens."""
    family = FAMILIES["qwen3_5"]
    tiny = family.tiny()
    sample = Sample(id="mt-3", images=["a.png"], messages=[user("What colour is the top?"), assistant("red"),
                                                          user("And the trousers?", n_images=0), assistant("blue")])
    with pytest.raises(ValueError, match="sample 'mt-3': the chat template does not render turn 1 as a prefix"):
        family.encode(tiny.processor, [sample], [[_img()]], "train", 512)


def test_qwen3_vl_trains_every_answer_of_a_multi_turn_sample():
    family = FAMILIES["qwen3_vl"]
    tiny = family.tiny()
    tok = tiny.processor.tokenizer
    sample = Sample(id="mt", images=["a.png"], messages=[user("What colour is the top?"), assistant("red"),
                                                         user("And the trousers?", n_images=0), assistant("blue")])
    b = family.encode(tiny.processor, [sample], [[_img()]], "train", 256)
    red, blue = (tok.convert_ids_to_tokens(tok(answer).input_ids) for answer in ("red", "blue"))
    assert trained_tokens(tok, b.inputs["input_ids"][0], b.inputs["labels"][0]) == red + ["<|im_end|>"] + blue + [
        "<|im_end|>"]


def test_loading_qwen3_5_without_a_generation_config_stops_at_im_end(tmp_path):
    """Qwen/Qwen3.5-0.8B ships no generation_config.json and its config's eos is <|endoftext|>."""
    family = FAMILIES["qwen3_5"]
    tiny = family.tiny()
    tok = tiny.processor.tokenizer
    pad = tok.pad_token_id
    tiny.model.config.text_config.eos_token_id = pad
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").unlink()
    assert json.loads((tmp_path / "config.json").read_text())["text_config"]["eos_token_id"] == pad
    loaded = family.load(ModelCfg(family="qwen3_5", path=str(tmp_path)))
    eos = loaded.model.generation_config.eos_token_id
    assert tok.convert_tokens_to_ids("<|im_end|>") in eos and pad in eos, eos
    assert type(loaded.processor).__name__ == "Qwen3Processor"  # qwen3_vl.py: torchvision-free, Qwen3-VL video
