"""Saved processors load with plain transformers in a fresh process (no vlmtune import): Qwen2-VL / Qwen2.5-VL /
Qwen3-VL / GLM-4.1V / InternVL name their upstream processor class, not vlmtune's ImageOnlyProcessor; and vlmtune
itself reloads every family's processor the family's way (data check / show-mask on a Qwen, GLM or SmolVLM
checkpoint)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vlmtune.models import FAMILIES

FRESH = """
import json, sys
from transformers import AutoImageProcessor, AutoTokenizer
d = sys.argv[1]
image = AutoImageProcessor.from_pretrained(d)
tok = AutoTokenizer.from_pretrained(d)
try:
    from transformers import AutoProcessor
    p = AutoProcessor.from_pretrained(d)
    kind = type(p).__name__
except Exception as e:  # the upstream Qwen processor wants torchvision for its video half, as the original does
    kind = "error: " + str(e)[:200]
print(json.dumps({"image": type(image).__name__, "size": image.to_dict().get("patch_size"),
                  "tokens": len(tok), "processor": kind, "vlmtune": "vlmtune" in sys.modules}))
"""


@pytest.mark.parametrize("name,upstream,image_class", [("qwen2_vl", "Qwen2VLProcessor", "Qwen2VLImageProcessor"),
                                                      ("qwen2_5_vl", "Qwen2_5_VLProcessor", "Qwen2VLImageProcessor"),
                                                      ("qwen3_vl", "Qwen3VLProcessor", "Qwen2VLImageProcessor"),
                                                      ("qwen3_vl_moe", "Qwen3VLProcessor", "Qwen2VLImageProcessor"),
                                                      ("qwen3_5", "Qwen3VLProcessor", "Qwen2VLImageProcessor"),
                                                      ("glm4v", "Glm4vProcessor", "Glm4vImageProcessor"),
                                                      ("internvl", "InternVLProcessor", "GotOcr2ImageProcessor"),
                                                      ("llava_onevision", "LlavaOnevisionProcessor",
                                                       "LlavaOnevisionImageProcessor"),
                                                      ("gemma4", "Gemma4Processor", "Gemma4ImageProcessor")])
def test_a_saved_image_only_processor_names_its_upstream_class_and_loads_without_vlmtune(name, upstream, image_class,
                                                                                       tmp_path):
    """Processors built without their torchvision video processors (Qwen-VL, GLM-4.1V, InternVL, Gemma 4): saved, they
    name the upstream class (and Gemma 4's carries its video and audio settings, as the checkpoints' files do)."""
    tiny = FAMILIES[name].tiny()
    tiny.processor.save_pretrained(tmp_path)
    files = ["processor_config.json", "tokenizer_config.json"]
    files += [] if name == "gemma4" else ["preprocessor_config.json"]
    for f in files:
        assert json.loads((tmp_path / f).read_text())["processor_class"] == upstream, f
    if name == "gemma4":
        saved = json.loads((tmp_path / "processor_config.json").read_text())
        assert {"feature_extractor", "video_processor", "image_processor"} <= set(saved)
        assert saved["image_processor"]["image_processor_type"] == "Gemma4ImageProcessor"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert not got["vlmtune"]
    assert got["image"].startswith(image_class)
    assert got["size"] == getattr(tiny.processor.image_processor, "patch_size", None)
    assert got["tokens"] == len(tiny.processor.tokenizer)
    assert got["processor"] == upstream or "torchvision" in got["processor"].lower(), got["processor"]
    assert got["processor"] != "TokenizersBackend"  # never silently a bare tokenizer
    again = FAMILIES[name].load_processor(tmp_path)  # and vlmtune reloads it the family's way
    assert again.image_processor.to_dict() == tiny.processor.image_processor.to_dict()


@pytest.mark.parametrize("name", ["qwen2_vl", "glm4v", "smolvlm"])
def test_data_check_with_a_qwen_or_smolvlm_model_loads_its_processor(name, tmp_path, fashion_dir):
    from vlmtune.runs import load_processor

    tiny = FAMILIES[name].tiny()
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    family, processor = load_processor(tmp_path)
    assert family.name == name and hasattr(processor, "image_processor")
