"""A model path that looks local but is not there is named as a missing run, for every command that loads a model,
instead of ending in a Hugging Face hub connection error (issue 21: the retrieval page trained `runs/fashion-clip`,
then used `runs/shop-clip`, and was told it could not connect to huggingface.co)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vlmtune.cli import main
from vlmtune.config import check_model_path


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    """A working directory with runs/fashion-clip (empty) and models/ (empty)."""
    (tmp_path / "runs" / "fashion-clip").mkdir(parents=True)
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.mark.parametrize("path", ["runs/shop-clip", "./shop-clip", "../shop-clip", "models/shop-clip", "a/b/c",
                                  "/nonexistent/shop-clip", "~/nonexistent-vlmtune-run"])
def test_a_local_looking_path_that_is_missing_is_refused(here, path):
    with pytest.raises(FileNotFoundError, match=f"^no such run directory: {path}"):
        check_model_path(path)


@pytest.mark.parametrize("path", ["openai/clip-vit-base-patch32", "gpt2", "builtin", "runs/fashion-clip", "runs"])
def test_hub_ids_and_existing_paths_pass(here, path):
    check_model_path(path)


def test_the_message_lists_what_the_parent_directory_holds(here):
    with pytest.raises(FileNotFoundError) as e:
        check_model_path("runs/shop-clip")
    assert str(e.value) == "no such run directory: runs/shop-clip (runs holds: fashion-clip)"


def _fails_naming_the_run(argv: list[str], capsys, verb: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"vlmtune {verb}: error: no such run directory: runs/shop-clip (runs holds: fashion-clip)" in err, err
    assert "huggingface.co" not in err and "Traceback" not in err


def test_every_command_that_loads_a_model_names_the_missing_run(here, fashion_dir, capsys):
    data = str(fashion_dir)
    commands = {
        "eval": ["eval", "--model", "runs/shop-clip", "--data", data, "--split", "val"],
        "predict": ["predict", "--model", "runs/shop-clip", "--data", data, "--out", "p.jsonl"],
        "export": ["export", "--model", "runs/shop-clip", "--out", "exported"],
        "serve": ["serve", "--model", "runs/shop-clip"],
        "retrieve": ["retrieve", "index", "--model", "runs/shop-clip", "--catalogue", "x.tsv", "--out", "idx"],
        "compose": ["compose", "--vision", "runs/shop-clip", "--lm", "gpt2", "--out", "composed"],
    }
    for verb, argv in commands.items():
        _fails_naming_the_run(argv, capsys, verb)
    _fails_naming_the_run(["retrieve", "eval", "--model", "runs/shop-clip", "--data", data], capsys, "retrieve")
    _fails_naming_the_run(["data", "translate", data, "--to", "ru", "--model", "runs/shop-clip", "--out", "ru"],
                          capsys, "data")
    recipe = here / "recipe.yaml"  # training from a base at a local path
    recipe.write_text(yaml.safe_dump({"name": "t", "out_dir": "out", "data": {"path": data},
                                      "model": {"family": "llava", "path": "runs/shop-clip"},
                                      "train": {"max_steps": 1, "trackers": []}}))
    _fails_naming_the_run(["train", "--config", str(recipe)], capsys, "train")


def test_a_hub_id_still_goes_to_the_hub(here, capsys):
    """Offline, a hub id is looked up in the cache and fails with the hub's own message, not as a missing run."""
    assert main(["retrieve", "eval", "--model", "vlmtune-test/no-such-model", "--data", "d"]) == 2
    err = capsys.readouterr().err
    assert "no such run directory" not in err and "vlmtune-test/no-such-model" in err, err
