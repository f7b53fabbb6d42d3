"""`vlmtune data check --model <hub id>`: a hub id works like a local model directory (only its config and processor
files are fetched, never its weights), and offline, with the id not in the cache, the error names the id and
HF_HUB_OFFLINE instead of calling it a missing directory. The hub itself is never reached here: a local hub cache
stands in for it, which is where the hub client reads a downloaded model from."""

from __future__ import annotations

import json

import pytest

from vlmtune.cli import main

REPO_ID = "test-org/tiny-llava"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_llava):
    """A hub cache holding REPO_ID's config and processor files (no weights), as a download leaves it."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    commit = "0" * 40
    snapshot = cache / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / commit
    tiny_llava.model.config.save_pretrained(snapshot)
    tiny_llava.processor.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_data_check_takes_a_hub_id(hub_cache, fashion_dir, tmp_path, capsys):
    report = tmp_path / "report.json"
    assert main(["data", "check", str(fashion_dir), "--model", REPO_ID, "--max-length", "512",
                 "--out", str(report)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tokens = result["tokens"]
    assert tokens["model"] == REPO_ID and tokens["family"] == "llava" and tokens["n_too_long"] == 0
    assert tokens["min"] > 0 and json.loads(report.read_text())["tokens"] == tokens


def test_image_tokens_of_a_hub_id(hub_cache, capsys, tiny_llava):
    from vlmtune.models import FAMILIES

    assert main(["data", "check", "--model", REPO_ID, "--image-size", "64x48"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["family"] == "llava"
    assert result["image_tokens"] == {"64x48": FAMILIES["llava"].image_tokens(tiny_llava.processor, 64, 48)}


def test_an_uncached_hub_id_offline_names_the_id_and_hf_hub_offline(tmp_path, monkeypatch, fashion_dir, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert constants.HF_HUB_OFFLINE  # conftest: tests never reach the network
    assert main(["data", "check", str(fashion_dir), "--model", "llava-hf/llava-1.5-7b-hf"]) == 2
    err = capsys.readouterr().err
    assert "llava-hf/llava-1.5-7b-hf: no such local directory" in err and "HF_HUB_OFFLINE=1" in err
    assert "Traceback" not in err


def test_a_missing_local_path_is_still_named_as_one(tmp_path, fashion_dir, capsys):
    """A path that cannot be a hub id (absolute, or with ..) is a missing directory, as before."""
    missing = tmp_path / "runs" / "no-such-run"
    assert main(["data", "check", str(fashion_dir), "--model", str(missing)]) == 2
    assert f"no such run directory: {missing}" in capsys.readouterr().err
