"""The pix2struct family: the header is drawn offline exactly as the processor draws it, max_patches is the
processor's, labels are answer + </s> per sample, generation starts from the decoder start token."""

import copy

import numpy as np
import pytest
import torch
import transformers.models.pix2struct.image_processing_pil_pix2struct as p2s_images
from PIL import Image

from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import FAMILIES, pix2struct
from vlmtune.models.labels import IGNORE_INDEX

FAMILY = FAMILIES["pix2struct"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return FAMILY.tiny()


def _vqa(i=0, answer="red", question="What colour is the top?"):
    return Sample(id=f"q{i}", messages=[user(question), assistant(answer)], images=["a.png"])


def _img(colour="red", size=(40, 40)):
    img = Image.new("RGB", size, "white")
    img.paste(Image.new("RGB", (size[0] // 2, size[1] // 2), colour), (size[0] // 4, size[1] // 4))
    return [img]


def test_encode_gives_what_the_processor_gives_with_the_same_local_font(tiny, monkeypatch):
    """The processor itself would download Arial; given our font instead, its VQA path and ours are bit-identical."""
    render_text = p2s_images.render_text
    monkeypatch.setattr(p2s_images, "render_text",
                        lambda text, **kw: render_text(text, font_bytes=pix2struct._font_bytes()))
    img = _img(size=(64, 32))
    ours = FAMILY.encode(tiny.processor, [_vqa()], [img], "generate", 512).inputs
    theirs = tiny.processor(images=img, text="What colour is the top?", max_patches=64, return_tensors="pt")
    assert torch.equal(ours["flattened_patches"], theirs["flattened_patches"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])


def test_max_patches_is_the_processors_own(tiny):
    processor = FAMILY.tiny().processor
    processor.image_processor.max_patches = 32
    batch = FAMILY.encode(processor, [_vqa()], [_img()], "generate", 512)
    assert batch.inputs["flattened_patches"].shape[1] == 32 == FAMILY.image_tokens(processor, 40, 40)


def test_labels_are_answer_and_end_token_right_padded(tiny):
    tok = tiny.processor.tokenizer
    samples = [_vqa(0, "red"), _vqa(1, "blue trousers")]
    labels = FAMILY.encode(tiny.processor, samples, [_img(), _img()], "train", 512).inputs["labels"]
    for b, answer in enumerate(["red", "blue trousers"]):
        row = labels[b][labels[b] != IGNORE_INDEX].tolist()
        assert row == tok(answer, add_special_tokens=False).input_ids + [tok.eos_token_id]
        assert (labels[b, len(row):] == IGNORE_INDEX).all()


def test_multi_turn_and_multi_image_samples_are_refused(tiny):
    two_turns = Sample(id="mt", messages=[user("What colour?"), assistant("red"), user("Sure?", 0), assistant("yes")],
                       images=["a.png"])
    with pytest.raises(ValueError, match="one question/answer pair"):
        FAMILY.encode(tiny.processor, [two_turns], [_img()], "train", 512)
    two_images = Sample(id="mi", messages=[user("Same?", 2), assistant("no")], images=["a.png", "b.png"])
    with pytest.raises(ValueError, match="2 image"):
        FAMILY.encode(tiny.processor, [two_images], [_img() + _img()], "train", 512)


def test_generation_starts_from_the_decoder_start_token_and_stops(tiny):
    model = copy.deepcopy(tiny.model)
    batch = FAMILY.encode(tiny.processor, [_vqa()], [_img()], "train", 512)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        model(**batch.inputs).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    prompt = FAMILY.encode(tiny.processor, [_vqa(), _vqa()], [_img(), _img()], "generate", 512)
    with torch.no_grad():
        bounded = model.generate(**prompt.inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
        out = model.generate(**prompt.inputs, max_new_tokens=8, do_sample=False)
    start = model.generation_config.decoder_start_token_id
    assert (bounded[:, 0] == start).all() and bounded.shape[1] == 1 + 2  # column 0 is the start token, not generated
    new = out[0, 1:].tolist()
    print("pix2struct generated:", tiny.processor.tokenizer.convert_ids_to_tokens(new))
    assert tiny.processor.tokenizer.decode(new, skip_special_tokens=True).strip() == "red"
    assert new[-1] == model.generation_config.eos_token_id and len(new) < 8


def test_the_fallback_font_needs_no_file(monkeypatch):
    monkeypatch.setattr(pix2struct, "DEJAVU", pix2struct.Path("/nonexistent/DejaVuSans.ttf"))
    pix2struct._font_bytes.cache_clear()
    try:
        header = pix2struct.render_header(_img()[0], "What colour is the top?")
        assert header.width > 40 and np.asarray(header).min() == 0  # black text drawn
    finally:
        pix2struct._font_bytes.cache_clear()
