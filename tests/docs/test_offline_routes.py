"""The pages' offline routes (issue 21, "pages that cannot drift"): the ```bash blocks after `<!-- offline route -->`
on docs/*.md and README.md (tests/offline_route.py extracts and runs them).

Fast, in `make test`: every marked block parses, its variables have defaults and the page names them, each job page
has a route, and a misplaced marker is an error. `make test-pages` (the `pages` marker) runs every page's route at
the small sizes of ROUTES, in a fresh directory, and checks the deliverable the page promises: a renamed run, flag or
file fails here instead of on a reader's machine. The full sizes: `python tests/offline_route.py docs/X.md --out DIR`.
"""

from __future__ import annotations

import csv
import json
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from offline_route import (
    MARKER,
    Route,
    RouteError,
    Step,
    build_script,
    commands,
    documented_sizes,
    main,
    marked_blocks,
    run,
    variables,
)

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
JOB_PAGES = ("vizwiz-llava.md", "fashion-retrieval.md", "fashion-vqa.md", "meme-captions-ru.md", "chartqa-deplot.md")


def _path(name: str) -> Path:
    return REPO / name if name == "README.md" else REPO / "docs" / name


def _last_json(route: Route, pattern: str) -> dict:
    return json.loads(route.step(pattern).last_line)


# ---- what each route must have delivered (run by test_the_offline_route_runs_at_small_sizes) ----

def _vizwiz_submission(route: Route) -> None:
    """A submission for the hidden-label test split in both formats, in test.json's order."""
    w = route.workdir
    questions = json.loads((w / "raw/vizwiz/Annotations/test.json").read_text(encoding="utf-8"))
    out = w / "runs/vizwiz_vqa/eval/test"
    submission = json.loads((out / "submission_vizwiz.json").read_text(encoding="utf-8"))
    assert isinstance(submission, list) and all(isinstance(r, dict) and set(r) == {"image", "answer"}
                                                for r in submission)
    assert [r["image"] for r in submission] == [q["image"] for q in questions]  # one answer per test question
    answers = np.load(out / "submission_vizwiz.npy", allow_pickle=False)
    assert answers.ndim == 1 and answers.dtype.kind == "U"
    assert answers.tolist() == [r["answer"] for r in submission]
    result = _last_json(route, r"eval .*--split test --submission")
    assert result["n"] == 0 and result["unlabelled"] == len(questions)  # predicted, nothing scored


def _shop_chat(route: Route) -> None:
    """The catalogue's index and the chat run: served together, a chat answer carries catalogue items and links."""
    from starlette.testclient import TestClient

    from vlmtune.config import ServeCfg
    from vlmtune.serve import build_app

    w = route.workdir
    with open(w / "raw/shop/cc3m.tsv", newline="", encoding="utf-8") as f:
        urls = {row["item_url"] for row in csv.DictReader(f, delimiter="\t")}
    search = _last_json(route, r"^vlmtune retrieve --index")
    assert len(search["results"]) == 3 and {r["item_url"] for r in search["results"]} <= urls
    app = build_app(w / "runs/shop-chat", ServeCfg(model_name="shop-chat", max_tokens=8), background=False,
                    index=w / "indexes/shop")
    with TestClient(app, base_url="http://127.0.0.1") as client:
        r = client.post("/v1/chat/completions", json={"model": "shop-chat", "messages": [
            {"role": "user", "content": "show me a red striped t-shirt"}]})
    assert r.status_code == 200, r.text
    items = r.json()["vlmtune"]["items"]
    text = r.json()["choices"][0]["message"]["content"]
    assert len(items) == 4 and {i["item_url"] for i in items} <= urls
    assert all(f"]({i['item_url']})" in text for i in items)


