"""The eval runner with a scripted predictor: scored predictions, resume after a kill, prompts, submissions."""

from __future__ import annotations

import json

import pytest
from helpers import FORMAT_FIXTURES, import_format

from vlmtune.data.store import read_samples
from vlmtune.eval.runner import evaluate, with_prompt
from vlmtune.eval.tasks import get_task
from vlmtune.infer import Completion


class Scripted:
    """Answers from a dict (default "unanswerable"); can die after N calls like a killed process."""

    batch_size = 2

    def __init__(self, answers, die_after=None):
        self.answers, self.die_after, self.calls, self.seen = answers, die_after, 0, []

    def fingerprint(self):
        """What resuming compares: one model, fixed settings."""
        return {"model": "scripted", "settings": {}}

    def complete(self, samples, images):
        if self.die_after is not None and self.calls >= self.die_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        self.seen.extend(s.question for s in samples)
        assert all(len(i) == len(s.images) for s, i in zip(samples, images, strict=True))
        return [Completion(self.answers.get(s.id, "unanswerable"), 0, 1, "stop") for s in samples]


@pytest.fixture(scope="module")
def vizwiz(tmp_path_factory):
    out = tmp_path_factory.mktemp("vizwiz") / "d"
    import_format("vizwiz", FORMAT_FIXTURES / "vizwiz", out)
    return out


