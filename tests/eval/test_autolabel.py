"""`vlmtune data autolabel`: the tiny built-in model labels a folder of images through the CLI, in one process and in
two (torchrun, gloo), and `vlmtune train` takes the result; a fake predictor (known answers) checks prompts, flagged
garbage, resuming and dataset input without a model."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import TINY_BUILTIN, tiny_run_cfg
from PIL import Image

from vlmtune.cli import main
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.store import read_samples
from vlmtune.eval.autolabel import DEFAULT_CAPTION_PROMPT, autolabel, config_hash, problem_of
from vlmtune.infer import Completion

IMAGES = ["a.png", "b.jpg", "c.png", "sub/d.png", "sub/e.png"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Five images (two in a subfolder), plus a hidden image and a text file that are not labelled."""
    root = tmp_path_factory.mktemp("photos") / "photos"
    for i, rel in enumerate([*IMAGES, ".thumbs/x.png"]):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (40 * i, 200 - 30 * i, 90)).save(root / rel)
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from vlmtune.config import BuiltinCfg
    from vlmtune.models.builtin import build_builtin

    path = tmp_path_factory.mktemp("model") / "tinyvlm"
    loaded = build_builtin(BuiltinCfg(**TINY_BUILTIN))
    loaded.model.save_pretrained(path)
    loaded.processor.save_pretrained(path)
    return path


CAPTION_ARGS = ["--task", "caption", "--batch-size", "2", "--max-new-tokens", "4"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, photos, tiny_model) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("one") / "labels"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["data", "autolabel", str(photos), "--model", str(tiny_model), "--out", str(out),
                     *CAPTION_ARGS]) == 0
    return out, json.loads(printed.getvalue().strip().splitlines()[-1])