def _guarded_fashion_model(route: Route) -> None:
    """The fine-tune replays general VQA, probes it and prints the probe table with the gate; without replay, no
    general samples are trained on."""
    w = route.workdir
    guarded = next(s for s in route.steps if "fashion_vqa_pt.yaml" in s.command.text and "no_replay" not in
                   s.command.text)
    table = guarded.stderr[guarded.stderr.index("forgetting guard (runs/fashion_vqa_pt):"):].splitlines()
    assert "general-vqa delta" in table[1] and "gate (max drop 5 pts)" in table[1]
    assert table[2].split()[0] == "0" and table[2].endswith("base model")
    assert json.loads(guarded.last_line)["probes"]["general-vqa"].keys() >= {"score", "delta"}
    for run_name, replayed in (("fashion_vqa_pt", True), ("fashion_vqa_pt_no_replay", False)):
        lines = [json.loads(x) for x in (w / "runs" / run_name / "metrics.jsonl").read_text().splitlines()]
        assert (w / "runs" / run_name / "probes_base.json").exists()
        assert any("probe/general-vqa/delta" in x for x in lines)
        assert any(x.get("samples/general-replay", 0) > 0 for x in lines) == replayed
    assert "pt" in _last_json(route, r"^vlmtune eval --model runs/fashion_vqa_pt ")["by_lang"]


def _two_stage_memes(route: Route) -> None:
    """Stage 2 starts from stage 1's exported weights (not the built-in model from scratch) and reads the memes'
    words through OCR."""
    from safetensors.numpy import load_file

    w = route.workdir
    stage2 = yaml.safe_load((w / "runs/meme_captions_ru/run_config.yaml").read_text(encoding="utf-8"))
    assert stage2["model"]["path"] == "models/meme_captions_ru_stage1"
    exported = load_file(w / "models/meme_captions_ru_stage1/model.safetensors")
    stage1 = load_file(w / "runs/meme_captions_ru_stage1/best/model.safetensors")
    # the export writes the vision tower in the hub's layout (export.hub_layout: vision_tower.X ->
    # vision_tower.vision_model.X); the tensors are the checkpoint's
    def hub(k: str) -> str:
        flat = k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model.")
        return "vision_tower.vision_model." + k.removeprefix("vision_tower.") if flat else k

    expected = {hub(k): v for k, v in stage1.items()}
    assert exported.keys() == expected.keys() and all(np.array_equal(exported[k], expected[k]) for k in expected)

    def first_predictions(run_name: str) -> list[str]:
        path = w / "runs" / run_name / "predictions/step-0/predictions.jsonl"
        return [json.loads(x)["prediction"] for x in path.read_text(encoding="utf-8").splitlines()]

    # the step-0 evaluation is the model a run starts from: from scratch (same seed) it would be the same
    assert first_predictions("meme_captions_ru") != first_predictions("meme_captions_ru_memes_only")
    rows = [json.loads(x) for x in (w / "runs/meme_captions_ru/eval/test/predictions.jsonl").read_text(
        encoding="utf-8").splitlines()]
    assert any(r["meta"].get("ocr_in_prompt") and r["meta"]["ocr"] in r["question"] for r in rows)
    result = _last_json(route, r"^vlmtune eval --model runs/meme_captions_ru ")
    assert result["lang"] == "ru" and result["tokenizer"] == {"ru": "unicode"}


def _chart_setups(route: Route) -> None:
    """Chart answers under the rule program and the four LM setups, on the model's tables and on the true ones."""
    w = route.workdir
    setups = {"program", "zero_shot", "cot", "pot", "sc"}
    for out in ("setups-model-tiny", "setups-oracle-tiny"):
        metrics = json.loads((w / "runs" / out / "metrics.json").read_text(encoding="utf-8"))
        assert set(metrics["setups"]) == setups
        assert all({"relaxed_accuracy", "answered"} <= set(m) for m in metrics["setups"].values())
        rows = [json.loads(x) for x in (w / "runs" / out / "predictions.jsonl").read_text().splitlines()]
        assert Counter(r["setup"] for r in rows) == dict.fromkeys(setups, metrics["n_questions"])  # each question
    assert "random_baseline" in json.loads((w / "runs/setups-model-tiny/metrics.json").read_text())["table"]
    assert _last_json(route, r"--oracle .*--out runs/chart-oracle")["relaxed_accuracy"] == 1.0  # the ceiling


