"""Resuming `vlmtune eval` / `vlmtune predict` into an existing output keeps a row only when its sample's prompt and
images, the model and the generation settings are unchanged; kept rows are scored against the current answers.

Each test runs the real command on a saved tiny built-in model and counts the samples `Predictor.complete` is asked
for: 0 means every row was reused, 5 (the test split) that every row was generated again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import save_builtin
from PIL import Image

from vlmtune.cli import main
from vlmtune.infer import Predictor

TOKENS = "4"  # --max-new-tokens of every run unless a test changes it


@pytest.fixture
def data(tmp_path, fashion_dir) -> Path:
    """A copy of the fashion dataset that a test may relabel."""
    return Path(shutil.copytree(fashion_dir, tmp_path / "data"))


@pytest.fixture
def model(tmp_path) -> Path:
    return save_builtin(tmp_path / "model", seed=0)


@pytest.fixture
def asked(monkeypatch) -> list[str]:
    """The ids of the samples `Predictor.complete` (the runner's generation call) is asked for, over every call."""
    ids: list[str] = []
    complete = Predictor.complete

    def counting(self, samples, images, **options):
        ids.extend(s.id for s in samples)
        return complete(self, samples, images, **options)

    monkeypatch.setattr(Predictor, "complete", counting)
    return ids


def run_eval(model: Path, data: Path, out: Path, *extra: str) -> dict:
    assert main(["eval", "--model", str(model), "--data", str(data), "--split", "test", "--out", str(out),
                 "--max-new-tokens", TOKENS, *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


def rows_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def rewrite_manifest(data: Path, change) -> None:
    """Apply `change(row)` to every test-split row of the manifest."""
    lines = []
    for line in (data / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("split") == "test":
            change(row)
        lines.append(json.dumps(row))
    (data / "manifest.jsonl").write_text("".join(x + "\n" for x in lines))


def relabel(data: Path, answers: dict[str, str]) -> None:
    """Give the test samples new answers (`answers` by id, "zzz" for the others)."""
    def change(row):
        new = answers.get(row["id"], "zzz")
        row["answers"] = [new]
        row["messages"][-1]["content"] = [{"type": "text", "text": new}]
    rewrite_manifest(data, change)


def test_relabelled_answers_rescore_the_kept_predictions(model, data, asked, tmp_path, capsys):
    first = run_eval(model, data, tmp_path / "e")
    predictions = {r["id"]: r["prediction"] for r in rows_of(tmp_path / "e" / "predictions.jsonl")}
    assert len(asked) == 5 and first["exact_match"] == 0.0  # random weights: nothing right
    right = dict(list(predictions.items())[:2])  # two answers become what the model says, three become "zzz"
    relabel(data, right)
    asked.clear()
    capsys.readouterr()

    resumed = run_eval(model, data, tmp_path / "e")
    err = capsys.readouterr().err
    fresh = run_eval(model, data, tmp_path / "fresh")
    assert resumed["exact_match"] == fresh["exact_match"] == 0.4
    assert asked == list(predictions), "a changed answer does not change the prediction: only the fresh run generates"
    assert "resumed 5 of 5 rows (5 scored against changed answers)" in err
    assert resumed == fresh
    assert (tmp_path / "e" / "predictions.jsonl").read_text() == (tmp_path / "fresh" / "predictions.jsonl").read_text()
    rows = {r["id"]: r for r in rows_of(tmp_path / "e" / "predictions.jsonl")}
    assert [rows[i]["answers"] for i in predictions] == [[predictions[i]] if i in right else ["zzz"]
                                                          for i in predictions]


def test_unchanged_rows_are_reused_and_changed_settings_recompute(model, data, asked, tmp_path, capsys):
    out = tmp_path / "e"
    run_eval(model, data, out)
    asked.clear()
    capsys.readouterr()
    run_eval(model, data, out)
    assert asked == []
    assert "resumed 5 of 5 rows" in capsys.readouterr().err

    run_eval(model, data, out, "--batch-size", "2")  # how the rows are batched does not matter
    assert asked == []
    run_eval(model, data, out, "--max-new-tokens", "3")
    assert len(asked) == 5
    assert ("resumed 0 of 5 rows; generating 5 again: settings changed 5 (max_new_tokens 4 -> 3)"
            in capsys.readouterr().err)
    assert all(len(r["input_hash"]) == 16 for r in rows_of(out / "predictions.jsonl"))
    assert json.loads((out / "predictions.fingerprint.json").read_text())["settings"]["max_new_tokens"] == 3

    asked.clear()
    run_eval(model, data, out, "--max-new-tokens", "3", "--prompt", "{question} Answer in one word.")
    assert len(asked) == 5 and "settings changed 5" in capsys.readouterr().err
    asked.clear()
    run_eval(model, data, out, "--max-new-tokens", "3", "--prompt", "{question} Answer in one word.")
    assert asked == []


def test_retrained_model_in_the_same_directory_recomputes(model, data, asked, tmp_path, capsys):
    out = tmp_path / "e"
    run_eval(model, data, out)
    save_builtin(model, seed=1)  # other weights under the same path, as a retrained checkpoint
    asked.clear()
    capsys.readouterr()
    resumed = run_eval(model, data, out)
    assert len(asked) == 5
    assert "generating 5 again: model changed 5" in capsys.readouterr().err
    assert resumed == run_eval(model, data, tmp_path / "fresh")
    assert (out / "predictions.jsonl").read_text() == (tmp_path / "fresh" / "predictions.jsonl").read_text()


def test_changed_question_or_image_recomputes_only_that_sample(model, data, asked, tmp_path, capsys):
    out = tmp_path / "e"
    run_eval(model, data, out)
    ids = list(asked)
    state = {"k": 0}

    def change(row):  # the first test sample gets another question, the second another image at the same path
        if state["k"] == 0:
            row["messages"][0]["content"][-1]["text"] = "Which colour is the top?"
        elif state["k"] == 1:
            Image.new("RGB", (32, 32), (250, 0, 0)).save(data / row["images"][0])
        state["k"] += 1

    rewrite_manifest(data, change)
    asked.clear()
    capsys.readouterr()
    resumed = run_eval(model, data, out)
    assert asked == ids[:2]
    assert "resumed 3 of 5 rows; generating 2 again: sample changed 2" in capsys.readouterr().err
    assert rows_of(out / "predictions.jsonl")[0]["question"] == "Which colour is the top?"
    assert resumed == run_eval(model, data, tmp_path / "fresh")


def test_rows_without_a_fingerprint_are_generated_again(model, data, asked, tmp_path, capsys):
    """A predictions file written before fingerprints existed (or by another tool) is not trusted."""
    out = tmp_path / "e"
    run_eval(model, data, out)
    rows = rows_of(out / "predictions.jsonl")
    (out / "predictions.fingerprint.json").unlink()
    (out / "predictions.jsonl").write_text("".join(
        json.dumps({k: v for k, v in r.items() if k != "input_hash"} | {"prediction": "zzz"}) + "\n" for r in rows))
    asked.clear()
    capsys.readouterr()
    run_eval(model, data, out)
    assert len(asked) == 5 and "generating 5 again: no fingerprint 5" in capsys.readouterr().err
    assert [r["prediction"] for r in rows_of(out / "predictions.jsonl")] == [r["prediction"] for r in rows]

    for damaged in ('{"model": "x", "settings": 3}', "[1, 2]", "{torn"):
        (out / "predictions.fingerprint.json").write_text(damaged)
        asked.clear()
        run_eval(model, data, out)
        assert len(asked) == 5 and "no fingerprint 5" in capsys.readouterr().err


def test_predict_resumes_only_rows_made_with_the_same_settings(model, data, asked, tmp_path, capsys):
    out = tmp_path / "preds.jsonl"

    def run_predict(*extra):
        assert main(["predict", "--model", str(model), "--data", str(data), "--split", "test", "--out", str(out),
                     "--max-new-tokens", TOKENS, *extra]) == 0

    run_predict()
    first = out.read_text()
    asked.clear()
    run_predict()
    assert asked == [] and out.read_text() == first
    run_predict("--max-new-tokens", "2")
    assert len(asked) == 5 and "settings changed 5" in capsys.readouterr().err


def test_a_predictor_without_a_checkpoint_is_known_by_its_weights():
    """A Predictor built around a model in memory (tests, the API) fingerprints the weights themselves."""
    from helpers import TINY_BUILTIN

    from vlmtune.config import BuiltinCfg
    from vlmtune.models import get_family
    from vlmtune.models.builtin import build_builtin

    def fingerprint(seed):
        return Predictor(build_builtin(BuiltinCfg(**TINY_BUILTIN), seed=seed), get_family("llava")).fingerprint()

    assert fingerprint(0) == fingerprint(0)
    assert fingerprint(0)["model"] != fingerprint(1)["model"]
    assert fingerprint(0)["settings"] == fingerprint(1)["settings"]


def test_an_image_that_is_not_a_regular_file_is_not_read_for_its_fingerprint(tmp_path):
    """Hashing must never open a folder or a FIFO (reading a FIFO blocks); generation reports such an image."""
    from vlmtune.data.sample import Sample, assistant, user
    from vlmtune.eval.runner import sample_keys

    (tmp_path / "a_folder").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    samples = [Sample(id=str(i), messages=[user("What?"), assistant("it")], images=[rel])
               for i, rel in enumerate(["a_folder", "missing.png", "x.png", "../outside.png"])]
    keys = sample_keys(tmp_path, samples)
    assert len(set(keys.values())) == 4


def test_a_new_training_run_in_the_same_directory_validates_afresh(fashion_dir, tmp_path):
    """Validation during training writes RUN/predictions/step-N/; a run trained again into the same directory (its
    checkpoints deleted, its config changed) must not keep the old run's predictions for the same step."""
    import yaml
    from helpers import tiny_run_cfg

    def train(seed: int, out: Path) -> Path:
        cfg = tiny_run_cfg(out, fashion_dir, train={"max_steps": 2, "eval_every": 2, "save_every": 2, "seed": seed})
        (out / "c.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["train", "--config", str(out / "c.yaml")]) == 0
        return out / "runs" / "t" / "predictions" / "step-2" / "predictions.jsonl"

    def predictions(path: Path) -> list[str]:
        return [r["prediction"] for r in rows_of(path)]

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path = train(0, tmp_path / "a")
    first = predictions(path)
    for name in ("checkpoints", "best"):
        shutil.rmtree(tmp_path / "a" / "runs" / "t" / name, ignore_errors=True)
    assert train(1, tmp_path / "a") == path
    fresh = predictions(train(1, tmp_path / "b"))
    assert fresh != first and predictions(path) == fresh


def test_results_written_into_the_model_directory_do_not_change_its_identity(model, data, asked):
    """`eval --out MODEL` or `predict --out MODEL/preds.jsonl` writes beside the weights; the next run still resumes."""
    for argv in (["eval", "--out", str(model)], ["predict", "--out", str(model / "preds.jsonl")]):
        for _ in range(2):
            asked.clear()
            assert main([*argv, "--model", str(model), "--data", str(data), "--split", "test",
                         "--max-new-tokens", TOKENS]) == 0
        assert asked == [], argv
