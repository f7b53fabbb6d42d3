"""Mllama specifics: one `<|image|>` token per image, cross-attention masks, one BOS, text-only samples in a batch."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import mllama
from vlmtune.models.labels import IGNORE_INDEX


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return mllama.tiny()


def test_multi_image_multi_turn_and_text_only_samples_share_a_batch(tiny):
    p = tiny.processor
    two_turns = Sample(id="mt", images=["a.png", "b.png"], messages=[
        user("What colour is the top?", n_images=2), assistant("red"), user("And the trousers?", n_images=0),
        assistant("blue")])
    text_only = Sample(id="t", messages=[user("What colour is the top?", n_images=0), assistant("green")])
    images = [[Image.new("RGB", (40, 40), "red"), Image.new("RGB", (64, 16), "blue")], []]
    batch = mllama.encode(p, [two_turns, text_only], images, "train", 512)
    ids, labels = batch.inputs["input_ids"], batch.inputs["labels"]
    assert int((ids[0] == p.image_token_id).sum()) == 2 and int((ids[1] == p.image_token_id).sum()) == 0
    assert int((ids == p.tokenizer.bos_token_id).sum()) == 2, "one <|begin_of_text|> per sample, not two"
    assert p.tokenizer.decode(labels[0][labels[0] != IGNORE_INDEX]) == "red<|eot_id|>blue<|eot_id|>"
    assert p.tokenizer.decode(labels[1][labels[1] != IGNORE_INDEX]) == "green<|eot_id|>"
    assert batch.inputs["pixel_values"].shape[:2] == (2, 2)  # (batch, images per sample, tiles, ...)
    mask = batch.inputs["cross_attention_mask"]
    assert mask[1].sum() == 0 and mask[0, : int(ids[0].tolist().index(p.image_token_id))].sum() == 0
    assert p.image_token_id == tiny.model.config.text_config.vocab_size, "the LM head never predicts <|image|>"
    assert torch.isfinite(tiny.model(**batch.inputs).loss)


def test_generate_prompts_are_left_padded_and_end_with_the_assistant_header(tiny):
    p = tiny.processor
    short = Sample(id="s", images=["a.png"], messages=[user("Colour?"), assistant("red")])
    long = Sample(id="l", images=["a.png"], messages=[user("What colour is the top? " * 3), assistant("red")])
    batch = mllama.encode(p, [short, long], [[Image.new("RGB", (40, 40))]] * 2, "generate", 512)
    mask = batch.inputs["attention_mask"]
    assert mask[0, 0] == 0 and mask[:, -1].all()
    prompt = p.tokenizer.decode(batch.inputs["input_ids"][0])
    assert prompt.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
