"""Prediction files say what task they are: `vlmtune eval` and `predict` write it in every row, and `eval compare` /
`eval score` score a file as its rows say (caption predictions were scored with vqa_accuracy unless --task
caption was given)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlmtune.cli import main
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.store import read_samples, write_dataset
from vlmtune.eval.runner import evaluate, predict
from vlmtune.eval.tasks import get_task
from vlmtune.infer import Completion

CAPTIONS = ["a red top and blue trousers", "a green top and black shorts", "a white top and a purple skirt"]


class Parrot:
    """Answers each sample with its own caption (right) or a fixed wrong one."""

    batch_size, max_new_tokens = 4, 16

    def __init__(self, right: bool):
        self.right = right

    def fingerprint(self):
        return {"model": f"parrot-{self.right}", "settings": {}}

    def complete(self, samples, images):
        return [Completion(s.target if self.right else "a hat", 0, 3, "stop") for s in samples]


@pytest.fixture(scope="module")
def captions(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("captions")
    write_dataset(root, [(Sample(id=f"c{i}", messages=[user("Describe the image."), assistant(text)],
                                 images=[f"images/c{i}.png"], task="caption", references=[text], split="test"),
                          [Image.new("RGB", (16, 16), (80 * i, 0, 0))]) for i, text in enumerate(CAPTIONS)])
    return root


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_compare_scores_caption_predictions_as_captions(captions, tmp_path, capsys):
    samples = read_samples(captions)[0]
    for name, right in (("base", False), ("tuned", True)):
        evaluate(Parrot(right), captions, samples, get_task("caption"), tmp_path / name)
        assert {r["task"] for r in _rows(tmp_path / name / "predictions.jsonl")} == {"caption"}
    capsys.readouterr()
    assert main(["eval", "compare", str(tmp_path / "base" / "predictions.jsonl"),
                 str(tmp_path / "tuned" / "predictions.jsonl"), "--out", str(tmp_path / "c.html")]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["metrics"]
    assert set(metrics["tuned"]) == {"n", "CIDEr"} and metrics["tuned"]["CIDEr"] > metrics["base"]["CIDEr"]
    assert "task <b>caption</b>" in (tmp_path / "c.html").read_text()


def test_score_and_compare_read_the_task_of_predict_files(captions, tmp_path, capsys):
    """`vlmtune predict` writes no metrics.json: the rows alone say the task."""
    samples = read_samples(captions)[0]
    for name, right in (("base", False), ("tuned", True)):
        predict(Parrot(right), captions, samples, tmp_path / f"{name}.jsonl")
    capsys.readouterr()
    assert main(["eval", "score", "--predictions", str(tmp_path / "tuned.jsonl")]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored["task"] == "caption" and "CIDEr" in scored and "vqa_accuracy" not in scored
    assert main(["eval", "compare", str(tmp_path / "base.jsonl"), str(tmp_path / "tuned.jsonl"),
                 "--out", str(tmp_path / "c.html")]) == 0
    assert "CIDEr" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["metrics"]["base"]
    # --task still decides when given
    assert main(["eval", "score", "--predictions", str(tmp_path / "tuned.jsonl"), "--task", "vqa"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["task"] == "vqa"


def test_files_of_different_tasks_are_not_compared(captions, fashion_dir, tmp_path, capsys):
    predict(Parrot(True), captions, read_samples(captions)[0], tmp_path / "captions.jsonl")
    vqa = [s for s in read_samples(fashion_dir)[0] if s.split == "test"]
    predict(Parrot(True), fashion_dir, vqa, tmp_path / "vqa.jsonl")
    capsys.readouterr()
    assert main(["eval", "compare", str(tmp_path / "captions.jsonl"), str(tmp_path / "vqa.jsonl"),
                 "--out", str(tmp_path / "c.html")]) == 2
    err = capsys.readouterr().err
    assert "different tasks (base: caption, tuned: vqa)" in err and "Traceback" not in err


def test_rows_of_several_tasks_in_one_file_are_named(tmp_path, capsys):
    rows = [{"id": "1", "prediction": "red", "answers": ["red"], "task": "vqa"},
            {"id": "2", "prediction": "a dog", "references": ["a dog"], "task": "caption"}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "score", "--predictions", str(path)]) == 2
    assert f"{path}: rows of several tasks (vqa from line 1, caption from line 2)" in capsys.readouterr().err
