"""Manifest records are checked against one schema (`sample.SampleRecord`) where manifests are read: a structurally
wrong line (a message that is not an object, a list as `split`, `"answers": "red"`, JSON nested too deeply) is a bad
record named by file and line, for `data check`, for `read_samples` and for training (stop before step 0, or with
data.skip_bad skip it into rejected.jsonl), never a traceback and never a sample silently left out of every split."""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers import tiny_run_cfg
from PIL import Image

from vlmtune.cli import main
from vlmtune.config import RunCfg
from vlmtune.data.lint import check_dataset
from vlmtune.data.sample import Sample, SampleRecord, assistant, user
from vlmtune.data.stats import dataset_stats
from vlmtune.data.store import MANIFEST, MAX_JSON_DEPTH, BadRecord, read_samples, write_dataset
from vlmtune.train.build import build_data


def _nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = {"k": value}
    return value


def _write(root, n=4, split="train"):
    items = [(Sample(id=f"s{i}", messages=[user("What colour?"), assistant("red")], images=[f"images/{i}.png"],
                     answers=["red"], split=split), [Image.new("RGB", (8, 8), (i * 40, 0, 0))]) for i in range(n)]
    write_dataset(root, items)
    return root


def _corrupt(row: dict, case: str) -> dict | str:
    """Line 3 (sample s2) made wrong in one way; returns the new row (or raw line)."""
    msgs = row["messages"]
    if case == "message_not_object":
        msgs[0] = "What colour?"
        row["images"] = []
    elif case == "part_not_object":
        msgs[0]["content"][1] = "What colour?"
    elif case == "text_part_without_text":
        msgs[0]["content"][1] = {"type": "text"}
    elif case == "content_not_list":
        msgs[0]["content"] = 5
    elif case == "unknown_role":
        msgs[1]["role"] = "bot"
    elif case == "meta_list":
        row["meta"] = ["colour"]
    elif case == "split_list":
        row["split"] = ["train"]
    elif case == "id_number":
        row["id"] = 2
    elif case == "answers_string":
        row["answers"] = "red"
    elif case == "answers_null":
        row["answers"] = ["red", None]
    elif case == "answer_object":
        msgs[1]["content"][0]["text"] = {"en": "red"}
    elif case == "deep_meta":
        row["meta"] = {"deep": _nested(MAX_JSON_DEPTH + 5)}
    elif case == "deep_json":
        return "[" * 100_000 + "]" * 100_000  # Python's own parser gives up with a RecursionError here
    return row


CASES = {  # case -> what the error must say
    "message_not_object": "messages[0]: must be an object, got string 'What colour?'",
    "part_not_object": "messages[0].content[1]: must be an object, got string",
    "text_part_without_text": "messages[0].content[1]: a text part needs 'text'",
    "content_not_list": "messages[0].content: must be a list, got integer 5",
    "unknown_role": "messages[1].role: must be one of 'system', 'user' or 'assistant', got string 'bot'",
    "meta_list": "meta: must be an object, got list",
    "split_list": "split: must be a string, got list ['train']",
    "id_number": "id: must be a string, got integer 2",
    "answers_string": "answers: must be a list, got string 'red'",
    "answers_null": "answers[1]: must be a string, got null None",
    "answer_object": "messages[1].content[0].text: must be a string, got object",
    "deep_meta": f"nested deeper than {MAX_JSON_DEPTH} arrays/objects",
    "deep_json": f"nested deeper than {MAX_JSON_DEPTH} arrays/objects",
}


def _write_bad(root, cases: list[str]) -> dict[int, str]:
    """A manifest of good samples with one bad line per case after them; returns line -> case."""
    _write(root, n=4)
    lines = (root / MANIFEST).read_text().splitlines()
    bad = {}
    for case in cases:
        row = _corrupt(json.loads(lines[2]), case)
        lines.append(row if isinstance(row, str) else json.dumps(row))
        bad[len(lines)] = case
    (root / MANIFEST).write_text("\n".join(lines) + "\n")
    return bad


