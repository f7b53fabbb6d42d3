"""`vlmtune data check`: the image-token budget of a model for given image sizes."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vlmtune.cli import main
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import FAMILIES


@pytest.mark.parametrize("name", ["llava", "qwen2_vl", "idefics3"])
def test_image_tokens_reported_for_a_saved_model_match_its_encode(name, tmp_path, capsys):
    family = FAMILIES[name]
    tiny = family.tiny()
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    assert main(["data", "check", "--model", str(tmp_path), "--image-size", "64x48", "--image-size", "200x100"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["family"] == name and set(report["image_tokens"]) == {"64x48", "200x100"}
    image_ids = getattr(tiny.processor, "image_token_ids", None) or [tiny.processor.image_token_id]
    sample = Sample(id="s", messages=[user("What colour?"), assistant("red")], images=["a.png"])
    for size, n in report["image_tokens"].items():
        w, h = map(int, size.split("x"))
        batch = family.encode(tiny.processor, [sample], [[Image.new("RGB", (w, h), "red")]], "generate", 4096)
        assert int(torch.isin(batch.inputs["input_ids"][0], torch.tensor(image_ids)).sum()) == n, size
    if name == "qwen2_vl":  # dynamic resolution: the count depends on the size (llava: fixed)
        assert len(set(report["image_tokens"].values())) == 2


def test_bad_arguments_are_named(tmp_path, capsys):
    assert main(["data", "check", "--image-size", "640x480"]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert main(["data", "check", "--model", str(tmp_path), "--image-size", "640by480"]) == 2
    assert "expected WIDTHxHEIGHT" in capsys.readouterr().err
    assert main(["data", "check", "--model", str(tmp_path / "nope"), "--image-size", "64x64"]) == 2
    assert "no such model directory" in capsys.readouterr().err
