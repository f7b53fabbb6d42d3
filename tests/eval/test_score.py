"""`vlmtune eval score`: predictions made anywhere scored by the same task code as `vlmtune eval`."""

from __future__ import annotations

import json

import pytest

from vlmtune.cli import main
from vlmtune.eval.metrics.vqa import vqa_accuracy
from vlmtune.eval.tasks import TASKS, get_task

REF = json.loads((__import__("helpers").SHARED / "reference" / "vqa_example.json").read_text())


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _score(capsys, *args) -> dict:
    assert main(["eval", "score", *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_every_task_is_registered():
    assert set(TASKS) == {"vqa", "caption", "chartqa", "chart_to_table", "docvqa", "retrieval"}
    for t in TASKS.values():
        assert t.primary in t.metrics


def test_vqa_file_with_types_and_variants(tmp_path, capsys):
    rows = [{"id": i, "prediction": c["prediction"], "answers": c["gt_answers"],
             "answer_type": "yes/no" if i % 2 else "other", "question_type": "what"}
            for i, c in enumerate(REF["cases"])]
    path = _write(tmp_path / "p.jsonl", rows)
    m = _score(capsys, "--task", "vqa", "--predictions", str(path), "--out", str(tmp_path / "out"))
    expected = [c["official_GT-Vision-Lab_HEAD"] / 100 for c in REF["cases"]]
    assert m["vqa_accuracy"] == pytest.approx(sum(expected) / len(expected), abs=1e-4)  # reference is rounded
    odd = [e for i, e in enumerate(expected) if i % 2]
    assert m["by_answer_type"]["yes/no"]["vqa_accuracy"] == pytest.approx(sum(odd) / len(odd), abs=1e-4)
    scored = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [r["scores"]["vqa_accuracy"] for r in scored] == [vqa_accuracy(c["prediction"], c["gt_answers"])
                                                            for c in REF["cases"]]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["vqa_accuracy"] == m["vqa_accuracy"]
    lmms = _score(capsys, "--task", "vqa", "--predictions", str(path), "--vqa-variant", "lmms_eval")
    col = [c["lmms_eval_vqav2_variant"] / 100 for c in REF["cases"]]
    assert lmms["vqa_accuracy"] == pytest.approx(sum(col) / len(col), abs=1e-4) and lmms["vqa_variant"] == "lmms_eval"


def test_vizwiz_answerability_is_reported(tmp_path, capsys):
    rows = [{"id": "a", "prediction": "red", "answers": ["red"] * 10, "answerable": 1},
            {"id": "b", "prediction": "unanswerable", "answers": ["unanswerable"] * 10, "answerable": 0},
            {"id": "c", "prediction": "unanswerable", "answers": ["blue"] * 10, "answerable": 1}]
    m = _score(capsys, "--task", "vqa", "--predictions", str(_write(tmp_path / "p.jsonl", rows)))
    assert m["answerability_f1"] == pytest.approx(2 / 3)  # answerable predicted for a only: P 1, R 1/2
    assert 0 < m["answerability_average_precision"] <= 1


def test_chartqa_docvqa_and_retrieval(tmp_path, capsys):
    chart = [{"id": "1", "prediction": "105", "target": "100", "subset": "human"},
             {"id": "2", "prediction": "Yes", "target": "no", "subset": "augmented"}]
    m = _score(capsys, "--task", "chartqa", "--predictions", str(_write(tmp_path / "c.jsonl", chart)))
    assert m["relaxed_accuracy"] == 0.5 and m["by_subset"]["human"]["relaxed_accuracy"] == 1.0
    doc = [{"id": "1", "prediction": "12/15/89", "answers": ["12/15/88"]}]
    assert _score(capsys, "--task", "docvqa", "--predictions", str(_write(tmp_path / "d.jsonl", doc)))["anls"] == 0.875
    ret = [{"id": "i0", "similarity": {"t0": 0.9, "t1": 0.1, "t2": 0.5}, "positives": ["t0", "t1"]},
           {"id": "i1", "similarity": {"t0": 0.2, "t1": 0.8, "t2": 0.4}, "positives": ["t2"]}]
    m = _score(capsys, "--task", "retrieval", "--predictions", str(_write(tmp_path / "r.jsonl", ret)))
    # i2t: i0's best text t0 is its own; i1's best is t1 (i0's) -> R@1 = 50; t2i: t0 -> i0, t1 -> i1 (wrong),
    # t2 -> i0 (wrong) -> R@1 = 33.3
    assert m["i2t_R@1"] == pytest.approx(50.0) and m["t2i_R@1"] == pytest.approx(100 / 3)


def test_bad_lines_are_named(tmp_path, capsys):
    path = _write(tmp_path / "p.jsonl", [{"id": "1", "prediction": "a", "answers": ["a"]},
                                         {"id": "2", "answers": ["b"]}])
    assert main(["eval", "score", "--task", "vqa", "--predictions", str(path)]) == 2
    assert "p.jsonl:2: id '2': 'prediction' must be a string" in capsys.readouterr().err
    path.write_text('{"id": "1", "prediction": "a", "answers": ["a"]}\n{"id": "1", "prediction"\n')
    assert main(["eval", "score", "--task", "vqa", "--predictions", str(path)]) == 2
    assert "p.jsonl:2: malformed JSON" in capsys.readouterr().err
    path.write_text('{"id": "1", "prediction": "a"}\n')
    assert main(["eval", "score", "--task", "chartqa", "--predictions", str(path)]) == 2
    assert "no 'answers', 'references' or 'target'" in capsys.readouterr().err


def test_a_probe_metric_must_be_one_the_task_reports():
    from vlmtune.config import ProbeCfg
    from vlmtune.eval.forgetting import load_probes

    with pytest.raises(ValueError, match="metric 'CIDEr' is not computed by task 'vqa'"):
        load_probes([ProbeCfg(name="p", path="x", task="vqa", metric="CIDEr")])
    assert "CIDEr" in get_task("caption").metrics


def test_caption_file_matches_the_reference_and_splits_languages(tmp_path, capsys):
    coco = json.loads((__import__("helpers").SHARED / "reference" / "coco_example.json").read_text())
    rows = [{"id": i, "prediction": coco["res_raw"][i][0], "references": coco["gts_raw"][i]} for i in coco["gts_raw"]]
    m = _score(capsys, "--task", "caption", "--predictions", str(_write(tmp_path / "en.jsonl", rows)))
    for key, value in coco["corpus"].items():
        assert m[key] == pytest.approx(value, abs=1e-9), key
    assert "SPICE" in m["unavailable"] and 0 < m["chrF"] <= 1
    ru = [{"id": "r1", "prediction": "Кошка спит на ноутбуке.", "lang": "ru",
           "references": ["Кошка спит на клавиатуре ноутбука.", "Серая кошка лежит на ноутбуке."]},
          {"id": "r2", "prediction": "Две собаки играют на траве.", "lang": "ru",
           "references": ["Две собаки играют на траве.", "Собаки бегают по зелёному полю."]}]
    m = _score(capsys, "--task", "caption", "--predictions", str(_write(tmp_path / "mix.jsonl", rows + ru)))
    assert set(m["by_lang"]) == {"en", "ru"} and m["by_lang"]["en"]["CIDEr"] == pytest.approx(coco["corpus"]["CIDEr"])
    assert m["tokenizer"]["ru"] == "unicode" and any("METEOR for 'ru'" in n for n in m["notes"])
    assert m["CIDEr"] == pytest.approx((4 * m["by_lang"]["en"]["CIDEr"] + 2 * m["by_lang"]["ru"]["CIDEr"]) / 6)


def test_a_deeply_nested_predictions_line_is_named_not_a_recursion_error(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "1", "prediction": "a", "answers": ["a"]}\n{"id": "2", "meta": ' + "[" * 100000
                    + "]" * 100000 + "}\n")
    assert main(["eval", "score", "--task", "vqa", "--predictions", str(path)]) == 2
    assert "p.jsonl:2: malformed JSON: nested deeper than 32" in capsys.readouterr().err


def test_resume_reads_rows_holding_line_separators(tmp_path):
    """A written row keeps U+2028 as itself (ensure_ascii=False): resume splits lines at "\\n" only."""
    from vlmtune.eval.runner import _done

    path = tmp_path / "predictions.jsonl"
    rows = [{"id": "a", "prediction": "x\u2028y"}, {"id": "b", "prediction": "z\x85w"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert _done(path) == {"a": rows[0], "b": rows[1]}