@pytest.mark.parametrize("case", CASES)
def test_a_wrong_record_is_named_by_file_and_line(tmp_path, case):
    root = _write(tmp_path, n=4)
    lines = (root / MANIFEST).read_text().splitlines()
    row = _corrupt(json.loads(lines[2]), case)
    lines[2] = row if isinstance(row, str) else json.dumps(row)
    (root / MANIFEST).write_text("\n".join(lines) + "\n")

    with pytest.raises(BadRecord) as e:
        read_samples(root, split="train")  # a list as split must not just leave the sample out of "train"
    assert f"{MANIFEST}:3: " in str(e.value) and CASES[case] in str(e.value), str(e.value)

    good, bad = read_samples(root, split="train", skip_bad=True)
    assert [s.id for s in good] == ["s0", "s1", "s3"], "every good record is kept"
    assert [(b.line, CASES[case] in b.reason) for b in bad] == [(3, True)]

    report = check_dataset(root, progress=False)
    assert report["counts"] == {"error:bad_record": 1}
    assert [(x["line"], CASES[case] in x["message"]) for x in report["errors"]["bad_record"]] == [(3, True)]
    assert report["samples"] == 3


def test_data_check_lists_every_bad_record_and_exits_1(tmp_path, capsys):
    bad = _write_bad(tmp_path / "d", list(CASES))
    out = tmp_path / "report.json"
    assert main(["data", "check", str(tmp_path / "d"), "--out", str(out)]) == 1
    assert "Traceback" not in capsys.readouterr().err
    report = json.loads(out.read_text())
    listed = {e["line"]: e["message"] for e in report["errors"]["bad_record"]}
    assert set(listed) == set(bad)
    for line, case in bad.items():
        assert CASES[case] in listed[line], (case, listed[line])
    assert report["samples"] == 4


def test_train_stops_before_step_0_naming_the_record(tmp_path, capsys):
    data = tmp_path / "d"
    bad = _write_bad(data, ["split_list", "answers_string"])
    cfg = tiny_run_cfg(tmp_path, data, data={"val_split": None})
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(cfg))  # JSON is YAML
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    first, second = sorted(bad)
    assert f"{data / MANIFEST}:{first}: sample 's2': split: must be a string" in err
    assert f"and 1 more bad record(s), on line(s) {second}" in err, "every bad record is named"
    assert "data.skip_bad" in err and "Traceback" not in err
    assert not (tmp_path / "runs/t/metrics.jsonl").exists(), "stopped before step 0"


def test_train_with_skip_bad_lists_the_records_in_rejected_jsonl(tmp_path):
    data = tmp_path / "d"
    bad = _write_bad(data, list(CASES))
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, data, data={"val_split": None, "skip_bad": True}))
    cfg.run_dir.mkdir(parents=True)
    _, mixture, _, _, _ = build_data(cfg, cfg.run_dir)
    assert sorted(s.id for s in mixture.sources[0].samples) == ["s0", "s1", "s2", "s3"]
    rejected = [json.loads(x) for x in (cfg.run_dir / "rejected.jsonl").read_text().splitlines()]
    assert {r["line"]: r["source"] for r in rejected} == {line: "train" for line in bad}
    for r in rejected:
        assert CASES[bad[r["line"]]] in r["error"] and r["file"] == str(data / MANIFEST)


def test_the_schema_has_the_fields_of_the_sample_dataclass():
    fields = {f.name: f for f in dataclasses.fields(Sample)}
    assert set(SampleRecord.model_fields) == set(fields)
    for name, f in SampleRecord.model_fields.items():
        if not f.is_required():
            default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING \
                else fields[name].default
            assert f.get_default(call_default_factory=True) == default, name


