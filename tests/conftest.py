"""Shared fixtures: everything offline, tiny models built in-process, tiny synthetic datasets on disk."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from pathlib import Path

import pytest
from helpers import REPO, SHARED, TINY_BUILTIN, tiny_run_cfg  # noqa: F401


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory) -> Path:
    """48 fashion samples at 32x32: 38 train / 5 val / 5 test."""
    from vlmtune.data.dataset import synthesize

    root = tmp_path_factory.mktemp("fashion")
    synthesize(root, "fashion", 48, seed=0, size=32, val=0.1, test=0.1)
    return root


@pytest.fixture(scope="session")
def tiny_llava():
    from vlmtune.models import FAMILIES

    return FAMILIES["llava"].tiny()
