"""LLaVA-NeXT specifics: the number of image tokens depends on each image's size, in one sample and across a batch."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import llava_next
from vlmtune.models.labels import IGNORE_INDEX


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return llava_next.tiny()


def test_images_of_different_sizes_get_their_own_token_counts_and_every_turn_is_trained(tiny):
    sizes = [(40, 40), (100, 20)]
    counts = [llava_next.image_token_count(tiny.processor, *s) for s in sizes]
    assert counts[0] != counts[1]
    two_turns = Sample(id="mt", images=["a.png", "b.png"], messages=[
        user("What colour is the top?", n_images=2), assistant("red"), user("And the trousers?", n_images=0),
        assistant("blue")])
    text_only = Sample(id="t", messages=[user("What colour is the top?", n_images=0), assistant("green")])
    images = [[Image.new("RGB", s, "red") for s in sizes], []]
    batch = llava_next.encode(tiny.processor, [two_turns, text_only], images, "train", 512)
    ids, labels = batch.inputs["input_ids"], batch.inputs["labels"]
    assert int((ids[0] == tiny.processor.image_token_id).sum()) == sum(counts)
    tok = tiny.processor.tokenizer
    assert tok.decode(labels[0][labels[0] != IGNORE_INDEX]) == " red</s> blue</s>"
    assert tok.decode(labels[1][labels[1] != IGNORE_INDEX]) == " green</s>"
    assert torch.isfinite(tiny.model(**batch.inputs).loss)


MISTRAL_TEMPLATE = (  # llava-hf/llava-v1.6-mistral-7b-hf's template; END is "</s> " now, was a literal "<\s> " before
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + 'END'}}"
    "{% endif %}{% endfor %}"
)


def test_mistral_template_trains_up_to_the_end_token_and_a_template_without_one_is_refused(tiny):
    import copy

    processor = copy.deepcopy(tiny.processor)
    sample = Sample(id="m", images=["a.png"], messages=[user("What colour is the top?"), assistant("red")])
    processor.chat_template = MISTRAL_TEMPLATE.replace("END", "</s> ")
    batch = llava_next.encode(processor, [sample], [[Image.new("RGB", (40, 40))]], "train", 512)
    labels = batch.inputs["labels"][0]
    assert processor.tokenizer.decode(labels[labels != IGNORE_INDEX]) == " red</s>"
    processor.chat_template = MISTRAL_TEMPLATE.replace("END", "<\\\\s> ")
    with pytest.raises(ValueError, match="without the end token"):
        llava_next.encode(processor, [sample], [[Image.new("RGB", (40, 40))]], "train", 512)
