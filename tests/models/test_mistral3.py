"""Mistral 3 specifics: Pixtral's variable resolution ([IMG] rows with [IMG_BREAK]s and an [IMG_END]) counted exactly,
the default system prompt and one `<s>`, `model.max_pixels` on the longest edge, and saved files that name the
upstream PixtralProcessor."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from vlmtune.data.resize import limit_pixels, resized_size
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import apply_max_pixels, mistral3
from vlmtune.models.labels import IGNORE_INDEX


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return mistral3.tiny()


def _vqa(n_images: int = 1, system: str | None = None) -> Sample:
    messages = [user("What colour is the top?", n_images=n_images), assistant("red")]
    if system is not None:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    return Sample(id=f"s{n_images}", images=[f"{k}.png" for k in range(n_images)], messages=messages)


# square, wide, tall, thin, larger than longest_edge (scaled down, never up), and sizes between whole tokens
SIZES = [(40, 40), (64, 32), (32, 128), (200, 50), (7, 300), (17, 33), (1000, 999)]


@pytest.mark.parametrize("size", SIZES)
def test_image_tokens_are_the_positions_encode_makes_and_the_model_takes(tiny, size):
    processor = tiny.processor
    rows, cols = mistral3.grid(processor, *size)
    batch = mistral3.encode(processor, [_vqa()], [[Image.new("RGB", size, "red")]], "train", 4096)
    ids = batch.inputs["input_ids"][0]
    assert int((ids == processor.image_token_id).sum()) == rows * cols
    assert int((ids == processor.image_break_token_id).sum()) == rows - 1
    assert int((ids == processor.image_end_token_id).sum()) == 1
    assert mistral3.image_tokens(processor, *size) == rows * (cols + 1)
    assert tuple(batch.inputs["image_sizes"][0].tolist()) == (rows * 16, cols * 16)  # 8 px patches merged 2x2
    assert max(rows, cols) * 16 <= 64 and (rows, cols) != (0, 0)
    with torch.no_grad():  # as many [IMG] as merged patches, else the model raises
        assert torch.isfinite(tiny.model(**batch.inputs).loss)


def test_multi_image_and_text_only_samples_in_one_batch(tiny):
    two = [Image.new("RGB", (40, 40), "red"), Image.new("RGB", (64, 20), "blue")]
    batch = mistral3.encode(tiny.processor, [_vqa(2), _vqa(0)], [two, []], "train", 4096)
    ids, labels = batch.inputs["input_ids"], batch.inputs["labels"]
    assert int(torch.isin(ids[0], torch.tensor(tiny.processor.image_token_ids)).sum()) == sum(
        mistral3.image_tokens(tiny.processor, *im.size) for im in two)
    for row in labels:
        assert tiny.processor.tokenizer.decode(row[row != IGNORE_INDEX]) == "red</s>"
    with torch.no_grad():
        assert torch.isfinite(tiny.model(**batch.inputs).loss)


def test_one_bos_the_default_system_prompt_and_the_prompt_is_the_training_prefix(tiny):
    processor, tok = tiny.processor, tiny.processor.tokenizer
    assert tok("a").input_ids[0] == tok.bos_token_id  # the tokenizer adds <s>, as the checkpoints' does
    img = [[Image.new("RGB", (40, 40))]]
    train = mistral3.encode(processor, [_vqa()], img, "train", 4096).inputs
    ids = train["input_ids"][0].tolist()
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id  # the template's, not a second one
    text = tok.decode(ids)
    assert "You are Mistral Small 3" in text and "The current date is " in text
    prompt = mistral3.encode(processor, [_vqa()], img, "generate", 4096).inputs["input_ids"][0].tolist()
    first = int((train["labels"][0] != IGNORE_INDEX).nonzero()[0])
    assert ids[:first] == prompt and tok.convert_ids_to_tokens(prompt[-1]) == "[/INST]"
    own = mistral3.encode(processor, [_vqa(system="Answer in one word.")], img, "train", 4096).inputs
    text = tok.decode(own["input_ids"][0])
    assert "[SYSTEM_PROMPT]Answer in one word.[/SYSTEM_PROMPT]" in text and "Mistral Small" not in text


def test_a_batch_of_one_image_token_is_refused_with_a_clear_error(tiny):
    with pytest.raises(ValueError, match="sample 's1': its image is one image token"):
        mistral3.encode(tiny.processor, [_vqa()], [[Image.new("RGB", (12, 10))]], "train", 4096)


def test_max_pixels_lowers_the_longest_edge_in_whole_tokens(tiny):
    import copy

    processor = copy.deepcopy(tiny.processor)
    before = {s: mistral3.image_tokens(processor, *s) for s in SIZES}
    with pytest.raises(ValueError, match="below mistral3's smallest image token \\(256 pixels\\)"):
        limit_pixels(copy.deepcopy(processor.image_processor), 255, "mistral3")
    from vlmtune.config import ModelCfg

    said = apply_max_pixels(processor, ModelCfg(family="mistral3", path="x", max_pixels=40 * 40))
    assert said == "longest_edge 32"  # 40 px, down to whole 16 px tokens
    with pytest.raises(ValueError, match="sample 's1': a 7x300 image has no pixel left on its short side"):
        mistral3.encode(processor, [_vqa()], [[Image.new("RGB", (7, 300))]], "generate", 4096)
    for size in [s for s in SIZES if s != (7, 300)]:
        batch = mistral3.encode(processor, [_vqa()], [[Image.new("RGB", size)]], "generate", 4096)
        h, w = batch.inputs["image_sizes"][0].tolist()
        assert h * w <= 40 * 40 and (w, h) == resized_size(*size, processor.image_processor)
        after = mistral3.image_tokens(processor, *size)
        assert after == int(torch.isin(batch.inputs["input_ids"][0], torch.tensor(processor.image_token_ids)).sum())
        assert after <= before[size] and (after < before[size] or max(size) <= 32)


FRESH = """
import json, sys
from transformers import AutoImageProcessor, AutoTokenizer
d = sys.argv[1]
image, tok = AutoImageProcessor.from_pretrained(d), AutoTokenizer.from_pretrained(d)
try:
    from transformers import AutoProcessor
    kind = type(AutoProcessor.from_pretrained(d)).__name__
