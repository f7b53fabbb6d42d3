"""Every supported family through its own code paths with the checkpoint's real processor and chat template: the
labelled tokens are exactly the answer + the model's real stop token (its generation_config eos), no image token is
labelled, the generation prompt is the training prefix, and the image-token count of each real image size is what
`family.image_tokens` (and so `vlmtune data check --model`) says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.real.conftest import FOLDERS, real_path
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import FAMILIES
from vlmtune.models.labels import IGNORE_INDEX

SIZES = [(336, 336), (640, 480), (1280, 720), (600, 1800)]


@pytest.fixture(scope="module", params=sorted(FOLDERS))
def real(request):
    family = FAMILIES[request.param]
    path = real_path(request.param)
    return family, family.load_processor(path), path


def _stop_ids(path: str, tok) -> set[int]:
    """The model's stop tokens: its generation_config's eos, else its config.json's (which transformers derives the
    generation config from: GLM-4.1V's files have no generation_config.json), and the tokenizer's eos (Qwen3.5-0.8B
    has no generation_config and its config names <|endoftext|>; its chat turns end with the tokenizer's eos,
    <|im_end|>, which the family's `load` adds to the stop tokens)."""
    gen, config = Path(path) / "generation_config.json", Path(path) / "config.json"
    eos = json.loads(gen.read_text()).get("eos_token_id") if gen.is_file() else None
    if eos is None and config.is_file():
        config = json.loads(config.read_text())
        eos = config.get("eos_token_id", (config.get("text_config") or {}).get("eos_token_id"))
    if eos is None:
        return {tok.eos_token_id}
    return set(eos if isinstance(eos, list) else [eos]) | ({tok.eos_token_id} if not gen.is_file() else set())


def _image_token_id(path: str, processor):
    """The id the model replaces with image features: its config's (Gemma 3's processor also names the
    <start_of_image> token, which is not one of them), else the processor's."""
    config = json.loads((Path(path) / "config.json").read_text()) if (Path(path) / "config.json").is_file() else {}
    token_id = config.get("image_token_id", config.get("image_token_index"))
    return token_id if token_id is not None else getattr(processor, "image_token_id", None)


def _image(size, colour="red"):
    return Image.new("RGB", size, colour)


def _labelled(batch, row=0):
    labels = batch.inputs["labels"][row]
    return [int(t) for t in labels[labels != IGNORE_INDEX]]


@pytest.mark.parametrize("kind,answer", [("vqa", "red"), ("caption", "a person in a red top and blue trousers")])
def test_labelled_tokens_are_the_answer_and_the_real_stop_token(real, kind, answer):
    family, processor, path = real
    question = "What colour is the top?" if kind == "vqa" else "Describe the image."
    sample = Sample(id=kind, messages=[user(question), assistant(answer)], images=["a.png"], task=kind)
    batch = family.encode(processor, [sample], [[_image((640, 480))]], "train", 8192)
    labelled = _labelled(batch)
    tok = processor.tokenizer
    assert labelled[-1] in _stop_ids(path, tok), tok.convert_ids_to_tokens(labelled)
    assert tok.decode(labelled[:-1], skip_special_tokens=True).strip() == answer
    image_id = _image_token_id(path, processor)
    if image_id is not None:
        assert image_id not in labelled


def test_the_generation_prompt_is_the_training_prefix(real):
    family, processor, _ = real
    if not family.shift_labels:  # encoder-decoder (Pix2Struct): the prompt is the encoder's input, not a prefix
        pytest.skip("an encoder-decoder model's decoder starts from its start token")
    sample = Sample(id="p", messages=[user("What colour is the top?"), assistant("red")], images=["a.png"])
    image = [_image((640, 480))]
    train = family.encode(processor, [sample], [image], "train", 8192)
    gen = family.encode(processor, [sample], [image], "generate", 8192)
    ids = train.inputs["input_ids"][0]
    first = int((train.inputs["labels"][0] != IGNORE_INDEX).nonzero()[0])
    prompt = gen.inputs["input_ids"][0][gen.inputs["attention_mask"][0].bool()]
    assert torch.equal(prompt, ids[:first])


def test_multi_turn_and_two_images_where_the_family_takes_them(real):
    family, processor, path = real
    tok = processor.tokenizer
    turns = Sample(id="m", messages=[user("What colour is the top?"), assistant("red"), user("And the bottom?", 0),
                                     assistant("blue")], images=["a.png"])
    try:
        batch = family.encode(processor, [turns], [[_image((640, 480))]], "train", 8192)
    except ValueError as e:  # a single-turn format (PaliGemma, Pix2Struct) refuses with a clear message
        assert "turn" in str(e) or "one question" in str(e), e
    else:
        labelled = _labelled(batch)
        stops = [i for i, t in enumerate(labelled) if t in _stop_ids(path, tok)]
        assert len(stops) == 2 and stops[-1] == len(labelled) - 1, tok.convert_ids_to_tokens(labelled)
        assert tok.decode(labelled[: stops[0]], skip_special_tokens=True).strip() == "red"
        assert tok.decode(labelled[stops[0] + 1 : -1], skip_special_tokens=True).strip() == "blue"
    if family.multi_image:
        two = Sample(id="t", messages=[user("Are they the same colour?", 2), assistant("no")],
                     images=["a.png", "b.png"])
        batch = family.encode(processor, [two], [[_image((336, 336)), _image((640, 480), "blue")]], "train", 16384)
        assert tok.decode(_labelled(batch)[:-1], skip_special_tokens=True).strip() == "no"


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_image_tokens_per_real_size_are_what_the_family_says(real, size):
    from vlmtune.runs import image_token_report

    family, processor, path = real
    image_id = _image_token_id(path, processor)
    if image_id is None:
        pytest.skip(f"{family.name}: the image is not a run of placeholder tokens (Pix2Struct patches)")
    sample = Sample(id="s", messages=[user("What is this?"), assistant("a box")], images=["a.png"])
    batch = family.encode(processor, [sample], [[_image(size)]], "train", 16384)
    n = int((batch.inputs["input_ids"][0] == image_id).sum())
    assert n == family.image_tokens(processor, *size)
    assert image_token_report(path, [size])["image_tokens"][f"{size[0]}x{size[1]}"] == n  # data check --model


@pytest.mark.parametrize("name", ["qwen3_vl", "qwen3_5"])
def test_the_tiny_models_chat_template_renders_as_the_checkpoints(name):
    """The families' CHAT_TEMPLATE (the checkpoint's, its lines stripped and joined) renders every conversation as
    the checkpoint's own template does: system turns, several turns and images, tool-less, with and without the
    generation prompt."""
    import importlib

    from jinja2.exceptions import TemplateError

    processor = FAMILIES[name].load_processor(real_path(name))
    ours = importlib.import_module(f"vlmtune.models.{name}").CHAT_TEMPLATE
    assert ours != processor.chat_template and "\n" not in ours.replace("\\n", "")
    image, text = {"type": "image"}, lambda t: {"type": "text", "text": t}
    conversations = [
        [user("What colour is the top?"), assistant("red")],
        [{"role": "system", "content": [text("Answer briefly.")]}, user("Describe the image.", 2), assistant(" a b "),
         user("And now?", 0), assistant("c")],
        [{"role": "user", "content": "plain"}, {"role": "assistant", "content": "text"}],
        [{"role": "user", "content": [image, text("x")]}, {"role": "assistant", "content": [text("<think>\nhm\n"
                                                                                             "</think>\n\ny")]}],
    ]
    for messages in conversations:
        for k in range(1, len(messages) + 1):
            for generation in (False, True):
                got = []
                for template in (processor.chat_template, ours):
                    try:
                        got.append(processor.apply_chat_template(messages[:k], chat_template=template,
                                                                 add_generation_prompt=generation, tokenize=False))
                    except TemplateError as e:  # e.g. Qwen3.5's "No user query found" for a system turn alone
                        got.append(f"error: {e}")
                assert got[0] == got[1], (messages[:k], generation)
