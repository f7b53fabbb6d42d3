"""Training runs the record checks of `vlmtune data check` before step 0: a literal image placeholder in a message
(the processor would expand it into image tokens that match no image: "Found total 9 <image> tokens and 8 images"
mid-run, naming nothing) and a text over data.max_text_chars are found before training. Without data.skip_bad the
run stops there naming file:line and sample; with it they are listed in rejected.jsonl and the rest trains.

    line 49  placeholder-train   "<image>" in a train question
    line 50  placeholder-val     "<image>" in a val question (validation generates from it)
    line 51  huge-text           a question of MAX_TEXT_CHARS + 1 characters
    line 52  surrogate-text      a lone surrogate (JSON "\\udcff") in an answer: no tokenizer can encode it
"""

from __future__ import annotations

import json
import shutil
import types

import pytest
from helpers import tiny_run_cfg

from vlmtune.cli import main
from vlmtune.config import RunCfg
from vlmtune.data.lint import MAX_TEXT_CHARS, placeholder_pattern, record_issues
from vlmtune.data.sample import Sample, assistant, user

GOOD = 48  # the fashion fixture's samples: lines 1-48
BAD = {  # sample id -> (its line, what its error must say)
    "placeholder-train": (49, "literal '<image>' in the user turn 0 text"),
    "placeholder-val": (50, "literal '<image>' in the user turn 0 text"),
    "huge-text": (51, f"{MAX_TEXT_CHARS + 1} characters in the user turn 0 text, over data.max_text_chars="
                      f"{MAX_TEXT_CHARS}"),
    "surrogate-text": (52, "the answer text is not valid Unicode ('\\udcff' at character 4"),
}


@pytest.fixture
def data(tmp_path, fashion_dir):
    out = tmp_path / "data"
    shutil.copytree(fashion_dir, out)
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    train, val = (next(r for r in rows if r["split"] == s) for s in ("train", "val"))
    texts = {"placeholder-train": (train, "What is <image> here?", None),
             "placeholder-val": (val, "<image> What colour?", None),
             "huge-text": (train, "x" * (MAX_TEXT_CHARS + 1), None),
             "surrogate-text": (train, None, "red\udcff")}
    for name, (row, question, answer) in texts.items():
        row = json.loads(json.dumps(row))
        row["id"] = name
        if question is not None:
            row["messages"][0]["content"][1]["text"] = question
        if answer is not None:
            row["messages"][-1]["content"][0]["text"] = answer
            row.pop("answers", None)
        rows.append(row)
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _cfg(tmp_path, data, **d):
    return RunCfg.from_dict(tiny_run_cfg(tmp_path, data, data=d,
                                         train={"max_steps": 2, "eval_every": 2, "save_every": 2}))


def test_without_skip_bad_the_run_stops_before_step_0_naming_each(tmp_path, data):
    from vlmtune.train.loop import train

    cfg = _cfg(tmp_path, data)
    with pytest.raises(ValueError, match=r"4 sample\(s\) that `vlmtune data check` rejects") as e:
        train(cfg)
    for name, (line, why) in BAD.items():
        assert f"manifest.jsonl:{line}: sample '{name}': {why}" in str(e.value)
    assert not (cfg.run_dir / "checkpoints").exists(), "stopped before step 0"


def test_with_skip_bad_they_are_listed_and_the_rest_trains(tmp_path, data):
    from vlmtune.train.loop import train

    cfg = _cfg(tmp_path, data, skip_bad=True)
    train(cfg)
    rejected = {r["line"]: r for r in map(json.loads, (cfg.run_dir / "rejected.jsonl").read_text().splitlines())}
    assert sorted(rejected) == [line for line, _ in BAD.values()]
    for name, (line, why) in BAD.items():
        assert rejected[line]["error"].startswith(f"sample {name!r}: {why}")
        assert rejected[line]["file"] == str(data / "manifest.jsonl")
        assert json.loads(rejected[line]["raw"])["id"] == name
    assert (cfg.run_dir / "checkpoints" / "step-2").is_dir()


def test_the_text_limit_is_an_option(tmp_path, data, capsys):
    from vlmtune.train.loop import train

    cfg = _cfg(tmp_path, data, max_text_chars=MAX_TEXT_CHARS + 1, max_length=10**6)
    with pytest.raises(ValueError, match=r"3 sample\(s\) that `vlmtune data check` rejects") as e:
        train(cfg)
    assert "huge-text" not in str(e.value)
    out = tmp_path / "report.json"
    assert main(["data", "check", str(data), "--out", str(out), "--max-text-chars", "20"]) == 1
    long = json.loads(out.read_text())["errors"]["text_too_long"]
    assert {e["sample"] for e in long} >= {"huge-text", "placeholder-train"}
    assert all("over data.max_text_chars=20" in e["message"] for e in long)


