"""`vlmtune data pairs`: a scripted sampler (each prompt's candidate answers, drawn with torch's RNG, so the seeding is
what makes re-runs repeat) checks the pairing rules, determinism, resuming, fallbacks and bad input; the tiny
built-in model samples for real through the CLI and `vlmtune train` runs DPO on the result."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY_BUILTIN, save_builtin, tiny_run_cfg
from PIL import Image

from vlmtune.cli import main
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.store import read_samples
from vlmtune.eval.metrics import METRICS
from vlmtune.eval.pairs import make_pairs, sample_seed
from vlmtune.infer import Completion

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}

# per sample: (gold answers, the answers the scripted model samples from)
SCRIPT = {
    "mixed": (["red"], ["red", "blue", "blue", "Red", "green"]),  # right: red / Red; wrong: blue most often
    "wrong": (["12"], ["13", "14", "13"]),  # never right
    "right": (["cat"], ["cat", "Cat"]),  # always right: no pair
    "close": (["cat"], ["cat", "a cat"]),  # anls gives "a cat" 0.6: right at threshold 0.3, wrong at 1.0
    "tie": (["yes"], ["yes", "no", "maybe"]),
}


class ScriptedPredictor:
    """Samples each prompt's answer from SCRIPT with torch's global RNG; records its calls and their options."""

    max_new_tokens, num_beams = 8, 1

    def __init__(self, batch_size: int = 3, die_on_call: int | None = None):
        self.batch_size, self.die_on_call = batch_size, die_on_call
        self.asked: list[str] = []
        self.calls = 0
        self.options: dict = {}

    def complete(self, samples, images, temperature=0.0, top_p=1.0, top_k=None):
        self.calls += 1
        if self.calls == self.die_on_call:
            raise KeyboardInterrupt("killed")
        assert temperature > 0 and len(samples) <= self.batch_size
        assert all(s.messages[-1]["role"] == "user" and len(ims) == 1 for s, ims in zip(samples, images, strict=True))
        self.options = {"temperature": temperature, "top_p": top_p, "top_k": top_k}
        self.asked.extend(s.id for s in samples)
        texts = [SCRIPT[s.id][1][int(torch.randint(len(SCRIPT[s.id][1]), ()))] for s in samples]
        return [Completion(t, 0, 1, "stop") for t in texts]


@pytest.fixture
def data(tmp_path) -> Path:
    root = tmp_path / "src"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 30, 30)).save(root / "images/a.png")
    rows = [Sample(id=i, messages=[user(f"Question {i}?"), assistant(gold[0])], images=["images/a.png"],
                   answers=gold if i != "wrong" else None, split="train" if i != "tie" else "val",
                   meta={"kind": i})
            for i, (gold, _) in SCRIPT.items()]
    (root / "manifest.jsonl").write_text("".join(json.dumps(s.to_json()) + "\n" for s in rows))
    return root


@pytest.fixture
def fake_model(tmp_path) -> Path:
    path = tmp_path / "fake-model"
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "llava"}')
    return path


def _pairs(out: Path) -> dict[str, Sample]:
    return {s.id: s for s in read_samples(out)[0]}


def test_pairs_are_right_against_wrong_by_the_metric_and_repeat(data, fake_model, tmp_path):
    torch.manual_seed(0)
    predictor = ScriptedPredictor()
    result = make_pairs(predictor, fake_model, data, "exact_match", out=tmp_path / "p", k=8, temperature=0.7,
                        top_p=0.9, top_k=20)
    assert predictor.options == {"temperature": 0.7, "top_p": 0.9, "top_k": 20}
    assert predictor.asked == [i for i in SCRIPT for _ in range(8)], "k answers per prompt, in batches"
    pairs = _pairs(tmp_path / "p")
    metric = METRICS["exact_match"]
    for s in pairs.values():
        info = s.meta["pairs"]
        gold = SCRIPT[s.id][0]
        assert s.gold() == gold and s.meta["kind"] == s.id and s.messages[-1]["role"] == "user"
        assert len(info["answers"]) == 8 and all(a["score"] == metric(a["text"], gold) for a in info["answers"])
        texts = [a["text"] for a in info["answers"]]
        wrong = [t for t in texts if metric(t, gold) < 1.0]
        assert s.rejected == max(wrong, key=lambda t: (wrong.count(t), -texts.index(t))), "most frequent wrong one"
        if info["chosen_from"] == "sampled":
            right = [t for t in texts if metric(t, gold) >= 1.0]
            assert s.chosen == max(right, key=lambda t: (right.count(t), -texts.index(t)))
        else:
            assert s.chosen == gold[0] and not any(metric(t, gold) >= 1.0 for t in texts)
        assert info["metric"] == "exact_match" and info["k"] == 8 and info["temperature"] == 0.7
        assert info["model"] == str(fake_model)
        assert (tmp_path / "p" / s.images[0]).read_bytes() == (data / "images/a.png").read_bytes()
    assert pairs["wrong"].meta["pairs"]["chosen_from"] == "gold" and pairs["wrong"].chosen == "12"
    all_right = [i for i in SCRIPT if all(METRICS["exact_match"](t, SCRIPT[i][0]) >= 1 for t in SCRIPT[i][1])]
    assert result["all_right"] == len(all_right) and not set(all_right) & set(pairs)
    assert result["pairs"] == len(pairs) == len(SCRIPT) - len(all_right) and result["pairs_from_gold"] == 1
    assert result["all_wrong"] == 1 and result["skipped"] == 0

    again = tmp_path / "again"
    torch.manual_seed(12345)  # the global RNG elsewhere: the sampling does not depend on it
    make_pairs(ScriptedPredictor(batch_size=8), fake_model, data, "exact_match", out=again, k=8, temperature=0.7,
               top_p=0.9, top_k=20)
    assert (again / "manifest.jsonl").read_text() == (tmp_path / "p/manifest.jsonl").read_text(), \
        "seeded by (seed, sample id): the same pairs whatever the batch size"
    other = tmp_path / "other"
    make_pairs(ScriptedPredictor(), fake_model, data, "exact_match", out=other, k=8, temperature=0.7, top_p=0.9,
               top_k=20, seed=1)
    assert (other / "manifest.jsonl").read_text() != (again / "manifest.jsonl").read_text(), "another seed differs"
    assert sample_seed(0, "a") == sample_seed(0, "a") != sample_seed(0, "b")


def test_fallback_split_and_threshold(data, fake_model, tmp_path):
    result = make_pairs(ScriptedPredictor(), fake_model, data, "exact_match", out=tmp_path / "skip", k=6,
                        fallback="skip")
    assert "wrong" not in _pairs(tmp_path / "skip") and result["skipped"] == 1 and result["pairs_from_gold"] == 0
    result = make_pairs(ScriptedPredictor(), fake_model, data, "exact_match", out=tmp_path / "val", k=6, split="val")
    assert list(_pairs(tmp_path / "val")) == ["tie"] and result["samples"] == 1
    # anls scores "a cat" against "cat" between 0 and 1: right at threshold 0.5, wrong at 1.0
    low = make_pairs(ScriptedPredictor(), fake_model, data, "anls", out=tmp_path / "low", k=6, threshold=0.3)
    high = make_pairs(ScriptedPredictor(), fake_model, data, "anls", out=tmp_path / "high", k=6)
    assert "close" not in _pairs(tmp_path / "low") and low["all_right"] == high["all_right"] + 1
    assert _pairs(tmp_path / "high")["close"].rejected == "a cat"


def test_an_interrupted_run_continues_and_other_settings_are_refused(data, fake_model, tmp_path):
    out = tmp_path / "p"
    with pytest.raises(KeyboardInterrupt):
        make_pairs(ScriptedPredictor(batch_size=4, die_on_call=3), fake_model, data, "exact_match", out=out, k=4)
    assert not (out / "manifest.jsonl").exists(), "the dataset is only written at the end"
    resumed = ScriptedPredictor(batch_size=4)
    make_pairs(resumed, fake_model, data, "exact_match", out=out, k=4)
    assert resumed.asked == [i for i in list(SCRIPT)[2:] for _ in range(4)], "the first two samples are kept"
    whole = tmp_path / "whole"
    make_pairs(ScriptedPredictor(batch_size=4), fake_model, data, "exact_match", out=whole, k=4)
    assert (out / "manifest.jsonl").read_text() == (whole / "manifest.jsonl").read_text()
    # threshold and fallback only choose among the answers: a re-run with them samples nothing
    again = ScriptedPredictor()
    make_pairs(again, fake_model, data, "exact_match", out=out, k=4, fallback="skip")
    assert again.asked == []
    with pytest.raises(ValueError, match=r"other settings \(temperature\)"):
        make_pairs(ScriptedPredictor(), fake_model, data, "exact_match", out=out, k=4, temperature=0.5)


def test_bad_input_is_named(data, fake_model, tmp_path):
    with pytest.raises(ValueError, match=r"'bleu'.*not one of .*exact_match"):
        make_pairs(ScriptedPredictor(), fake_model, data, "bleu", out=tmp_path / "x")
    with pytest.raises(ValueError, match="not a model directory"):
        make_pairs(ScriptedPredictor(), tmp_path / "nothing", data, "exact_match", out=tmp_path / "x")
    with pytest.raises(ValueError, match="at least 2"):
        make_pairs(ScriptedPredictor(), fake_model, data, "exact_match", out=tmp_path / "x", k=1)
    with pytest.raises(ValueError, match="outside"):
        make_pairs(ScriptedPredictor(), fake_model, data, "exact_match", out=data / "pairs")
    lines = (data / "manifest.jsonl").read_text()
    (data / "manifest.jsonl").write_text(lines + json.dumps(Sample(
        id="open", messages=[user("How many?")], images=["images/a.png"]).to_json()) + "\n")
    with pytest.raises(ValueError, match=r"manifest.jsonl: sample 'open' has no gold answer"):
        make_pairs(ScriptedPredictor(), fake_model, data, "exact_match", out=tmp_path / "x")
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        main(["data", "pairs", str(data), "--model", str(fake_model), "--metric", "bleu"])
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        assert main(["data", "pairs", str(data), "--model", str(tmp_path / "no-run"), "--metric", "exact_match"]) != 0
    assert f"no such run directory: {tmp_path / 'no-run'}" in said.getvalue()


@pytest.fixture(scope="module")
def tiny(fashion_dir, tmp_path_factory) -> tuple[Path, list[str], Path, dict]:
    """The tiny built-in model, the CLI arguments, and one CLI run's output and printed result."""
    model = save_builtin(tmp_path_factory.mktemp("model") / "tinyvlm")
    args = ["data", "pairs", str(fashion_dir), "--model", str(model), "--metric", "exact_match", "--samples", "3",
            "--split", "train", "--batch-size", "3", "--max-new-tokens", "3", "--device", "cpu"]
    out = tmp_path_factory.mktemp("one") / "p"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*args, "--out", str(out)]) == 0
    return model, args, out, json.loads(printed.getvalue().strip().splitlines()[-1])


