"""The error-analysis page: metrics, confusion matrices, a gallery that sorts and filters (in headless Chromium),
base vs tuned side by side."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vlmtune.cli import main
from vlmtune.eval.analysis import confusion

CHROMIUM = "/usr/bin/chromium"
COLOURS = ["red", "blue", "green"]


@pytest.fixture()
def two_files(tmp_path, fashion_dir):
    """Base and tuned predictions over the 48 fashion samples: tuned fixes half of base's mistakes."""
    from vlmtune.data.store import read_samples

    samples = read_samples(fashion_dir)[0]
    base, tuned = [], []
    for k, s in enumerate(samples):
        row = {"id": s.id, "images": s.images, "question": s.question, "answers": [s.target],
               "meta": {"question_type": s.meta.get("question_type"), "answer_type": "other", "source": "fashion"}}
        wrong = "purple" if "colour" in s.meta.get("question_type", "") else "hat"
        base.append({**row, "prediction": s.target if k % 2 else wrong})
        tuned.append({**row, "prediction": s.target if k % 4 != 0 else wrong})
    paths = []
    for name, rows in (("base", base), ("tuned", tuned)):
        path = tmp_path / name / "predictions.jsonl"
        path.parent.mkdir()
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    return paths, samples


def test_compare_writes_the_page(two_files, fashion_dir, tmp_path, capsys):
    (base, tuned), samples = two_files
    out = tmp_path / "compare.html"
    assert main(["eval", "compare", str(base), str(tuned), "--data", str(fashion_dir), "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    n = len(samples)
    wrong_base, wrong_tuned = n - n // 2, (n + 3) // 4
    assert result["metrics"]["base"]["vqa_accuracy"] == pytest.approx(1 - wrong_base / n)
    assert result["metrics"]["tuned"]["vqa_accuracy"] == pytest.approx(1 - wrong_tuned / n)
    page = out.read_text()
    assert f"<b>{wrong_base - wrong_tuned}</b> better, <b>0</b> worse" in page
    assert page.count("<tr class='sample'") == n and page.count("data:image/jpeg;base64,") == n
    assert "rows gold, columns predicted" in page  # colour questions have a closed vocabulary


def test_confusion_counts():
    rows = [{"id": str(i), "prediction": p, "answers": [g], "meta": {"question_type": "colour"}}
            for i, (g, p) in enumerate([("red", "red"), ("red", "Blue"), ("blue", "blue"), ("blue", "pink"),
                                        ("green", "green"), ("green", "green")])]
    m = confusion(rows)["colour"]
    assert m["labels"] == ["blue", "green", "red"]
    assert m["cells"] == {"red\tred": 1, "red\tblue": 1, "blue\tblue": 1, "blue\t(other)": 1, "green\tgreen": 2}


def test_the_page_sorts_and_filters_in_chromium(two_files, fashion_dir, tmp_path):
    assert Path(CHROMIUM).is_file() or shutil.which("chromium"), "make test installs Debian's chromium"
    from playwright.sync_api import sync_playwright

    (base, tuned), samples = two_files
    out = tmp_path / "compare.html"
    assert main(["eval", "compare", str(base), str(tuned), "--data", str(fashion_dir), "--out", str(out)]) == 0
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(out.as_uri())
        page.click("button[data-sort='delta'][data-dir='-1']")  # biggest gain first
        first = page.eval_on_selector("#gallery tbody tr", "tr => Number(tr.dataset.delta)")
        last = page.eval_on_selector_all("#gallery tbody tr", "trs => Number(trs[trs.length - 1].dataset.delta)")
        page.click("button[data-sort='s0'][data-dir='1']")  # base score ascending
        base_scores = page.eval_on_selector_all("#gallery tbody tr", "trs => trs.map(t => Number(t.dataset.s0))")
        qtypes = sorted({s.meta["question_type"] for s in samples})
        page.select_option("select[data-filter='question_type']", qtypes[0])
        visible = page.eval_on_selector_all("#gallery tbody tr", "trs => trs.filter(t => t.style.display !== 'none')"
                                            ".map(t => t.dataset.questionType)")
        widths = page.eval_on_selector_all("#gallery img", "els => els.map(e => e.naturalWidth)")
        browser.close()
    assert errors == []
    assert first == 1.0 and last == 0.0
    assert base_scores == sorted(base_scores)
    assert visible and set(visible) == {qtypes[0]} and len(visible) == sum(s.meta["question_type"] == qtypes[0]
                                                                             for s in samples)
    assert widths and all(w > 0 for w in widths)