def test_data_check_reports_the_same_records(tmp_path, data):
    out = tmp_path / "report.json"
    assert main(["data", "check", str(data), "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    found = {e["sample"]: (e["line"], e["message"]) for kind in report["errors"].values() for e in kind}
    assert found.keys() == BAD.keys()
    for name, (line, why) in BAD.items():
        assert found[name][0] == line and why in found[name][1]


def test_the_familys_own_placeholder_text_is_refused():
    """A processor whose image placeholder is not one of the common ones still has it refused as literal text."""
    processor = types.SimpleNamespace(image_token="<img>", tokenizer=types.SimpleNamespace(boi_token="<boi>"))
    sample = Sample("s", [user("a <boi> and an <img>"), assistant("red")], images=["a.png"])
    assert record_issues(sample) == []
    assert [m for _, m in record_issues(sample, placeholders=placeholder_pattern(processor))] == [
        "literal '<boi>' in the user turn 0 text (images are slots in `content`, never text)"]


def test_an_image_the_processor_would_blow_up_is_refused_before_step_0(tmp_path, fashion_dir, monkeypatch):
    """Within the aspect limit (40:1), but the model's processor scales its short side up (the tiny LLaVA's to 32:
    32x1280): over a resized-pixel limit (lowered here to the tiny model's scale), named by data check and by
    training before step 0, skipped with skip_bad."""
    from PIL import Image

    import vlmtune.data.images as images
    from vlmtune.train.loop import train

    data = tmp_path / "data"
    shutil.copytree(fashion_dir, data)
    rows = [json.loads(x) for x in (data / "manifest.jsonl").read_text().splitlines()]
    row = json.loads(json.dumps(next(r for r in rows if r["split"] == "train")))
    Image.new("RGB", (4, 160), "red").save(data / "tall.png")
    row.update(id="tall", images=["tall.png"])
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows, row]))
    monkeypatch.setattr(images.check_image_shape, "__defaults__", (None, images.MAX_ASPECT_RATIO, 32 * 32 * 20))
    with pytest.raises(ValueError, match=r"sample 'tall': tall.png: 4x160 pixels becomes 32x1280"):
        train(_cfg(tmp_path / "stop", data))
    cfg = _cfg(tmp_path / "skip", data, skip_bad=True)
    train(cfg)
    [rejected] = map(json.loads, (cfg.run_dir / "rejected.jsonl").read_text().splitlines())
    assert rejected["line"] == len(rows) + 1 and "in the model's image processor" in rejected["error"]
    out = tmp_path / "report.json"  # data check with the run's model (its processor) finds it too
    assert main(["data", "check", str(data), "--model", str(cfg.run_dir), "--out", str(out)]) == 1
    [found] = [e for kind in json.loads(out.read_text())["errors"].values() for e in kind]
    assert found["sample"] == "tall" and "becomes 32x1280 = 40960 pixels in the model's image processor" in \
        found["message"]


def test_a_rejected_record_holding_line_separators_is_read_back(tmp_path, fashion_dir):
    """rejected.jsonl keeps each bad record's raw line as it is (ensure_ascii=False), so a U+2028 or U+0085 in it is
    written as that character; reading the file back with str.splitlines() cut the row there, and the next reader
    (the val split's load_split, then the preflight) stopped with a JSONDecodeError (found by tests/fuzz). JSON lines
    end at "\\n" only."""
    from vlmtune.train.loop import train

    data = tmp_path / "data"
    shutil.copytree(fashion_dir, data)
    rows = [json.loads(x) for x in (data / "manifest.jsonl").read_text().splitlines()]
    train_row = next(r for r in rows if r["split"] == "train")
    broken = {**json.loads(json.dumps(train_row)), "id": "broken", "split": ["train"]}  # a record-level bad line
    broken["messages"][0]["content"][1]["text"] = "Which\u2028colour\x85here?"
    placeholder = {**json.loads(json.dumps(train_row)), "id": "placeholder"}  # found by the preflight
    placeholder["messages"][0]["content"][1]["text"] = "What is <image> here?"
    lines = [json.dumps(r) for r in rows] + [json.dumps(broken, ensure_ascii=False), json.dumps(placeholder)]
    (data / "manifest.jsonl").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    cfg = _cfg(tmp_path, data, skip_bad=True)
    train(cfg)
    rejected = [json.loads(x) for x in (cfg.run_dir / "rejected.jsonl").read_text(encoding="utf-8").split("\n") if x]
    assert [(r["line"], r["error"].split(":")[0]) for r in rejected] == [(GOOD + 1, "sample 'broken'"),
                                                                        (GOOD + 2, "sample 'placeholder'")]
    assert json.loads(rejected[0]["raw"])["messages"][0]["content"][1]["text"] == "Which\u2028colour\x85here?"
