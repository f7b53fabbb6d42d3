"""VLFeedback: rated completions per prompt become preference pairs by the rule asked for (best-worst or all pairs;
the mean of three or of two aspects), ties and equal responses give no pair, and a prompt with no pair, a malformed
row or a missing image is a bad record named; the round trip; the CLI's --option."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import FORMAT_FIXTURES, assert_round_trip, import_format

from vlmtune.cli import main
from vlmtune.data.formats import get_format, import_dataset
from vlmtune.data.formats.vlfeedback import pairs_of
from vlmtune.data.store import BadRecord, read_samples

FIX = FORMAT_FIXTURES / "vlfeedback"
FMT = get_format("vlfeedback")


def _import(tmp_path, name="d", **options):
    import_dataset(FMT, FIX, tmp_path / name, skip_bad=True, progress=False, options=options)
    samples = read_samples(tmp_path / name)[0]
    rejected = [json.loads(line) for line in (tmp_path / name / "rejected.jsonl").read_text().splitlines()]
    return samples, rejected


def test_best_worst_pairs_by_the_mean_of_three_aspects(tmp_path):
    samples, rejected = _import(tmp_path)
    assert [s.id for s in samples] == ["svit-conversation-3700", "LLaVA-detail-51"]
    man, square = samples
    # 5/5/5 vs 3/5/2; Fuyu's "N/A" helpfulness leaves it unrated though its mean would be the lowest
    assert (man.chosen, man.rejected) == ("The man is holding an orange umbrella.", "He is holding a kite.")
    assert man.messages == [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                "text": "What is the man holding?"}]}]
    assert man.images == ["images/merged_images/svit-conversation-3700.jpg"]
    assert man.meta == {"prompt_id": "svit-conversation-3700", "chosen_model": "Qwen-VL-Chat-7B",
                        "rejected_model": "idefics-9b-instruct",
                        "chosen_ratings": {"Helpfulness": "5", "Visual Faithfulness": "5",
                                           "Ethical Considerations": "5"},
                        "rejected_ratings": {"Helpfulness": "3", "Visual Faithfulness": "2",
                                             "Ethical Considerations": "5"}}
    assert (man.split, man.source, man.task) == ("train", "vlfeedback", "vqa")
    # 4.33 vs 3.33; the lowest (3.0) is the chosen response again, with a trailing space: no pair with it
    assert (square.chosen, square.rejected) == ("A purple square.", "A purple square on a white table.")
    assert len(rejected) == 1 and rejected[0]["line"] == 3
    assert "row 3 (id 'm3it-vqa-v2-9'): no preference pair: 2 rated completion(s) of 2, every two tie" in \
        rejected[0]["error"]


def test_the_other_rules(tmp_path):
    hv, _ = _import(tmp_path, "hv", score="mean-hv")  # without Ethical Considerations the 1-rated answer wins
    assert (hv[1].chosen, hv[1].rejected) == ("A purple square on a white table.", "A purple square. ")
    every, _ = _import(tmp_path, "all", pairs="all")
    assert [s.id for s in every] == ["svit-conversation-3700-0-1", "svit-conversation-3700-0-2",
                                     "svit-conversation-3700-1-2", "LLaVA-detail-51-0-1", "LLaVA-detail-51-1-2"]
    assert {s.meta["prompt_id"] for s in every} == {"svit-conversation-3700", "LLaVA-detail-51"}
    assert (every[1].chosen, every[1].rejected) == ("An umbrella.", "He is holding a kite.")
    # positions: ties and equal responses give no pair, unrated completions none, the higher score is chosen
    assert pairs_of([("a", 3.0), ("b", 3.0), ("c", None), ("a ", 1.0), ("d", 4.0)], "all") == [
        (4, 0), (1, 3), (4, 1), (4, 3)]  # not (0, 1): a tie; not (0, 3): the same response
    assert pairs_of([("a", 3.0), ("b", 3.0), ("c", None), ("a ", 1.0), ("d", 4.0)], "best-worst") == [(4, 3)]
    assert pairs_of([("a", 4.0), ("b", 4.0), ("c", 2.0)], "best-worst") == [(0, 2)]  # the first of a tie
    assert pairs_of([("a", None), ("b", 2.0)], "best-worst") == []


@pytest.mark.parametrize("pairs", ["best-worst", "all"])
def test_round_trip(tmp_path, pairs):
    first = import_format("vlfeedback", FIX, tmp_path / "x", skip_bad=True) if pairs == "best-worst" else None
    src = tmp_path / "src"
    shutil.copytree(FIX, src)
    lines = (src / "vlfeedback_80k.jsonl").read_text().splitlines()
    (src / "vlfeedback_80k.jsonl").write_text("\n".join(lines[:2]) + "\n")  # without the prompt that has no pair
    if pairs == "all":  # export all pairs; each exported row is one pair, read back with the default rule
        import_dataset(FMT, src, tmp_path / "all", progress=False, options={"pairs": "all"})
        shutil.rmtree(src)
        from vlmtune.data.formats import export_dataset

        export_dataset(FMT, tmp_path / "all", src)
        first = read_samples(tmp_path / "all")[0]
    samples = assert_round_trip("vlfeedback", src, tmp_path)
    assert [s.to_json() for s in samples] == [s.to_json() for s in first]
    row = json.loads((tmp_path / "exported" / "train.jsonl").read_text().splitlines()[0])
    assert row["img_path"] == "images/merged_images/svit-conversation-3700.jpg"
    assert [c["response"] for c in row["completions"]] == [samples[0].chosen, samples[0].rejected]


def test_cli_option_and_bad_records(tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(FIX, src)
    rows = [json.loads(line) for line in (FIX / "vlfeedback_80k.jsonl").read_text().splitlines()]
    good = rows[0]
    bad = [
        good | {"id": "no-image"},  # no merged_images/no-image.jpg
        good | {"id": "escape", "img_path": "../../etc/passwd"},
        good | {"id": "abs", "img_path": "/etc/passwd"},
        good | {"id": "resp", "completions": [good["completions"][0] | {"response": None}]},
        good | {"id": "notes", "completions": [{"response": "x"}]},
        good | {"id": "one", "completions": good["completions"][:1]},
        {"prompt": "no id"},
    ]
    lines = [json.dumps(r) for r in [good] + bad] + ['{"id": "x", "prompt": ']
    (src / "vlfeedback_80k.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["data", "import", "vlfeedback", str(src), "--out", str(tmp_path / "d"), "--option", "pairs=all"]) == 2
    err = capsys.readouterr().err
    assert "vlfeedback_80k.jsonl:2: row 2 (id 'no-image'): no image" in err and "--skip-bad skips" in err
    # the unfinished import was made with pairs=all: resuming it with another rule is refused
    assert main(["data", "import", "vlfeedback", str(src), "--out", str(tmp_path / "d"), "--skip-bad"]) == 2
    assert "holds an unfinished import of vlfeedback" in capsys.readouterr().err
    assert main(["data", "import", "vlfeedback", str(src), "--out", str(tmp_path / "d"), "--skip-bad",
                 "--option", "pairs=all"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 3
    errors = [json.loads(line)["error"] for line in (tmp_path / "d" / "rejected.jsonl").read_text().splitlines()]
    assert len(errors) == 8
    assert "neither merged_images/no-image.jpg nor no-image.jpg" in errors[0]
    assert "escapes the dataset directory" in errors[1]
    assert "img_path '/etc/passwd' is outside" in errors[2]
    assert "completions[0].response must be a string, got null" in errors[3]
    assert "completions[0].annotations must be an object" in errors[4]
    assert "no preference pair: 1 rated completion(s) of 1" in errors[5]
    assert "'id' must be a non-empty string or integer" in errors[6]
    assert "malformed JSON" in errors[7]
    for argv, message in ((["--option", "pairs=some"], "vlfeedback option pairs='some': expected one of"),
                          (["--option", "beta=1"], "the vlfeedback format has no option 'beta'"),
                          (["--option", "pairs"], "--option 'pairs': expected NAME=VALUE")):
        assert main(["data", "import", "vlfeedback", str(FIX), "--out", str(tmp_path / "e")] + argv) == 2
        assert message in capsys.readouterr().err


def test_a_bad_record_stops_the_import(tmp_path):
    with pytest.raises(BadRecord, match=r"vlfeedback_80k.jsonl:3: row 3 \(id 'm3it-vqa-v2-9'\): no preference pair"):
        import_format("vlfeedback", FIX, tmp_path / "d")
