"""`vlmtune retrieve`: a bare query searches; train / eval / index are verbs; results as JSON on the last line."""

from __future__ import annotations

import json

import pytest

from vlmtune import cli


def _run(capsys, argv: list[str]) -> tuple[int, dict | None, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return code, json.loads(lines[-1]) if lines else None, err


@pytest.fixture(scope="module")
def run_and_index(models, caption_data, catalogue, tmp_path_factory):
    """A one-epoch fine-tune and an index of the TSV catalogue built with it, through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    assert cli.main(["retrieve", "train", "--model", str(models["clip"]), "--data", str(caption_data), "--out",
                     str(root / "run"), "--epochs", "1", "--batch-size", "64", "--lr", "1e-3"]) == 0
    assert cli.main(["retrieve", "index", "--model", str(root / "run"), "--catalogue", str(catalogue), "--out",
                     str(root / "idx"), "--batch-size", "50"]) == 0
    return root


def test_train_and_index_verbs(run_and_index):
    meta = json.loads((run_and_index / "idx" / "index.json").read_text())
    assert meta["model"] == str((run_and_index / "run" / "best").resolve()) and meta["count"] == 150
    assert json.loads((run_and_index / "run" / "retrieval_config.json").read_text())["epochs"] == 1


@pytest.mark.parametrize("argv", [
    ["retrieve", "--index", "IDX", "a person wearing a red t-shirt"],
    ["retrieve", "a person wearing a red t-shirt", "--index", "IDX"],
    ["retrieve", "search", "--index", "IDX", "a", "person", "wearing", "a", "red", "t-shirt"],
])
def test_a_bare_query_searches_the_index(run_and_index, capsys, argv):
    argv = [str(run_and_index / "idx") if a == "IDX" else a for a in argv] + ["--k", "4"]
    code, result, err = _run(capsys, argv)
    assert code == 0 and result["query"] == "a person wearing a red t-shirt"
    assert len(result["results"]) == 4 and [r["rank"] for r in result["results"]] == [1, 2, 3, 4]
    scores = [r["score"] for r in result["results"]]
    assert scores == sorted(scores, reverse=True)
    for r in result["results"]:
        assert r["item_url"].startswith("https://shop.example/item/") and r["caption"] and r["image"].endswith(".png")
        assert r["item_url"] in err  # the readable table on stderr


def test_image_query_finds_the_item_itself(run_and_index, catalogue, capsys):
    code, result, _ = _run(capsys, ["retrieve", "--index", str(run_and_index / "idx"), "--image",
                                    str(catalogue.parent / "img" / "0007.png"), "--k", "1"])
    assert code == 0 and result["results"][0]["item_url"] == "https://shop.example/item/0007"


def test_errors_are_reported_without_traceback(run_and_index, models, capsys):
    code, _, err = _run(capsys, ["retrieve", "--index", str(run_and_index / "idx"), "red", "--model",
                                 str(models["clip_other"])])
    assert code == 2 and "different weights" in err  # another model's vectors live in another space
    code, _, err = _run(capsys, ["retrieve", "--index", str(run_and_index / "idx"), "red", "--image", "x.png"])
    assert code == 2 and "not both" in err


def test_eval_verb_reports_recall_both_ways(models, caption_data, capsys):
    code, result, err = _run(capsys, ["retrieve", "eval", "--model", str(models["clip"]), "--data", str(caption_data),
                                      "--split", "test"])
    assert code == 0 and result["images"] == result["texts"] == 40
    keys = {"i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "rsum", "t2i_median_rank"}
    assert keys <= set(result)
    assert "t2i_R@10" in err


def test_route_only_rewrites_a_bare_query():
    assert cli._route_retrieve(["retrieve", "--index", "d", "q"]) == ["retrieve", "search", "--index", "d", "q"]
    assert cli._route_retrieve(["retrieve", "train", "--model", "m"]) == ["retrieve", "train", "--model", "m"]
    assert cli._route_retrieve(["retrieve", "--help"]) == ["retrieve", "--help"]
    assert cli._route_retrieve(["eval", "--index"]) == ["eval", "--index"]


def test_init_model_writes_a_tiny_dual_encoder_the_other_verbs_load(tmp_path, capsys):
    from vlmtune.retrieval.encoder import DualEncoder

    code, result, _ = _run(capsys, ["retrieve", "init-model", "--out", str(tmp_path / "clip"), "--image-size", "32"])
    assert code == 0 and result == {"out": str(tmp_path / "clip"), "family": "clip", "image_size": 32}
    enc = DualEncoder.load(tmp_path / "clip")
    assert enc.family.name == "clip" and enc.image_processor.crop_size == {"height": 32, "width": 32}
    assert enc.embed_texts(["a red top"]).shape == (1, 64)
    assert cli._route_retrieve(["retrieve", "init-model", "--out", "x"]) == ["retrieve", "init-model", "--out", "x"]
    code, _, err = _run(capsys, ["retrieve", "init-model", "--out", str(tmp_path / "clip")])
    assert code == 2 and "already exists (never overwritten)" in err