def test_scores_submission_and_resume(vizwiz, tmp_path):
    samples = [s for s in read_samples(vizwiz)[0] if s.split != "test"]
    answers = {"VizWiz_train_00000000": "phone", "VizWiz_train_00000001": "Red", "VizWiz_val_00000000": "three"}
    with pytest.raises(KeyboardInterrupt):
        evaluate(Scripted(answers, die_after=1), vizwiz, samples, get_task("vqa"), tmp_path / "e")
    assert len((tmp_path / "e" / "predictions.jsonl").read_text().splitlines()) == 2  # one batch written
    p = Scripted(answers)
    metrics = evaluate(p, vizwiz, samples, get_task("vqa"), tmp_path / "e")
    assert p.calls == 2 and len(p.seen) == 3  # only the 3 samples not done before the kill
    rows = [json.loads(x) for x in (tmp_path / "e" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [s.id for s in samples]
    by_id = {r["id"]: r for r in rows}
    assert by_id["VizWiz_train_00000000"]["scores"]["vqa_accuracy"] == 1.0
    assert by_id["VizWiz_train_00000001"]["scores"]["vqa_accuracy"] == 1.0  # 5 x red, normalised (GT disagree)
    meta = by_id["VizWiz_val_00000001"]["meta"]
    assert meta["answerable"] == 0 and meta["answer_type"] == "unanswerable" and meta["source"] == "vizwiz"
    assert metrics["n"] == 5 and "answerability_average_precision" in metrics
    assert set(metrics["by_answer_type"]) == {"other", "yes/no", "number", "unanswerable"}
    sub = json.loads((tmp_path / "e" / "submission_vizwiz.json").read_text())
    assert sub[0] == {"image": "VizWiz_train_00000000.jpg", "answer": "phone"} and len(sub) == 5
    saved = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert saved["vqa_accuracy"] == metrics["vqa_accuracy"] and saved["submission"].endswith("submission_vizwiz.json")


def test_vqav2_submission_uses_question_ids(tmp_path):
    out = tmp_path / "d"
    import_format("vqav2", FORMAT_FIXTURES / "vqav2", out)
    samples = [s for s in read_samples(out)[0] if s.split == "val"]
    evaluate(Scripted({}), out, samples, get_task("vqa"), tmp_path / "e")
    sub = json.loads((tmp_path / "e" / "submission_vqav2.json").read_text())
    assert [x["question_id"] for x in sub] == [s.meta["question_id"] for s in samples]
    assert all(isinstance(x["question_id"], int) for x in sub)


def test_prompt_template_rewrites_only_the_last_question(vizwiz):
    s = next(x for x in read_samples(vizwiz)[0] if x.id == "VizWiz_train_00000000")
    t = with_prompt(s, "{question}\nAnswer the question using a single word or phrase.")
    assert t.question == s.question + "\nAnswer the question using a single word or phrase."
    assert t.messages[-1] == s.messages[-1] and t.images == s.images and s.question == "What is this?"
    with pytest.raises(ValueError, match="must contain"):
        with_prompt(s, "Answer briefly.")
    p = Scripted({})
    evaluate(p, vizwiz, [s], get_task("vqa"), prompt="Q: {question} A:")
    assert p.seen == ["Q: What is this? A:"]


def test_retrieval_with_a_generative_model_scores_every_pair(fashion_dir):
    from helpers import TINY_BUILTIN

    from vlmtune.config import BuiltinCfg
    from vlmtune.data.sample import Sample, assistant, user
    from vlmtune.eval.ranking import retrieval_rows
    from vlmtune.infer import Predictor
    from vlmtune.models import get_family
    from vlmtune.models.builtin import build_builtin

    predictor = Predictor(build_builtin(BuiltinCfg(**TINY_BUILTIN), seed=0), get_family("llava"), batch_size=4)
    samples = [Sample(id=s.id, messages=[user("Describe the image."), assistant(s.meta["caption"])], images=s.images,
                      task="caption", references=[s.meta["caption"], s.meta["caption"].upper()])
               for s in read_samples(fashion_dir)[0][:3]]
    rows = retrieval_rows(predictor, fashion_dir, samples)
    assert [r["positives"] for r in rows] == [[f"{s.id}#0", f"{s.id}#1"] for s in samples]
    assert all(len(r["similarity"]) == 6 for r in rows)
    # a similarity is the mean log-probability per token of the caption given the image
    from vlmtune.data.images import load_images

    pair = Sample(id="x", messages=[user("Describe the image."), assistant(samples[1].references[1])],
                  images=samples[0].images)
    assert rows[0]["similarity"][f"{samples[1].id}#1"] == pytest.approx(
        predictor.loglik([pair], [load_images(fashion_dir, samples[0])])[0], abs=1e-5)
    metrics = evaluate(predictor, fashion_dir, samples, get_task("retrieval"))
    assert metrics["n"] == 3 and 0 <= metrics["i2t_R@1"] <= 100 and metrics["i2t_R@5"] == 100.0


class Ranker:
    """A scripted likelihood: a caption scores 0 given its own image and -1 given any other; it cannot generate."""

    batch_size = 2

    def __init__(self, owner):
        self.owner = owner  # image path -> the id of the sample it belongs to

    def loglik(self, pairs, images):
        return [0.0 if p.id.rsplit("#", 1)[0] == self.owner[p.images[0]] else -1.0 for p in pairs]


def test_the_runner_ranks_or_generates_as_the_tasks_output_says_not_by_its_name(fashion_dir, tmp_path):
    import dataclasses

    from vlmtune.data.sample import Sample, assistant, user

    samples = [Sample(id=s.id, messages=[user("Describe the image."), assistant(s.meta["caption"])], images=s.images,
                      task="caption", references=[s.meta["caption"]]) for s in read_samples(fashion_dir)[0][:3]]
    ranked = dataclasses.replace(get_task("retrieval"), name="catalogue_search")
    metrics = evaluate(Ranker({s.images[0]: s.id for s in samples}), fashion_dir, samples, ranked, tmp_path / "r")
    assert metrics["task"] == "catalogue_search" and metrics["n"] == 3
    assert metrics["i2t_R@1"] == metrics["t2i_R@1"] == 100.0 and "length_limited" not in metrics
    with pytest.raises(AttributeError, match="complete"):  # a "text" task generates, whatever its name
        evaluate(Ranker({}), fashion_dir, samples, dataclasses.replace(ranked, output="text"))


def test_submission_files_follow_the_tasks_submission_field_not_its_name(tmp_path):
    import dataclasses

    out = tmp_path / "d"
    import_format("vqav2", FORMAT_FIXTURES / "vqav2", out)
    samples = [s for s in read_samples(out)[0] if s.split == "val"]
    renamed = dataclasses.replace(get_task("vqa"), name="vqa_short_answers")
    metrics = evaluate(Scripted({}), out, samples, renamed, tmp_path / "e")
    assert metrics["submission"] == str(tmp_path / "e" / "submission_vqav2.json") and "length_limited" in metrics
    metrics = evaluate(Scripted({}), out, samples, dataclasses.replace(renamed, submission=False), tmp_path / "f")
    assert "submission" not in metrics and not list((tmp_path / "f").glob("submission_*"))
