"""The generation cap of caption tasks: `max_new_tokens: auto` (the default) is sized from the gold captions' token
counts with the model's own tokenizer, so captions are not cut at a guessed cap (the Russian meme captioner cut
its captions at 48 tokens), and predictions that reach the cap are counted and reported at the end of eval and
predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import save_builtin
from PIL import Image

from vlmtune.cli import main
from vlmtune.config import RunCfg
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.store import read_samples, write_dataset
from vlmtune.eval.runner import AUTO_MIN_NEW_TOKENS, auto_max_new_tokens, evaluate
from vlmtune.eval.tasks import get_task
from vlmtune.infer import Completion

LONG = ("a person in a bright red striped sweater with long sleeves and dark blue trousers stands against a plain "
        "light grey wall, looking straight at the camera, both hands in the pockets")


class WordTokenizer:
    """One token per word: counts a test can do by hand."""

    def __call__(self, texts, add_special_tokens=True):
        assert not add_special_tokens
        return {"input_ids": [t.split() for t in texts]}


def _caption(i: int, text: str) -> Sample:
    return Sample(id=f"c{i}", messages=[user("Describe the image."), assistant(text)], images=[f"images/c{i}.png"],
                  task="caption", references=[text, text.upper()], split="test")


@pytest.fixture(scope="module")
def captions(tmp_path_factory) -> Path:
    """5 test images whose captions are 31 words long (far beyond the 16 tokens of the old fixed default)."""
    root = tmp_path_factory.mktemp("captions")
    write_dataset(root, [(_caption(i, LONG), [Image.new("RGB", (32, 32), (40 * i, 90, 160))]) for i in range(5)])
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_builtin(tmp_path_factory.mktemp("m") / "model", seed=0)


def test_auto_is_the_99th_percentile_plus_a_margin():
    words = [" ".join(["w"] * n) for n in [10] * 98 + [30, 200]]  # one outlier of 200 words is ignored
    samples = [Sample(id=str(i), messages=[user("q", n_images=0), assistant(t)], task="caption", references=[t])
               for i, t in enumerate(words)]
    cap, how = auto_max_new_tokens(WordTokenizer(), samples)
    assert cap == 39 == -(-(30 + 1) * 5 // 4)  # p99 = 30 words, + the end token, + 25%
    assert "99th percentile of 100 gold texts: 30 tokens, longest 200" in how
    short = [Sample(id=str(i), messages=[user("q", n_images=0), assistant("red")], answers=["red", "dark red"])
             for i in range(9)]
    assert auto_max_new_tokens(WordTokenizer(), short)[0] == AUTO_MIN_NEW_TOKENS  # VQA keeps its old cap of 16
    unlabelled = [Sample(id="u", messages=[user("q", n_images=0)]), Sample(id="e", messages=[user("q", n_images=0),
                                                                                            assistant("")])]
    cap, how = auto_max_new_tokens(WordTokenizer(), unlabelled)
    assert cap == AUTO_MIN_NEW_TOKENS and "no gold texts" in how


def test_eval_max_new_tokens_is_auto_or_a_positive_integer():
    assert RunCfg.from_file(None).eval.max_new_tokens == "auto"
    assert RunCfg.from_file(None, ["--eval.max_new_tokens", "48"]).eval.max_new_tokens == 48
    assert RunCfg.from_dict({"eval": {"max_new_tokens": 48}}).eval.max_new_tokens == 48
    assert RunCfg.from_file(None, ["--eval.max_new_tokens", "auto"]).eval.max_new_tokens == "auto"
    for bad in ("0", "lots", "4.5"):
        with pytest.raises(ValueError, match="max_new_tokens"):
            RunCfg.from_file(None, ["--eval.max_new_tokens", bad])


def test_caption_eval_is_not_cut_at_a_fixed_cap(captions, model, tmp_path, capsys):
    """`vlmtune eval` on captions with no --max-new-tokens: the cap holds the captions with the model's tokenizer;
    the random model never writes an end token, so every prediction reaches the cap and that is reported."""
    from transformers import AutoTokenizer

    out = tmp_path / "e"
    assert main(["eval", "--model", str(model), "--data", str(captions), "--split", "test", "--out", str(out),
                 "--no-report"]) == 0
    err = capsys.readouterr().err
    tokens = len(AutoTokenizer.from_pretrained(model)(LONG.upper(), add_special_tokens=False)["input_ids"])
    cap = json.loads((out / "predictions.fingerprint.json").read_text())["settings"]["max_new_tokens"]
    assert cap >= tokens + 1 > AUTO_MIN_NEW_TOKENS, (cap, tokens)
    assert f"max_new_tokens auto: {cap} (99th percentile of 10 gold texts: {tokens} tokens" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "caption" and metrics["length_limited"] == 5 and metrics["length_limited_fraction"] == 1
    assert f"warning: 5 of 5 predictions (100.0%) reached max_new_tokens={cap} without an end token" in err
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert {r["finish_reason"] for r in rows} == {"length"}


def test_predict_reports_the_predictions_at_the_cap(captions, model, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert main(["predict", "--model", str(model), "--data", str(captions), "--out", str(out),
                 "--max-new-tokens", "3"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["length_limited"] == 5 and result["length_limited_fraction"] == 1.0
    assert "warning: 5 of 5 predictions (100.0%) reached max_new_tokens=3 without an end token" in captured.err


class Scripted:
    """Stops at the cap ("length") for the ids in `capped`, else ends its answer."""

    batch_size, max_new_tokens = 2, 7

    def __init__(self, capped: set[str]):
        self.capped, self.calls = capped, 0

    def fingerprint(self):
        return {"model": "scripted", "settings": {}}

    def complete(self, samples, images):
        self.calls += 1
        return [Completion("a caption", 0, 2, "length" if s.id in self.capped else "stop") for s in samples]


def test_capped_predictions_are_counted_and_kept_on_resume(captions, tmp_path, capsys):
    samples = read_samples(captions)[0]
    metrics = evaluate(Scripted({"c1", "c3"}), captions, samples, get_task("caption"), tmp_path / "e")
    assert (metrics["length_limited"], metrics["length_limited_fraction"]) == (2, 0.4)
    assert "warning: 2 of 5 predictions (40.0%) reached max_new_tokens=7" in capsys.readouterr().err
    again = Scripted(set())
    resumed = evaluate(again, captions, samples, get_task("caption"), tmp_path / "e")
    assert again.calls == 0 and resumed["length_limited"] == 2  # the rows kept say how they ended
    assert "warning: 2 of 5 predictions" in capsys.readouterr().err
    none = evaluate(Scripted(set()), captions, samples, get_task("caption"), tmp_path / "fresh")
    assert none["length_limited"] == 0 and "warning" not in capsys.readouterr().err