except Exception as e:  # the upstream PixtralProcessor wants torchvision, as the checkpoints' does
    kind = "error: " + str(e)[:200]
print(json.dumps({"image": type(image).__name__, "size": image.size["longest_edge"], "tokens": len(tok),
                  "ids": tok.convert_tokens_to_ids(["</s>", "[IMG]", "[IMG_BREAK]", "[IMG_END]"]),
                  "processor": kind, "vlmtune": "vlmtune" in sys.modules}))
"""


def test_saved_files_name_the_upstream_class_and_load_without_vlmtune(tiny, tmp_path):
    tiny.processor.save_pretrained(tmp_path)
    for f in ("processor_config.json", "preprocessor_config.json"):
        assert json.loads((tmp_path / f).read_text())["processor_class"] == "PixtralProcessor", f
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert not got["vlmtune"] and got["image"].startswith("PixtralImageProcessor") and got["size"] == 64
    assert got["tokens"] == len(tiny.processor.tokenizer) and got["ids"] == [2, 10, 12, 13]  # Tekken's ids
    assert got["processor"] == "PixtralProcessor" or "torchvision" in got["processor"].lower(), got
    again = mistral3.load_processor(tmp_path)
    assert (again.patch_size, again.spatial_merge_size) == (8, 2) and again.chat_template == mistral3.CHAT_TEMPLATE


def test_data_check_on_a_saved_model_reports_the_image_tokens_encode_makes(tiny, tmp_path, capsys):
    from vlmtune.cli import main

    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    assert main(["data", "check", "--model", str(tmp_path), "--image-size", "64x48", "--image-size", "200x100"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["family"] == "mistral3"
    assert report["image_tokens"] == {f"{w}x{h}": mistral3.FAMILY.image_tokens(tiny.processor, w, h)
                                      for w, h in [(64, 48), (200, 100)]}
