"""Shared fixtures: everything offline, tiny models built in-process, tiny synthetic datasets on disk."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest
from helpers import REPO, SHARED, TINY_BUILTIN, tiny_run_cfg  # noqa: F401


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread for the whole suite: the models here are tiny, so threads only add overhead, and on a
    2-core machine shared with another process two threads run them up to 10x slower. Subprocesses get
    OMP_NUM_THREADS=1 from the environment set above."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
