"""`vlmtune demo --quick`: the whole demo pipeline, small (accuracy goals are measured by `make demo`)."""

import json

from vlmtune.cli import main


def test_quick_demo_pretrains_fine_tunes_twice_and_writes_one_comparison(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert [r["fine-tune"] for r in result["summary"]] == ["naive", "replay"]
    assert set(result["domain_test"]) == {"base", "naive", "replay"}
    for name in ("general", "naive", "replay"):
        assert (out / name / "report.html").is_file() and (out / name / "run_config.yaml").is_file()
    # the fine-tunes start from the pretrained general model and are probed on the general world
    naive = json.loads((out / "naive" / "probes_base.json").read_text())["scores"]
    replay = json.loads((out / "replay" / "probes_base.json").read_text())["scores"]
    assert naive == replay, "both fine-tunes start from the same base model"
    rows = [json.loads(x) for x in (out / "replay" / "metrics.jsonl").read_text().splitlines()]
    assert any("samples/general-replay" in r and r["samples/general-replay"] > 0 for r in rows)
    assert not any(k.startswith("samples/") for r in
                   (json.loads(x) for x in (out / "naive" / "metrics.jsonl").read_text().splitlines()) for k in r)
    page = (out / "report.html").read_text()
    assert "(a) naive: domain only" in page and "(b) domain + general replay" in page
    assert page.count('<table class="gallery">') == 2  # domain and general probe
    assert "<th>base</th>" in page
    assert "probe delta (points)" in captured.err and "naive" in captured.err