def test_the_tiny_model_samples_pairs_that_dpo_trains_on(tiny, tmp_path):
    model, args, out, one = tiny
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*args, "--out", str(tmp_path / "p2")]) == 0
    two = json.loads(printed.getvalue().strip().splitlines()[-1])
    assert one == {**two, "out": str(out)} and one["samples"] == 38
    assert one["pairs"] + one["all_right"] + one["skipped"] == 38 and one["pairs"] > 0
    assert (out / "manifest.jsonl").read_text() == (tmp_path / "p2/manifest.jsonl").read_text(), \
        "real sampling repeats: seeded by (seed, sample id)"
    pairs = read_samples(out)[0]
    for s in pairs:
        scores = {a["text"]: a["score"] for a in s.meta["pairs"]["answers"]}
        assert scores[s.rejected] < 1.0 and (s.meta["pairs"]["chosen_from"] == "gold" or scores[s.chosen] >= 1.0)

    cfg = tiny_run_cfg(tmp_path, out, data={"path": str(out), "max_length": 128, "val_split": None},
                       model={"family": "llava", "path": str(model), "builtin": dict(TINY_BUILTIN)},
                       lora={"enabled": True, "r": 4}, train={"method": "dpo", "max_steps": 2, "micro_batch_size": 2,
                                                             "global_batch_size": 2, "eval_every": 0, "save_every": 0})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 0, "DPO trains on the pairs as they are"
    assert (tmp_path / "runs/t/dpo_reference.json").is_file()


def test_two_processes_sample_each_prompt_once_and_write_what_one_process_writes(tiny, tmp_path):
    model, args, out, one = tiny
    done = subprocess.run([*TORCHRUN, "-m", "vlmtune.cli", *args, "--out", str(tmp_path / "p")],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    assert printed == [{**one, "out": str(tmp_path / "p")}], "one result, printed once (rank 0)"
    assert (tmp_path / "p/manifest.jsonl").read_text() == (out / "manifest.jsonl").read_text()
    rows = [json.loads(x)["id"] for x in (tmp_path / "p/.pairs/answers.jsonl").read_text().splitlines()]
    assert sorted(rows) == sorted(json.loads(x)["id"] for x in (out / ".pairs/answers.jsonl").read_text().splitlines())
    assert len(rows) == len(set(rows)) == 38, "each prompt sampled once, across both processes"
