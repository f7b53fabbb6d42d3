"""report.html: built from a real (tiny) run with a probe; rendered by headless Chromium."""

import json
import shutil
from pathlib import Path

import pytest

from vlmtune.config import RunCfg

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def run_with_probe(tmp_path_factory, fashion_dir):
    from helpers import tiny_run_cfg

    from vlmtune.train.loop import train

    tmp = tmp_path_factory.mktemp("report")
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp, fashion_dir, probes=[{"name": "general", "path": str(fashion_dir),
                                                                    "split": "test"}]))
    train(cfg)
    return cfg.run_dir


def test_the_report_holds_curves_probe_table_types_and_a_gallery(run_with_probe):
    page = (run_with_probe / "report.html").read_text()
    assert page.count('<img class="plot" src="data:image/png;base64,') == 3  # loss, val metric, probe
    probe_rows = page.split('<table class="probes">')[1].split("</table>")[0]
    assert probe_rows.count("<tr") == 1 + 3  # header + steps 0, 3, 6
    assert "<b>best</b>" in probe_rows
    gallery = page.split('<table class="gallery">')[1].split("</table>")[0]
    val = [json.loads(x) for x in (run_with_probe / "predictions/step-0/predictions.jsonl").read_text().splitlines()]
    assert gallery.count('<img class="sample" src="data:image/png;base64,') == len(val) == 5
    for row in val:
        assert row["question"].replace("'", "&#x27;") in gallery
    assert "base answer" in gallery and "tuned answer" in gallery
    assert "top_colour" in page or "bottom_colour" in page, "per-question-type table"


def test_the_report_renders_in_headless_chromium(run_with_probe):
    assert Path(CHROMIUM).is_file() or shutil.which("chromium"), "make test installs Debian's chromium"
    from playwright.sync_api import sync_playwright

    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((run_with_probe / "report.html").as_uri())
        sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.className, e.naturalWidth, e.naturalHeight])")
        probe_rows = page.locator("table.probes tbody tr").count()
        gallery_rows = page.locator("table.gallery tbody tr").count()
        browser.close()
    assert errors == []
    plots = [s for s in sizes if s[0] == "plot"]
    samples = [s for s in sizes if s[0] == "sample"]
    assert len(plots) == 3 and all(w > 100 and h > 100 for _, w, h in plots)
    assert len(samples) >= 5 and all(w > 0 and h > 0 for _, w, h in samples)
    assert probe_rows == 3 and gallery_rows >= 5