def test_a_folder_is_captioned_into_a_dataset_that_train_uses(one_process, photos, tiny_model, tmp_path):
    out, result = one_process
    samples = read_samples(out)[0]  # a valid dataset: every image there, no empty target
    flagged = [json.loads(x) for x in (out / "flagged.jsonl").read_text().splitlines()] if result["flagged"] else []
    assert sorted([s.id for s in samples] + [f["id"] for f in flagged]) == IMAGES, "every image exactly once"
    assert result["labelled"] == len(samples) > 0 and result["flagged_ids"] == [f["id"] for f in flagged]
    assert all(problem_of(f["prediction"]) == f["problem"] for f in flagged)
    for s in samples:
        assert s.images == [f"images/{s.id}"] and (out / s.images[0]).read_bytes() == (photos / s.id).read_bytes()
        assert s.source == "autolabel:tinyvlm" and s.task == "caption" and s.split == "train"
        assert s.question == DEFAULT_CAPTION_PROMPT and s.references == [s.target] and problem_of(s.target) is None
        assert s.meta["autolabel"] == {
            "model": str(tiny_model), "model_dir": str(tiny_model.resolve()), "config_hash": config_hash(tiny_model),
            "task": "caption", "prompt": DEFAULT_CAPTION_PROMPT,
            "generation": {"max_new_tokens": 4, "greedy": True, "num_beams": 1}}
    preds = [json.loads(x) for x in (out / ".autolabel/predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in preds] == IMAGES
    assert {s.id: s.target for s in samples} == {r["id"]: r["prediction"] for r in preds
                                                  if r["id"] not in result["flagged_ids"]}

    cfg = tiny_run_cfg(tmp_path, out, data={"path": str(out), "max_length": 128, "val_split": None},
                       train={"max_steps": 1, "micro_batch_size": 2, "global_batch_size": 2, "eval_every": 0,
                              "save_every": 0})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 0, "vlmtune train takes the output as it is"


def test_two_processes_label_each_image_once_and_write_what_one_process_writes(one_process, photos, tiny_model,
                                                                              tmp_path):
    out1, result1 = one_process
    out2 = tmp_path / "labels"
    done = subprocess.run([*TORCHRUN, "-m", "vlmtune.cli", "data", "autolabel", str(photos), "--model",
                           str(tiny_model), "--out", str(out2), *CAPTION_ARGS],
                          capture_output=True, text=True, env=ENV, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    assert printed == [{**result1, "out": str(out2)}], "one result, printed once (rank 0)"
    assert (out2 / "manifest.jsonl").read_text() == (out1 / "manifest.jsonl").read_text()
    preds = [json.loads(x)["id"] for x in (out2 / ".autolabel/predictions.jsonl").read_text().splitlines()]
    assert preds == IMAGES, "each image generated for exactly once, across both processes"


class FakePredictor:
    """Answers from a table (default: "<image stem> <question word count>"); records what it was asked."""

    batch_size, max_new_tokens, num_beams = 2, 8, 1

    def __init__(self, answers: dict[str, str] | None = None, die_on_call: int | None = None):
        self.answers, self.die_on_call = answers or {}, die_on_call
        self.asked: list[tuple[str, str]] = []
        self.calls = 0

    def fingerprint(self):
        """What resuming compares: one model, fixed settings."""
        return {"model": "scripted", "settings": {}}

    def complete(self, samples, images):
        self.calls += 1
        if self.calls == self.die_on_call:
            raise KeyboardInterrupt("killed")
        assert all(len(ims) == len(s.images) == 1 for s, ims in zip(samples, images, strict=True))
        self.asked.extend((s.id, s.question) for s in samples)
        return [Completion(self.answers.get(s.id, f"{Path(s.images[0]).stem} {len(s.question.split())}"), 0, 1,
                           "stop") for s in samples]


@pytest.fixture
def fake_model(tmp_path) -> Path:
    path = tmp_path / "fake-model"
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "llava"}')
    return path


def test_vqa_questions_template_and_garbage_flagged(photos, fake_model, tmp_path):
    questions = tmp_path / "q.txt"
    questions.write_text("# asked of every image\nWhat colour is it?\n\nIs it round?\n")
    garbage = {"a.png#q2": "", "b.jpg#q1": "?!...", "c.png#q1": "red red red red red"}
    predictor = FakePredictor(garbage)
    template = "{question} Answer in one word."
    result = autolabel(predictor, fake_model, photos, "vqa", out=tmp_path / "vqa", prompt=template,
                       questions=questions)

    ids = [f"{rel}#q{k}" for rel in IMAGES for k in (1, 2)]
    assert [i for i, _ in predictor.asked] == ids
    assert predictor.asked[0][1] == "What colour is it? Answer in one word.", "the template is used for generation"
    assert result["flagged_ids"] == ["a.png#q2", "b.jpg#q1", "c.png#q1"] and result["labelled"] == len(ids) - 3
    flagged = {r["id"]: r for r in map(json.loads, (tmp_path / "vqa/flagged.jsonl").read_text().splitlines())}
    assert [flagged[i]["problem"] for i in result["flagged_ids"]] == [
        "empty", "no letters or digits", "one word repeated 4+ times in a row"]
    assert flagged["a.png#q2"]["prompt"] == "Is it round? Answer in one word."
    samples = {s.id: s for s in read_samples(tmp_path / "vqa")[0]}
    assert list(samples) == [i for i in ids if i not in garbage]
    s = samples["sub/d.png#q2"]
    assert s.question == "Is it round?", "the stored sample keeps the plain question"
    assert s.target == "d 7" and s.answers == ["d 7"] and s.task == "vqa" and s.references is None
    assert s.meta["autolabel"]["prompt"] == "Is it round? Answer in one word."
    assert s.source == "autolabel:fake-model" and s.meta["autolabel"]["task"] == "vqa"

    with pytest.raises(ValueError, match="needs --questions"):
        autolabel(FakePredictor(), fake_model, photos, "vqa", out=tmp_path / "x")
    with pytest.raises(ValueError, match="outside"):
        autolabel(FakePredictor(), fake_model, photos, "caption", out=photos / "labels")


def test_an_interrupted_run_continues_and_other_settings_are_refused(photos, fake_model, tmp_path):
    out = tmp_path / "labels"
    with pytest.raises(KeyboardInterrupt):
        autolabel(FakePredictor(die_on_call=2), fake_model, photos, "caption", out=out)
    assert not (out / "manifest.jsonl").exists(), "the dataset is only written at the end"

    resumed = FakePredictor()
    result = autolabel(resumed, fake_model, photos, "caption", out=out)
    assert [i for i, _ in resumed.asked] == IMAGES[2:], "the first batch (2 images) is not generated again"
    whole = tmp_path / "whole"
    autolabel(FakePredictor(), fake_model, photos, "caption", out=whole)
    assert (out / "manifest.jsonl").read_text() == (whole / "manifest.jsonl").read_text()
    assert result["labelled"] == 5 and not (out / "flagged.jsonl").exists()

    with pytest.raises(ValueError, match=r"other settings \(prompt\)"):
        autolabel(FakePredictor(), fake_model, photos, "caption", out=out, prompt="Describe it.")


def test_a_dataset_lacking_targets_is_labelled_and_its_labelled_samples_kept(photos, fake_model, tmp_path):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    Image.open(photos / "a.png").save(root / "images/a.png")
    rows = [Sample(id="done", messages=[user("What colour?"), assistant("red")], images=["images/a.png"],
                   split="val"),
            Sample(id="open", messages=[user("How many cats?")], images=["images/a.png"], split="test"),
            Sample(id="open2", messages=[user("Is it day?")], images=["images/a.png"])]
    (root / "manifest.jsonl").write_text("".join(json.dumps(s.to_json()) + "\n" for s in rows))

    predictor = FakePredictor()
    result = autolabel(predictor, fake_model, root, "vqa", out=tmp_path / "out")
    assert [i for i, _ in predictor.asked] == ["open", "open2"]
    assert result["kept"] == 1 and result["labelled"] == 2
    out = read_samples(tmp_path / "out")[0]
    assert [s.id for s in out] == ["done", "open", "open2"], "dataset order"
    assert out[0] == rows[0], "an already labelled sample is copied unchanged"
    assert out[1].target == "a 3" and out[1].split == "test" and out[2].split == "train"
    assert out[1].images == ["images/a.png"] and (tmp_path / "out/images/a.png").is_file()

    with pytest.raises(ValueError, match="carry their own"):
        autolabel(FakePredictor(), fake_model, root, "vqa", out=tmp_path / "o2", questions=photos / "notes.txt")
    with pytest.raises(ValueError, match="must contain {question}"):
        autolabel(FakePredictor(), fake_model, root, "vqa", out=tmp_path / "o4", prompt="Answer briefly.")
    with pytest.raises(ValueError, match="nothing to label"):
        autolabel(FakePredictor(), fake_model, tmp_path / "out", "vqa", out=tmp_path / "o3")


def test_a_run_is_recorded_with_the_model_directory_it_names(photos, fake_model, tmp_path):
    """data/ sits below runs.py, so the caller resolves a run to its model directory (the CLI passes
    `runs.resolve_model_dir(--model)`); a directory holding no model is refused, not recorded with the hash of no
    config files."""
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "run_config.yaml").write_text("name: r\n")
    with pytest.raises(ValueError, match=r"runs/r is not a model directory .*resolve_model_dir"):
        autolabel(FakePredictor(), run, photos, "caption", out=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()

    autolabel(FakePredictor(), run, photos, "caption", out=tmp_path / "labels", model_dir=fake_model)
    s = read_samples(tmp_path / "labels")[0][0]
    assert s.source == "autolabel:r" and s.meta["autolabel"]["model"] == str(run)
    assert s.meta["autolabel"]["model_dir"] == str(fake_model.resolve())
    assert s.meta["autolabel"]["config_hash"] == config_hash(fake_model)
