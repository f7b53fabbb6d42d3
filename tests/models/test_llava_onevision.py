"""LLaVA-OneVision specifics: AnyRes-max-9 token counts for many sizes, untiled images in multi-image samples, the
template's assistant header, and saved files that name the upstream processor class."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import llava_onevision
from vlmtune.models.labels import IGNORE_INDEX


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return llava_onevision.tiny()


def _vqa(n_images: int = 1) -> Sample:
    return Sample(id=f"s{n_images}", images=[f"{k}.png" for k in range(n_images)],
                  messages=[user("What colour is the top?", n_images=n_images), assistant("red")])


# square, wide, tall, very thin, and large enough for more than 9 tiles (scaled down by anyres_max_9)
SIZES = [(40, 40), (64, 32), (32, 128), (200, 50), (7, 300), (128, 128), (500, 400)]


@pytest.mark.parametrize("size", SIZES)
def test_image_tokens_are_the_tokens_encode_makes_and_the_model_takes(tiny, size):
    n = llava_onevision.image_token_count(tiny.processor, *size)
    batch = llava_onevision.encode(tiny.processor, [_vqa()], [[Image.new("RGB", size, "red")]], "train", 4096)
    assert int((batch.inputs["input_ids"][0] == tiny.processor.image_token_id).sum()) == n
    with torch.no_grad():  # the model's own unpadding and newlines make as many features (else it raises)
        assert torch.isfinite(tiny.model(**batch.inputs).loss)


def test_counts_grow_with_the_grid_up_to_the_max_9_scale_down(tiny):
    counts = {s: llava_onevision.image_token_count(tiny.processor, *s) for s in SIZES}
    tile = llava_onevision.image_token_count(tiny.processor, 32, 32)  # one grid tile: overview + tile + newlines
    assert tile == 16 + 16 + 4
    assert len(set(counts.values())) >= 5
    # 4 x 4 tiles would be 16 x 16 features + 16 newlines; scaled to at most ~9 tiles' worth
    assert counts[(128, 128)] < 16 + 16 * 16 + 16


def test_a_multi_image_sample_is_not_tiled_and_a_batch_mixes_both(tiny):
    sizes = [(40, 40), (64, 32)]
    two = [Image.new("RGB", s, "blue") for s in sizes]
    batch = llava_onevision.encode(tiny.processor, [_vqa(2), _vqa(1), _vqa(0)], [two, [Image.new("RGB", (64, 64))], []],
                                   "train", 4096)
    ids = batch.inputs["input_ids"]
    untiled = llava_onevision.image_token_count(tiny.processor, 40, 40, alone=False)
    assert untiled == 16 + 1  # one tile + the newline
    assert int((ids[0] == tiny.processor.image_token_id).sum()) == 2 * untiled
    assert int((ids[1] == tiny.processor.image_token_id).sum()) == llava_onevision.image_token_count(
        tiny.processor, 64, 64)
    assert batch.inputs["batch_num_images"].tolist() == [2, 1]
    tok = tiny.processor.tokenizer
    for row in batch.inputs["labels"]:
        assert tok.decode(row[row != IGNORE_INDEX]) == "red<|im_end|>"
    with torch.no_grad():
        assert torch.isfinite(tiny.model(**batch.inputs).loss)


def test_the_assistant_header_is_trained_as_the_generation_prompt_writes_it(tiny):
    """The checkpoints' template writes "<|im_start|>assistant \\n" for an assistant turn and "<|im_start|>assistant\\n"
    as the generation prompt: the training text uses the latter, so the prompt the model answers after is one."""
    processor, sample = tiny.processor, _vqa()
    raw = processor.apply_chat_template(sample.messages, tokenize=False)
    assert "<|im_start|>assistant \nred<|im_end|>" in raw
    img = [[Image.new("RGB", (40, 40))]]
    train = llava_onevision.encode(processor, [sample], img, "train", 4096).inputs
    prompt = llava_onevision.encode(processor, [sample], img, "generate", 4096).inputs["input_ids"][0].tolist()
    labels = train["labels"][0]
    first = int((labels != IGNORE_INDEX).nonzero()[0])
    assert train["input_ids"][0][:first].tolist() == prompt  # the training prefix is the generation prompt
    assert processor.tokenizer.decode(prompt[-3:]) == "<|im_start|>assistant\n"


def test_max_length_counts_the_image_tokens(tiny):
    from vlmtune.models import SampleTooLong

    n = llava_onevision.image_token_count(tiny.processor, 200, 50)
    with pytest.raises(SampleTooLong, match=rf"sample 's1': \d+ tokens \({n} image tokens"):
        llava_onevision.encode(tiny.processor, [_vqa()], [[Image.new("RGB", (200, 50))]], "train", n + 5)


FRESH = """
import json, sys
from transformers import AutoImageProcessor, AutoTokenizer
d = sys.argv[1]
image, tok = AutoImageProcessor.from_pretrained(d), AutoTokenizer.from_pretrained(d)
try:
    from transformers import AutoProcessor
    kind = type(AutoProcessor.from_pretrained(d)).__name__
except Exception as e:  # the upstream processor wants torchvision for its video half, as the checkpoints' does
    kind = "error: " + str(e)[:200]
print(json.dumps({"image": type(image).__name__, "pinpoints": image.image_grid_pinpoints, "tokens": len(tok),
                  "processor": kind, "vlmtune": "vlmtune" in sys.modules}))
"""


def test_saved_files_name_the_upstream_class_and_load_without_vlmtune(tiny, tmp_path):
    tiny.processor.save_pretrained(tmp_path)
    for f in ("processor_config.json", "preprocessor_config.json"):
        assert json.loads((tmp_path / f).read_text())["processor_class"] == "LlavaOnevisionProcessor", f
    assert not (tmp_path / "video_preprocessor_config.json").exists()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert not got["vlmtune"] and got["image"].startswith("LlavaOnevisionImageProcessor")
    assert got["pinpoints"] == tiny.processor.image_processor.image_grid_pinpoints
    assert got["tokens"] == len(tiny.processor.tokenizer)
    assert got["processor"] == "LlavaOnevisionProcessor" or "torchvision" in got["processor"].lower(), got
    again = llava_onevision.load_processor(tmp_path)
    assert (again.num_image_tokens, again.vision_feature_select_strategy, again.vision_aspect_ratio) == (
        16, "full", "anyres_max_9")
    assert again.chat_template == llava_onevision.CHAT_TEMPLATE


def test_data_check_on_a_saved_model_reports_the_image_tokens_encode_makes(tiny, tmp_path, capsys):
    from vlmtune.cli import main

    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    assert main(["data", "check", "--model", str(tmp_path), "--image-size", "64x48", "--image-size", "200x100"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["family"] == "llava_onevision"
    assert report["image_tokens"] == {f"{w}x{h}": llava_onevision.FAMILY.image_tokens(tiny.processor, w, h)
                                      for w, h in [(64, 48), (200, 100)]}
