"""InternVL with the -hf checkpoint's tokenizer and chat template (../shared/real-models/OpenGVLab__InternVL3-1B-hf,
which has no config, image processor or processor files: see conftest.py). The image side is the tiny processor's
(its tiles and tokens per tile are not InternVL3-1B's); what is real is every text token: the copied chat template
is the checkpoint's, the labelled tokens are the answer + `<|im_end|>` (the tokenizer's eos), the image tokens the
processor writes are the tokenizer's `<img>` `<IMG_CONTEXT>` `</img>`, and the generation prompt is the training
prefix."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.real.conftest import REAL
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.video import Video
from vlmtune.models import FAMILIES, internvl
from vlmtune.models.labels import IGNORE_INDEX, trained_tokens

GOLDEN = Path(__file__).parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))
import make_internvl_video_golden as video_golden  # noqa: E402

FOLDER = REAL / "OpenGVLab__InternVL3-1B-hf"
pytestmark = pytest.mark.skipif(not (FOLDER / "tokenizer_config.json").is_file(), reason=f"{FOLDER} is absent")


@pytest.fixture(scope="module")
def processor():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(FOLDER)
    tiny = internvl.build_processor()
    return internvl.image_only_processor()(tiny.image_processor, tok, image_seq_length=tiny.image_seq_length,
                                           chat_template=tok.chat_template)


def test_the_copied_chat_template_is_the_checkpoints(processor):
    assert json.loads((FOLDER / "tokenizer_config.json").read_text())["chat_template"] == internvl.CHAT_TEMPLATE


@pytest.mark.parametrize("answer", ["red", "a person in a red top and blue trousers"])
def test_labelled_tokens_are_the_answer_and_im_end_and_generation_is_the_training_prefix(processor, answer):
    family, tok = FAMILIES["internvl"], processor.tokenizer
    assert tok.eos_token == "<|im_end|>" and len(tok) == 151675
    sample = Sample(id="s", messages=[user("What colour is the top?"), assistant(answer)], images=["a.png"])
    image = Image.new("RGB", (96, 40), "red")
    batch = family.encode(processor, [sample], [[image]], "train", 8192)
    ids, labels = batch.inputs["input_ids"][0], batch.inputs["labels"][0]
    assert labels[labels != IGNORE_INDEX].tolist() == tok(answer).input_ids + [tok.eos_token_id]
    context = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert context == 151667 and processor.image_token_id == context  # InternVLConfig's default image_token_id
    n = int((ids == context).sum())
    assert n + 2 == family.image_tokens(processor, *image.size)
    first = ids.tolist().index(context)
    assert tok.convert_ids_to_tokens([int(ids[first - 1]), int(ids[first + n])]) == ["<img>", "</img>"]
    prompt = family.encode(processor, [sample], [[image]], "generate", 8192).inputs["input_ids"][0].tolist()
    assert ids.tolist()[: len(prompt)] == prompt
    assert tok.decode(prompt[-3:]) == "<|im_start|>assistant\n"


def test_a_video_batch_is_token_for_token_the_real_internvl_processors(processor):
    """InternVLProcessor (with torchvision) on the real tokenizer and chat template and the tiny tile settings gave
    tests/golden/internvl_video.npz's ids for an image + video + text sample and a text + video sample (each
    `<video>` one "Frame<i>: <img>...</img>" line per frame, left padding): `encode` gives the same ids and mask
    without torchvision, and trains a video sample on the answer and `<|im_end|>` only."""
    golden = np.load(GOLDEN / "internvl_video.npz")
    family = FAMILIES["internvl"]
    samples = [Sample(id=f"s{i}", images=["a.png"] if i == 0 else [], videos=["clip.mp4"], messages=messages)
               for i, messages in enumerate(video_golden.conversations())]
    images = [[video_golden.batch_image()], []]
    videos = [[Video(video_golden.frames(*v), [0.0, 0.5, 1.0], fps=2.0)] for v in video_golden.BATCH_VIDEOS]
    batch = family.encode(processor, samples, images, "generate", 8192, videos=videos)
    assert batch.inputs["input_ids"].tolist() == golden["batch/input_ids"].tolist()
    assert batch.inputs["attention_mask"].tolist() == golden["batch/attention_mask"].tolist()
    train = [Sample(id=s.id, images=s.images, videos=s.videos, messages=[*s.messages, assistant("red")])
             for s in samples]
    batch = family.encode(processor, train, images, "train", 8192, videos=videos)
    for b in range(2):
        trained = trained_tokens(processor.tokenizer, batch.inputs["input_ids"][b], batch.inputs["labels"][b])
        assert processor.tokenizer.convert_tokens_to_string(trained) == "red<|im_end|>"
