"""BLIP-2 / InstructBLIP specifics beyond the contract: load(), the query-token count, multi-turn masks, what the
InstructBLIP Q-Former reads, and left-padded batched generation."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlmtune.config import ModelCfg
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import FAMILIES
from vlmtune.models.labels import IGNORE_INDEX

NAMES = ["blip2", "instructblip"]


def _image() -> list[Image.Image]:
    return [Image.new("RGB", (48, 40), "red")]


def _image_id(processor) -> int:
    return processor.tokenizer.convert_tokens_to_ids(str(processor.image_token))


@pytest.fixture(scope="module", params=NAMES)
def family_and_tiny(request):
    torch.manual_seed(0)
    family = FAMILIES[request.param]
    return family, family.tiny()


def test_load_reads_a_saved_tiny_model(family_and_tiny, tmp_path):
    family, tiny = family_and_tiny
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    loaded = family.load(ModelCfg(family=family.name, path=str(tmp_path)))
    assert type(loaded.model) is type(tiny.model) and loaded.family == family.name
    assert loaded.processor.num_query_tokens == tiny.processor.num_query_tokens


def test_the_query_tokens_come_first_and_match_image_tokens(family_and_tiny):
    family, tiny = family_and_tiny
    sample = Sample(id="q", messages=[user("What colour is the top?"), assistant("red")], images=["a.png"])
    for mode in ["train", "generate"]:
        ids = family.encode(tiny.processor, [sample], [_image()], mode, 512).inputs["input_ids"][0]
        n = family.image_tokens(tiny.processor, 48, 40)
        assert ids[:n].tolist() == [_image_id(tiny.processor)] * n
        assert int((ids == _image_id(tiny.processor)).sum()) == n
        assert ids[n] == tiny.processor.tokenizer.bos_token_id


def test_every_assistant_turn_is_trained(family_and_tiny):
    family, tiny = family_and_tiny
    tok = tiny.processor.tokenizer
    sample = Sample(id="mt", images=["a.png"], messages=[
        user("What colour is the top?"), assistant("red"), user("Describe the image.", n_images=0), assistant("a top"),
    ])
    batch = family.encode(tiny.processor, [sample], [_image()], "train", 512)
    labels = batch.inputs["labels"][0]
    trained = labels[labels != IGNORE_INDEX].tolist()
    print(family.name, "multi-turn trained tokens:", tok.convert_ids_to_tokens(trained))
    end = tiny.model.generation_config.eos_token_id
    assert trained.count(end) == 2 and trained[-1] == end
    first = trained.index(end)
    assert tok.decode(trained[:first]).strip() == "red" and tok.decode(trained[first + 1 : -1]).strip() == "a top"


def test_instructblip_qformer_reads_the_instruction_never_the_answer():
    family = FAMILIES["instructblip"]
    tiny = family.tiny()
    sample = Sample(id="i", messages=[user("What colour is the top?"), assistant("red")], images=["a.png"])
    qtok = tiny.processor.qformer_tokenizer
    seen = []
    for mode in ["train", "generate"]:
        q = family.encode(tiny.processor, [sample], [_image()], mode, 512).inputs["qformer_input_ids"][0]
        seen.append(qtok.decode(q, skip_special_tokens=True))
    assert seen == ["What colour is the top?"] * 2


def test_left_padded_batched_generation_equals_one_by_one(family_and_tiny):
    family, tiny = family_and_tiny
    samples = [Sample(id="s", messages=[user("top?"), assistant("red")], images=["a.png"]),
               Sample(id="l", messages=[user("What colour is the top and the trousers?"), assistant("red")],
                      images=["a.png"])]
    model = tiny.model.eval()

    def new_tokens(batch_samples):
        prompt = family.encode(tiny.processor, batch_samples, [_image()] * len(batch_samples), "generate", 512)
        assert prompt.inputs["attention_mask"][:, -1].all(), "left padding: every prompt ends at the last position"
        with torch.no_grad():
            out = model.generate(**prompt.inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        return out[:, prompt.inputs["input_ids"].shape[1] :].tolist()

    assert new_tokens(samples) == new_tokens(samples[:1]) + new_tokens(samples[1:])
