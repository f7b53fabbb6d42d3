"""tests/real: the families with their *real* tokenizers, chat templates, image processors and configs, from
../shared/real-models (public checkpoints' files, no weights). A user's clone without ../shared uses the hub ids when
a network is there and otherwise skips with that reason; CI has ../shared, and `.ci/run` fails if tests/real ran
no test."""

from __future__ import annotations

import ctypes
import functools
import gc
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REAL = Path(__file__).resolve().parents[3] / "shared" / "real-models"

# the folders ../shared/real-models/README.md marks complete, of families vlmtune supports
FOLDERS = {
    "llava": "llava-hf__llava-1.5-7b-hf",
    "blip2": "Salesforce__blip2-opt-2.7b",
    "gemma3": "google__gemma-3-4b-it",
    "gemma4": "google__gemma-4-E2B-it",
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


@pytest.fixture(autouse=True)
def _give_memory_back():
    """After each real-width test, collect its models and hand freed heap back to the OS (glibc keeps it otherwise):
    `make test-large` runs the 0.5-2B-parameter cuts one after another in one process on a 24 GB machine, and a full
    step's fp32 state (~16 bytes a parameter) does not fit beside what earlier tests left in the heap."""
    yield
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: nothing to trim
        pass


def real_path(family: str) -> str:
    """The folder of a family's real checkpoint files, or its hub id when ../shared is absent and the hub reachable.
    A folder without the tokenizer's files (Gemma 4) is completed with a stand-in (`with_stand_in_tokenizer`)."""
    folder = REAL / FOLDERS[family]
    if folder.is_dir():
        if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
            return with_stand_in_tokenizer(str(folder))
        return str(folder)
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("CI"):
        pytest.skip(f"{folder} is absent (../shared/real-models) and the hub is offline")
    return FOLDERS[family].replace("__", "/", 1)


# google/gemma-4-E2B-it's special tokens at their ids: the image/audio/video ones from its config.json, pad/eos/bos
# from its generation_config.json, <|turn>/<turn|> (106 is a generation_config eos id), <|tool_response> (50, the
# third eos id) and the other control tokens as public Gemma 4 tokenizer tests list them; <mask> at 4 as in Gemma 3.
GEMMA4_SPECIAL_IDS = {
    "<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "<|tool>": 46, "<tool|>": 47, "<|tool_call>": 48,
    "<tool_call|>": 49, "<|tool_response>": 50, "<tool_response|>": 51, '<|"|>': 52, "<|think|>": 98, "<|channel>": 100,
    "<channel|>": 101, "<|turn>": 105, "<turn|>": 106, "<|image>": 255999, "<|audio>": 256000, "<|image|>": 258880,
    "<|audio|>": 258881, "<image|>": 258882, "<audio|>": 258883, "<|video|>": 258884,
}


@functools.cache
def with_stand_in_tokenizer(folder: str) -> str:
    """A copy of a real folder that lacks its tokenizer (../shared has Gemma 4's config, processor and chat template
    but neither tokenizer.json nor tokenizer.model), completed with a stand-in: every special token at the real id,
    ordinary text as a byte-level BPE trained here (ids from 1000), the rest of the real vocabulary size unused
    placeholders. What the real tests check stays real: the chat template, the image processor, the config's image
    token ids and the generation config's stop ids; only how ordinary text splits into ids is not the checkpoint's
    (so `tokenizer_class` is the plain fast tokenizer: GemmaTokenizer would impose its own SentencePiece-style
    normaliser on the byte-level BPE)."""
    from tokenizers import Tokenizer

    from vlmtune.data.tokenizer import train_byte_bpe

    out = Path(tempfile.mkdtemp(prefix="stand-in-tokenizer-")) / Path(folder).name
    shutil.copytree(folder, out)
    vocab_size = json.loads((out / "config.json").read_text())["text_config"]["vocab_size"]
    corpus = ["What colour is the top? red", "Describe the image. a person in a red top and blue trousers",
              "And the bottom? blue", "Are they the same colour? no", "What is this? a box", "user model system"]
    spec = json.loads(train_byte_bpe(corpus * 4, [], 600).to_str())
    by_id = {i: f"<unused{i}>" for i in range(vocab_size)}
    by_id.update({i: t for t, i in GEMMA4_SPECIAL_IDS.items()})
    by_id.update({1000 + i: t for t, i in spec["model"]["vocab"].items()})
    spec["model"]["vocab"] = {t: i for i, t in by_id.items()}
    spec["added_tokens"] = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for t, i in GEMMA4_SPECIAL_IDS.items()]
    Tokenizer.from_str(json.dumps(spec)).save(str(out / "tokenizer.json"))
    config = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "PreTrainedTokenizerFast"}))
    return str(out)