def test_string_content_is_read_and_a_list_question_type_does_not_stop_the_check(tmp_path):
    root = _write(tmp_path, n=2)
    lines = (root / MANIFEST).read_text().splitlines()
    row = json.loads(lines[1])
    row["images"], row["messages"] = [], [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hi."}]
    row["meta"] = {"question_type": ["not", "a", "string"]}
    lines[1] = json.dumps(row)
    (root / MANIFEST).write_text("\n".join(lines) + "\n")
    samples, _ = read_samples(root)
    assert samples[1].target == "Hi." and samples[1].question == "Hi?"
    report = check_dataset(root, progress=False)  # a list as meta.question_type is free-form, not an error
    assert report["ok"] and report["samples"] == 2
    assert dataset_stats(root)["samples"] == 2


def test_a_duplicate_id_names_its_line_and_the_first_one(tmp_path):
    root = _write(tmp_path, n=3)
    lines = (root / MANIFEST).read_text().splitlines()
    (root / MANIFEST).write_text("\n".join([*lines, "", lines[1]]) + "\n")  # line 5 repeats line 2
    with pytest.raises(BadRecord) as e:
        read_samples(root)
    assert f"{MANIFEST}:5: duplicate sample id 's1' (first on line 2)" in str(e.value)
    good, bad = read_samples(root, skip_bad=True)
    assert [s.id for s in good] == ["s0", "s1", "s2"]
    assert [(b.line, b.reason) for b in bad] == [(5, "duplicate sample id 's1' (first on line 2)")]
    assert json.loads(bad[0].raw)["id"] == "s1"


def test_rejected_jsonl_keeps_the_bad_records_of_every_source(tmp_path):
    domain, replay = tmp_path / "domain", tmp_path / "replay"
    bad_domain = _write_bad(domain, ["split_list"])
    bad_replay = _write_bad(replay, ["answers_string", "meta_list"])
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, domain, data={
        "val_split": None, "skip_bad": True,
        "sources": [{"name": "domain", "path": str(domain)}, {"name": "replay", "path": str(replay), "weight": 0.5}]}))
    cfg.run_dir.mkdir(parents=True)
    for _ in range(2):  # a restarted run lists them afresh, once
        _, mixture, _, _, _ = build_data(cfg, cfg.run_dir)
        assert [len(s.samples) for s in mixture.sources] == [4, 4]
        rejected = [json.loads(x) for x in (cfg.run_dir / "rejected.jsonl").read_text().splitlines()]
        assert [(r["source"], r["file"], r["line"]) for r in rejected] == (
            [("domain", str(domain / MANIFEST), line) for line in bad_domain]
            + [("replay", str(replay / MANIFEST), line) for line in bad_replay])


def test_a_lone_surrogate_in_a_split_or_source_is_printed_as_its_escape(tmp_path, capsys):
    """A manifest's "\\udcff" escape (a lone surrogate: what an undecodable byte becomes) kept as a split, source or
    task name reached the JSON line `data check` and `data stats` print, and a UTF-8 stdout cannot print it: a
    traceback after the report was written (found by tests/fuzz). The line now carries the escape, and json.loads
    gives the name back."""
    root = _write(tmp_path / "d", n=2)
    rows = [json.loads(x) for x in (root / MANIFEST).read_text().splitlines()]
    rows[1].update(split="tr\udcffain", source="s\ud800", task="vqa\udc80")
    (root / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in rows))
    for verb in ("check", "stats"):
        assert main(["data", verb, str(root)]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["splits"] == {"train": 1, "tr\udcffain": 1}
        assert result["tasks"] == {"vqa": 1, "vqa\udc80": 1}


def test_the_lines_of_samples_found_bad_after_reading_are_looked_up_past_a_deeply_nested_line(tmp_path):
    """Training's preflight names a sample it refuses (a placeholder in its text) by its manifest line, found by a
    second pass over the manifest (`lint.manifest_lines`). That pass parsed each line with json.loads, and a line
    nested deeper than Python's parser can follow (skipped earlier as a bad record with data.skip_bad) stopped it, and
    the run, with a RecursionError (found by tests/fuzz)."""
    from vlmtune.data.lint import manifest_lines

    root = _write(tmp_path / "d", n=2)
    lines = (root / MANIFEST).read_text().splitlines()
    deep = "[" * 5000 + "]" * 5000
    (root / MANIFEST).write_text("\n".join([lines[0], deep, "{" * 100_000, lines[1]]) + "\n")
    assert manifest_lines(root, {"s0", "s1"}) == {"s0": 1, "s1": 4}


def test_a_deeply_nested_line_with_a_byte_that_is_not_utf8_is_a_bad_record(tmp_path):
    """A line that is not UTF-8 is named with its sample id when it parses anyway; that attempt used json.loads,
    which a line nested thousands deep stops with a RecursionError: a traceback instead of the bad record (found by
    tests/fuzz)."""
    root = _write(tmp_path / "d", n=2)
    lines = (root / MANIFEST).read_bytes().splitlines()
    (root / MANIFEST).write_bytes(b"\n".join([lines[0], b"[" * 5000 + b"\xff", lines[1]]) + b"\n")
    samples, bad = read_samples(root, skip_bad=True)
    assert [s.id for s in samples] == ["s0", "s1"]
    assert [(b.line, b.reason) for b in bad] == [(2, "not valid UTF-8: byte 0xff at character 5001")]
