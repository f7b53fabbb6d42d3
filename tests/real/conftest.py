"""tests/real: the families with their *real* tokenizers, chat templates, image processors and configs, from
../shared/real-models (public checkpoints' files, no weights). A user's clone without ../shared uses the hub ids when
a network is there and otherwise skips with that reason; CI has ../shared, and `.ci/run` fails if tests/real ran
no test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REAL = Path(__file__).resolve().parents[3] / "shared" / "real-models"

# the folders ../shared/real-models/README.md marks complete, of families vlmtune supports
FOLDERS = {
    "llava": "llava-hf__llava-1.5-7b-hf",
    "blip2": "Salesforce__blip2-opt-2.7b",
    "gemma3": "google__gemma-3-4b-it",
    "qwen2_vl": "Qwen__Qwen2-VL-2B-Instruct",
    "qwen2_5_vl": "Qwen__Qwen2.5-VL-3B-Instruct",
    "qwen3_vl": "Qwen__Qwen3-VL-4B-Instruct",
    "qwen3_5": "Qwen__Qwen3.5-0.8B",
    "smolvlm": "HuggingFaceTB__SmolVLM2-256M-Video-Instruct",
    "mllama": "meta-llama__Llama-3.2-11B-Vision-Instruct",
    "pix2struct": "google__pix2struct-docvqa-base",
    "glm4v": "zai-org__GLM-4.1V-9B-Thinking",
}
# Not here: internvl. ../shared/real-models/OpenGVLab__InternVL3-1B-hf is partial (its SOURCES.txt): no config.json
# (so no real-width model for test_real_models.py), no preprocessor_config.json / processor_config.json (so neither
# the tiling settings nor image_seq_length, and no processor for test_real_processors.py), and its tokenizer files are
# an unverified copy (tokenizer_config.json from Liger-Kernel's fake_configs; vocab.json and merges.txt from the
# remote-code InternVL3 / Qwen2.5). What is usable, the tokenizer and its chat template, is checked in
# test_real_internvl_tokenizer.py.


def real_path(family: str) -> str:
    """The folder of a family's real checkpoint files, or its hub id when ../shared is absent and the hub reachable."""
    folder = REAL / FOLDERS[family]
    if folder.is_dir():
        return str(folder)
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("CI"):
        pytest.skip(f"{folder} is absent (../shared/real-models) and the hub is offline")
    return FOLDERS[family].replace("__", "/", 1)
