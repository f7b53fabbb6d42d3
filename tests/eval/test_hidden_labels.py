"""Samples without answers (a question and an image, no assistant turn: VizWiz's hidden-label test split) are a normal
input to predict and eval: eval writes the predictions and the submission files and scores nothing, saying so; the
submission is the official VizWiz JSON or the competition's NumPy array of answers, in the test file's order.
Training refuses them, naming file:line."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import yaml
from helpers import import_format, save_builtin, tiny_run_cfg

from vlmtune.cli import main
from vlmtune.data.standin import write_standin
from vlmtune.data.store import read_samples
from vlmtune.eval.runner import evaluate, write_submission
from vlmtune.eval.tasks import get_task

ANSWERS = ["red", "unanswerable", "", "café au lait", "a striped t-shirt", "blue"]
"""Scripted answers for the six test questions: empty, non-ASCII and of different lengths (the .npy's dtype is
as wide as the longest)."""


class Scripted:
    """Answers by sample id (default "unanswerable"), as a model would."""

    batch_size = 4

    def __init__(self, answers: dict[str, str]):
        self.answers = answers

    def fingerprint(self):
        return {"model": "scripted", "settings": {}}

    def complete(self, samples, images):
        from vlmtune.infer import Completion

        return [Completion(self.answers.get(s.id, "unanswerable"), 0, 1, "stop") for s in samples]


@pytest.fixture(scope="module")
def vizwiz(tmp_path_factory):
    """Stand-in VizWiz, imported: 24 train / 6 val with ten answers each, 6 test questions without answers."""
    tmp = tmp_path_factory.mktemp("vizwiz")
    write_standin("vizwiz", tmp / "raw", 30, seed=0, size=32)
    import_format("vizwiz", tmp / "raw", tmp / "data")
    return tmp / "raw", tmp / "data"


def _npy_bytes(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_eval_of_a_hidden_label_split_writes_predictions_and_both_submissions_and_scores_nothing(vizwiz, tmp_path,
                                                                                                capsys):
    raw, data = vizwiz
    test = [s for s in read_samples(data)[0] if s.split == "test"]
    assert len(test) == 6 and all(s.messages[-1]["role"] == "user" and s.answers is None for s in test)
    order = [q["image"] for q in json.loads((raw / "Annotations" / "test.json").read_text())]
    by_image = dict(zip(order, ANSWERS, strict=True))
    predictor = Scripted({s.id: by_image[f"{s.id}.jpg"] for s in test})
    metrics = evaluate(predictor, data, test, get_task("vqa"), tmp_path / "e", submission=["vizwiz", "vizwiz-npy"])

    assert metrics["n"] == 0 and metrics["unlabelled"] == 6 and "vqa_accuracy" not in metrics
    assert "6 of 6 samples have no answer (a hidden-label split)" in capsys.readouterr().err
    rows = [json.loads(x) for x in (tmp_path / "e" / "predictions.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in rows] == ANSWERS and not any("answers" in r or "scores" in r for r in rows)
    assert json.loads((tmp_path / "e" / "metrics.json").read_text()) == metrics
    # the official JSON: every test image once, in the test file's order, with its answer
    submitted = json.loads((tmp_path / "e" / "submission_vizwiz.json").read_text())
    assert submitted == [{"image": image, "answer": answer} for image, answer in zip(order, ANSWERS, strict=True)]
    assert order == [f"VizWiz_test_{k:08d}.jpg" for k in range(6)]
    # the competition's array: byte for byte np.save(np.array(answers)), answers in the same order
    npy = tmp_path / "e" / "submission_vizwiz.npy"
    assert metrics["submission"] == [str(tmp_path / "e" / "submission_vizwiz.json"), str(npy)]
    assert npy.read_bytes() == _npy_bytes(np.array(ANSWERS))
    back = np.load(npy)
    assert back.dtype == np.dtype("<U17") and back.shape == (6,) and back.tolist() == ANSWERS


def test_labelled_and_unlabelled_samples_together_score_the_labelled_ones(vizwiz, tmp_path):
    _, data = vizwiz
    samples = [s for s in read_samples(data)[0] if s.split in ("val", "test")]
    val = [s for s in samples if s.split == "val"]
    metrics = evaluate(Scripted({s.id: s.target for s in val}), data, samples, get_task("vqa"), tmp_path / "e")
    assert metrics["n"] == 6 and metrics["unlabelled"] == 6
    assert metrics["exact_match"] == 1.0 and sum(g["n"] for g in metrics["by_answer_type"].values()) == 6
    rows = [json.loads(x) for x in (tmp_path / "e" / "predictions.jsonl").read_text().splitlines()]
    assert [("scores" in r) for r in rows] == [s.split == "val" for s in samples]
    submitted = json.loads((tmp_path / "e" / "submission_vizwiz.json").read_text())  # detected from the source
    assert [x["image"] for x in submitted] == [f"{s.id}.jpg" for s in samples]


def test_an_answers_only_submission_refuses_a_question_missing_or_out_of_order(tmp_path):
    rows = [{"id": f"q{k}", "images": [f"images/VizWiz_test_{k:08d}.jpg"], "prediction": "red"} for k in range(4)]
    with pytest.raises(ValueError, match=r"row 2 is VizWiz_test_00000003.jpg \(question 3\).*missing"):
        write_submission(rows[:2] + rows[3:], tmp_path, "vizwiz-npy")  # question 2 skipped: 3 would get its answer
    with pytest.raises(ValueError, match="row 0 is VizWiz_test_00000001.jpg"):
        write_submission(rows[::-1][2:], tmp_path, "vizwiz-npy")
    assert not (tmp_path / "submission_vizwiz.npy").exists()
    assert write_submission(rows, tmp_path, "vizwiz-npy").read_bytes() == _npy_bytes(np.array(["red"] * 4))
    # images named otherwise cannot be checked: the rows are taken in the data's order
    other = [{"id": "b", "images": ["b.jpg"], "prediction": "two"}, {"id": "a", "images": ["a.jpg"], "prediction": "1"}]
    assert np.load(write_submission(other, tmp_path, "vizwiz-npy")).tolist() == ["two", "1"]


def test_cli_predict_and_eval_on_the_test_split_with_a_real_model(vizwiz, tmp_path, capsys):
    """`vlmtune eval|predict --split test --submission vizwiz` stopped with "the last message is not an assistant
    turn"; now both write the submission (the same answers: generation is greedy), and the analysis page too."""
    _, data = vizwiz
    model = save_builtin(tmp_path / "model")
    common = ["--model", str(model), "--data", str(data), "--split", "test", "--max-new-tokens", "3"]
    assert main(["eval", *common, "--out", str(tmp_path / "ev"), "--submission", "vizwiz",
                 "--submission", "vizwiz-npy"]) == 0
    out, err = capsys.readouterr()
    metrics = json.loads(out.strip().splitlines()[-1])
    assert metrics["n"] == 0 and metrics["unlabelled"] == 6 and "not scored" in err
    assert (tmp_path / "ev" / "analysis.html").is_file() and metrics["report"].endswith("analysis.html")
    answers = [x["answer"] for x in json.loads((tmp_path / "ev" / "submission_vizwiz.json").read_text())]
    assert len(answers) == 6 and np.load(tmp_path / "ev" / "submission_vizwiz.npy").tolist() == answers

    assert main(["predict", *common, "--out", str(tmp_path / "pr" / "test.jsonl"), "--submission", "vizwiz-npy"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {k: result[k] for k in ("out", "n", "submission")} == {
        "out": str(tmp_path / "pr" / "test.jsonl"), "n": 6,
        "submission": str(tmp_path / "pr" / "submission_vizwiz.npy")}
    assert (tmp_path / "pr" / "submission_vizwiz.npy").read_bytes() == _npy_bytes(np.array(answers))
    assert main(["eval", "compare", str(tmp_path / "ev" / "predictions.jsonl"), str(tmp_path / "pr" / "test.jsonl"),
                 "--out", str(tmp_path / "compare.html")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["metrics"]["base"] == {"n": 0}


@pytest.mark.parametrize("split", ["train_split", "val_split"])
def test_training_refuses_samples_without_an_answer_naming_file_and_line(vizwiz, tmp_path, capsys, split):
    _, data = vizwiz
    cfg = tiny_run_cfg(tmp_path, data, train={"max_steps": 1, "eval_every": 1, "save_every": 1})
    cfg["data"].update({"train_split": "train", "val_split": "val", split: "test"})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "run.yaml")]) == 2
    err = capsys.readouterr().err
    lines = (data / "manifest.jsonl").read_text().splitlines()
    first = next(k for k, x in enumerate(lines, start=1) if json.loads(x)["split"] == "test")
    assert "6 sample(s) without an answer to train on or score against" in err
    assert f"manifest.jsonl:{first}: sample 'VizWiz_test_00000000': no answer" in err
    assert "last message is not an assistant turn" not in err


def test_with_skip_bad_training_skips_and_lists_them(vizwiz, tmp_path, capsys):
    _, data = vizwiz
    cfg = tiny_run_cfg(tmp_path, data, train={"max_steps": 1, "eval_every": 1, "save_every": 1})
    cfg["data"].update({"train_split": None, "val_split": "val", "skip_bad": True})  # train on every split
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "run.yaml")]) == 0
    rejected = [json.loads(x) for x in (tmp_path / "runs" / "t" / "rejected.jsonl").read_text().splitlines()]
    assert sorted(json.loads(r["raw"])["id"] for r in rejected) == [f"VizWiz_test_{k:08d}" for k in range(6)]
    assert "skipped before training: 6 sample(s) without an answer" in capsys.readouterr().err


def test_retrieval_needs_captions_and_says_so(vizwiz):
    _, data = vizwiz
    test = [s for s in read_samples(data)[0] if s.split == "test"]
    with pytest.raises(ValueError, match=r"retrieval: 6 sample\(s\) have no caption .* \['VizWiz_test_00000000'"):
        evaluate(Scripted({}), data, test, get_task("retrieval"))