def _translated_and_labelled(route: Route) -> None:
    """The translation keeps the originals and is cached; autolabel in two processes writes the same dataset."""
    w = route.workdir
    again = _last_json(route, r"^vlmtune data translate .*# again")
    assert again["cached"] == again["texts"] > 0 and again["new_translations"] == 0
    rows = [json.loads(x) for x in (w / "data/fashion-ru/manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows and all(r["meta"]["lang"] == "ru" and r["meta"]["original"]["lang"] == "en" for r in rows)
    assert route.step(r"^cmp ").last_line == "SAME"
    photos = list((w / "photos").glob("*.png"))
    assert _last_json(route, r"autolabel photos .*--task vqa")["labelled"] == 2 * len(photos)  # two questions each


@dataclass(frozen=True)
class Small:
    sizes: dict[str, str]
    """Every size variable of the page, small."""
    timeout_s: int
    """For the whole route; measured at these sizes on 2 shared CPU cores: about a fifth of it."""
    check: Callable[[Route], None]


ROUTES = {
    "vizwiz-llava.md": Small({"N": "100", "STEPS": "4"}, 240, _vizwiz_submission),
    "fashion-retrieval.md": Small({"N": "60", "EPOCHS": "1", "STEPS": "4"}, 420, _shop_chat),
    "fashion-vqa.md": Small({"N": "60", "BASE_STEPS": "4", "STEPS": "4"}, 360, _guarded_fashion_model),
    "meme-captions-ru.md": Small({"N": "40", "STAGE1_STEPS": "4", "STAGE2_STEPS": "4"}, 360, _two_stage_memes),
    "chartqa-deplot.md": Small({"CHARTS": "40", "QA_CHARTS": "10", "TABLE_STEPS": "4", "BASELINE_N": "20", "N": "20",
                                "STEPS": "4"}, 600, _chart_setups),
    "translate-autolabel.md": Small({}, 300, _translated_and_labelled),
}


# ---- fast: the blocks themselves ----

@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_marked_block_parses_and_its_sizes_have_defaults_the_page_names(page):
    try:
        route = commands(page)
        sizes = variables(page)
    except RouteError as e:
        pytest.fail(str(e), pytrace=False)
    if not route:
        assert documented_sizes(page) is None, f"{page.name} names size variables but has no offline route"
        return
    syntax = subprocess.run(["bash", "-n"], input=build_script([Step(c) for c in route], Path("/nonexistent/.route")),
                            capture_output=True, text=True)
    assert syntax.returncode == 0, f"{page.name}: the route is not valid bash: {syntax.stderr}"
    named = documented_sizes(page)
    if sizes or named is not None:
        assert named == set(sizes), (f"{page.name}: the sentence \"The sizes are variables (...)\" must name exactly "
                                     f"the route's variables {sorted(sizes)}, not {sorted(named or ())}")


@pytest.mark.parametrize("name", JOB_PAGES)
def test_every_job_page_has_an_offline_route(name):
    assert commands(_path(name)), f"{name} marks no block with {MARKER}"


def test_the_pages_test_runs_every_route_and_sets_every_size_small():
    with_routes = {p.name for p in PAGES if marked_blocks(p)}
    assert with_routes == set(ROUTES), (f"pages with routes {sorted(with_routes)}; ROUTES (sizes and checks) "
                                        f"{sorted(ROUTES)}")
    for name, small in ROUTES.items():
        assert set(small.sizes) == set(variables(_path(name))), name  # an unset size would run at the page's


@pytest.mark.parametrize("text,error", [
    (f"{MARKER}\n```python\nprint(1)\n```\n", "must be followed by a ```bash block"),
    (f"{MARKER}\n\n```bash\necho hi\n```\n", "must be followed by a ```bash block"),
    (f"text\n{MARKER}\n", "must be followed by a ```bash block"),
    (f"{MARKER}\n```bash\necho hi\n", "never closes"),
    ("<!-- offline-route -->\n```bash\necho hi\n```\n", "alone on its line"),
    (f"{MARKER}\n```bash\nvlmtune data synth fashion --n $N\n```\n", "$N has no default"),
    (f"{MARKER}\n```bash\necho ${{N:-1}}\n```\n{MARKER}\n```bash\necho ${{N:-2}}\n```\n", "defaults to 2"),
    (f"{MARKER}\n```bash\npython -c \"print(1)\n```\n", "does not end inside its block"),
])
def test_a_misplaced_or_malformed_marker_or_an_undefaulted_variable_is_an_error(tmp_path, text, error):
    page = tmp_path / "page.md"
    page.write_text(text, encoding="utf-8")
    with pytest.raises(RouteError, match=error.replace("$", r"\$").replace("(", r"\(")):
        variables(page)


def test_blocks_are_commands_in_page_order_and_a_marker_inside_a_code_block_is_not_one(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"# t\n```\n{MARKER}\n```\n{MARKER}\n```bash\nX=1  # set\necho \"$X\" \\\n  two\n\n# note\n"
                    f"python -c \"\nprint(${{N:-3}})\"\n```\n```bash\necho unmarked\n```\n{MARKER}\n```bash\n"
                    f"export Y=2\necho $Y\n```\n", encoding="utf-8")
    found = commands(page)
    assert [c.text for c in found] == ["X=1  # set", 'echo "$X" \\\n  two', 'python -c "\nprint(${N:-3})"',
                                       "export Y=2", "echo $Y"]
    assert [c.line for c in found] == [7, 8, 12, 20, 21]
    assert variables(page) == {"N": "3"}


def test_the_runner_keeps_variables_across_blocks_and_shows_the_failing_command_with_its_output(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"{MARKER}\n```bash\nmkdir out && X=${{N:-5}}\necho \"made $X\" > out/x\n```\n\n{MARKER}\n"
                    f"```bash\ncat out/x\necho progress >&2 && ls no-such-file\necho never\n```\n", encoding="utf-8")
    with pytest.raises(RouteError) as e:
        run(page, tmp_path / "w", {"N": "7"})
    message = str(e.value)
    assert "page.md:10: exit status 2" in message and "ls no-such-file" in message
    assert "progress" in message and "No such file" in message
    assert (tmp_path / "w/out/x").read_text() == "made 7\n" and (tmp_path / "w/configs").resolve() == REPO / "configs"
    with pytest.raises(RouteError, match="not empty"):
        run(page, tmp_path / "w")
    with pytest.raises(RouteError, match="no size variable"):
        run(page, tmp_path / "w2", {"STEPS": "1"})


def test_the_runner_stops_a_route_at_its_timeout(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"{MARKER}\n```bash\necho started\nsleep 60\n```\n", encoding="utf-8")
    with pytest.raises(RouteError, match=r"page.md:4: timed out after 1 s") as e:
        run(page, tmp_path / "w", timeout=1)
    assert "sleep 60" in str(e.value)


def test_the_runner_prints_each_command_its_time_and_last_stdout_line(tmp_path, capsys):
    page = tmp_path / "page.md"
    page.write_text(f"{MARKER}\n```bash\necho first; echo \"n=${{N:-2}}\"\n```\n", encoding="utf-8")
    assert main([str(page), "--out", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert 'echo first; echo "n=${N:-2}"    # page.md:3' in out and " s] n=2\n" in out
    assert (tmp_path / "w/.route/00.out").read_text() == "first\nn=2\n"
    assert main([str(page), "--out", str(tmp_path / "w3"), "--set", "N=9"]) == 0
    assert " s] n=9\n" in capsys.readouterr().out


# ---- slow: each route run (make test-pages) ----

@pytest.mark.pages
@pytest.mark.parametrize("name", sorted(ROUTES))
def test_the_offline_route_runs_at_small_sizes_and_delivers(name, tmp_path):
    small = ROUTES[name]
    try:
        route = run(_path(name), tmp_path / "route", small.sizes, timeout=small.timeout_s)
    except RouteError as e:
        pytest.fail(str(e), pytrace=False)
    print(f"{name}: {len(route.steps)} commands in {route.seconds:.0f} s")
    small.check(route)
