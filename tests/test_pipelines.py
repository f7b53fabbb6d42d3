"""The five jobs vlmtune was designed from, each end to end on stand-in raw data (`vlmtune data standin`), through
the same commands as its page in docs/: import -> train -> evaluate with the field's metric (-> serve).

The models are tiny and train for a few steps, so the metric values are not the point here (the docs pages show
longer runs); what is checked is that every step consumes the previous one's output and that the metric the job
is judged by comes out, computed over the right samples."""

from __future__ import annotations

import base64
import json

import numpy as np
import yaml
from helpers import tiny_run_cfg

from vlmtune.cli import main


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _train(tmp_path, data_dir, name: str, capsys, **sections) -> dict:
    cfg = tmp_path / f"{name}.yaml"
    run_cfg = tiny_run_cfg(tmp_path, data_dir, name=name, **sections)
    if run_cfg["model"]["path"] != "builtin":
        run_cfg["model"].pop("builtin")
    cfg.write_text(yaml.safe_dump(run_cfg))
    assert main(["train", "--config", str(cfg)]) == 0
    return _last_json(capsys)


def test_fashion_vqa_from_an_attribute_table_with_portuguese_prompts_to_a_served_model(tmp_path, capsys):
    from starlette.testclient import TestClient

    from vlmtune.config import ServeCfg
    from vlmtune.serve import build_app

    raw, data = tmp_path / "raw", tmp_path / "data"
    assert main(["data", "standin", "fashion-vqa", "--out", str(raw), "--n", "40"]) == 0
    assert main(["data", "vqa-from-attributes", str(raw / "catalogue.csv"), "--images", str(raw / "photos"),
                 "--templates", str(raw / "templates.yaml"), "--out", str(data), "--langs", "pt"]) == 0
    made = _last_json(capsys)
    # five attributes per photo, each asked openly and as a true and a false statement, in Portuguese only
    assert made["languages"] == ["pt"] and made["samples"] == 40 * 5 * 3
    _train(tmp_path, data, "fashion", capsys, eval={"task": "vqa", "metric": "vqa_accuracy", "max_new_tokens": 4})
    run = tmp_path / "runs" / "fashion"
    assert main(["eval", "--model", str(run), "--data", str(data), "--split", "test", "--out", str(tmp_path / "ev"),
                 "--max-new-tokens", "4"]) == 0
    metrics = _last_json(capsys)
    assert metrics["n"] == made["splits"]["test"] and 0.0 <= metrics["vqa_accuracy"] <= 1.0
    attributes = ("top_type", "top_colour", "top_pattern", "bottom_type", "bottom_colour")
    assert set(metrics["by_lang"]) == {"pt"} and set(metrics["by_question_type"]) <= {
        *attributes, *(f"{a} yes/no" for a in attributes)}
    assert set(metrics["by_answer_type"]) == {"yes/no"}
    gold = {json.loads(x)["id"]: json.loads(x) for x in (data / "manifest.jsonl").read_text().splitlines()}
    rows = [json.loads(x) for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert all(gold[r["id"]]["meta"]["lang"] == "pt" and gold[r["id"]]["split"] == "test" for r in rows)

    photo = base64.b64encode((raw / "photos" / "look-00000.png").read_bytes()).decode()
    with TestClient(build_app(run, ServeCfg(), background=False), base_url="http://127.0.0.1") as client:
        reply = client.post("/v1/chat/completions", json={"model": "fashion", "max_tokens": 4, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{photo}"}},
                                         {"type": "text", "text": "Qual é a cor da parte de cima?"}]}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"
    assert reply.json()["usage"]["completion_tokens"] >= 1


def test_vizwiz_llava_lora_scored_with_official_vqa_accuracy_and_answerability(tmp_path, capsys):
    raw, data = tmp_path / "raw", tmp_path / "data"
    assert main(["data", "standin", "vizwiz", "--out", str(raw), "--n", "60"]) == 0
    assert main(["data", "import", "vizwiz", str(raw), "--out", str(data)]) == 0
    assert _last_json(capsys)["splits"] == {"train": 48, "val": 12, "test": 12}
    _train(tmp_path, data, "vizwiz", capsys, lora={"enabled": True, "r": 4, "alpha": 8},
           eval={"task": "vqa", "metric": "vqa_accuracy", "max_new_tokens": 4})
    run = tmp_path / "runs" / "vizwiz"
    assert (run / "best" / "adapter_config.json").is_file(), "a LoRA run saves the adapter"
    assert main(["eval", "--model", str(run), "--data", str(data), "--split", "val", "--out", str(tmp_path / "ev"),
                 "--vqa-variant", "vizwiz", "--max-new-tokens", "4", "--submission", "vizwiz"]) == 0
    metrics = _last_json(capsys)
    assert metrics["n"] == 12 and 0.0 <= metrics["vqa_accuracy"] <= 1.0
    assert {"unanswerable", "other"} >= set(metrics["by_answer_type"])
    assert 0.0 <= metrics["answerability_average_precision"] <= 1.0 and 0.0 <= metrics["answerability_f1"] <= 1.0
    rows = [json.loads(x) for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert all(len(r["answers"]) == 10 for r in rows), "the ten human answers reach the metric"
    # the official accuracy from the rows themselves: min(1, matches / 3) averaged over the 10-choose-9 subsets
    assert abs(metrics["vqa_accuracy"] - sum(r["scores"]["vqa_accuracy"] for r in rows) / 12) < 1e-12
    submission = json.loads(next((tmp_path / "ev").glob("*submission*.json")).read_text())
    assert [s["image"] for s in submission] == [f"VizWiz_val_{i:08d}.jpg" for i in range(12)]  # in the file's order
    # the deliverable: both submissions for the test split, whose answers are hidden (nothing scored)
    assert main(["eval", "--model", str(run), "--data", str(data), "--split", "test", "--out", str(tmp_path / "test"),
                 "--max-new-tokens", "4", "--submission", "vizwiz", "--submission", "vizwiz-npy"]) == 0
    metrics = _last_json(capsys)
    assert metrics["n"] == 0 and metrics["unlabelled"] == 12 and len(metrics["submission"]) == 2
    submission = json.loads((tmp_path / "test" / "submission_vizwiz.json").read_text())
    assert [s["image"] for s in submission] == [q["image"] for q in json.loads(
        (raw / "Annotations" / "test.json").read_text())]
    assert np.load(tmp_path / "test" / "submission_vizwiz.npy").tolist() == [s["answer"] for s in submission]


def test_meme_captions_ru_composed_model_in_two_stages_reads_the_meme_text_through_ocr(tmp_path, capsys):
    """The page's two stages with the composed model: stage 1 trains the projector on English captions translated to
    Russian (the project did that by hand in a spreadsheet), stage 2 LoRA on the memes from stage 1's export."""
    from helpers import tiny_causal_lm, tiny_clip

    raw, data, model = tmp_path / "raw", tmp_path / "data", tmp_path / "clip-lm"
    assert main(["data", "standin", "meme-captions-ru", "--out", str(raw), "--n", "20"]) == 0
    assert main(["data", "import", "coco", str(raw), "--out", str(data)]) == 0
    from vlmtune.data.translate import save_tiny_translator

    english, translated = tmp_path / "en", tmp_path / "en-ru"
    assert main(["data", "standin", "fashion-retrieval", "--out", str(tmp_path / "raw-en"), "--n", "8"]) == 0
    assert main(["data", "import", "cc3m", str(tmp_path / "raw-en"), "--out", str(english)]) == 0
    assert main(["data", "translate", str(english), "--to", "ru", "--model",
                 str(save_tiny_translator(tmp_path / "marian")), "--out", str(translated)]) == 0
    assert _last_json(capsys)["samples"] == 8
    kept = [json.loads(x) for x in (translated / "manifest.jsonl").read_text().splitlines()]
    assert all(r["meta"]["lang"] == "ru" and r["meta"]["original"]["lang"] == "en" for r in kept)

    vision, lm = tiny_clip(tmp_path / "clip"), tiny_causal_lm(tmp_path / "lm")
    assert main(["compose", "--vision", str(vision), "--lm", str(lm), "--projector", "mlp2x", "--out", str(model)]) == 0
    capsys.readouterr()
    ocr = {"ocr": {"langs": "rus", "min_conf": 50}, "max_length": 384}
    caption = {"task": "caption", "metric": "CIDEr", "lang": "ru", "max_new_tokens": 12}
    _train(tmp_path, translated, "stage1", capsys, model={"family": "llava", "path": str(model)}, data=ocr,
           train={"freeze_vision": True, "freeze_language": True, "max_steps": 4, "eval_every": 0, "save_every": 4},
           eval=caption)
    assert main(["export", "--model", str(tmp_path / "runs" / "stage1"), "--out", str(tmp_path / "aligned")]) == 0
    capsys.readouterr()
    _train(tmp_path, data, "memes", capsys, model={"family": "llava", "path": str(tmp_path / "aligned")}, data=ocr,
           lora={"enabled": True, "r": 4, "alpha": 8},
           train={"freeze_vision": True, "freeze_projector": False, "max_steps": 4, "eval_every": 0,
                  "save_every": 4},
           eval=caption)
    run = tmp_path / "runs" / "memes"
    stage1 = yaml.safe_load((tmp_path / "runs" / "stage1" / "run_config.yaml").read_text())
    stage2 = yaml.safe_load((run / "run_config.yaml").read_text())
    assert stage1["data"]["path"] == str(translated) and stage2["model"]["path"] == str(tmp_path / "aligned")
    assert main(["eval", "--model", str(run), "--data", str(data), "--split", "test", "--out", str(tmp_path / "ev"),
                 "--lang", "ru", "--max-new-tokens", "12"]) == 0
    metrics = _last_json(capsys)
    assert metrics["n"] == 2 and {"CIDEr", "METEOR", "Bleu_4", "ROUGE_L", "chrF"} <= set(metrics)
    rows = [json.loads(x) for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    for r in rows:  # the printed word reached the prompt through tesseract, as it did in training
        word = r["answers"][0].split("«")[1].rstrip("»")
        assert word in r["question"], (word, r["question"])


def test_fashion_retrieval_from_a_cc3m_catalogue_to_items_with_links(tmp_path, capsys):
    from vlmtune.retrieval.tiny import build_tiny

    raw, data, model = tmp_path / "raw", tmp_path / "data", tmp_path / "tiny-clip"
    assert main(["data", "standin", "fashion-retrieval", "--out", str(raw), "--n", "80"]) == 0
    assert main(["data", "import", "cc3m", str(raw), "--out", str(data)]) == 0
    build_tiny("clip", model)
    capsys.readouterr()
    assert main(["retrieve", "eval", "--model", str(model), "--data", str(data), "--split", "test"]) == 0
    before = _last_json(capsys)
    recipe = tmp_path / "recipe.yaml"  # as configs/retrieval/*.yaml, with the tiny model and the flags overriding it
    recipe.write_text(yaml.safe_dump({"model": "openai/clip-vit-base-patch32", "data": str(data),
                                      "out": str(tmp_path / "run"), "epochs": 5, "batch_size": 16, "lr": 1e-3}))
    assert main(["retrieve", "train", "--config", str(recipe), "--model", str(model), "--epochs", "2"]) == 0
    assert json.loads((tmp_path / "run" / "retrieval_config.json").read_text())["epochs"] == 2
    capsys.readouterr()
    assert main(["retrieve", "eval", "--model", str(tmp_path / "run"), "--data", str(data), "--split", "test"]) == 0
    after = _last_json(capsys)
    assert after["images"] == before["images"] == 16 and after["texts"] == 16
    assert {"t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10", "rsum"} <= set(after)
    assert main(["retrieve", "index", "--model", str(tmp_path / "run"), "--catalogue", str(raw / "cc3m.tsv"),
                 "--out", str(tmp_path / "index")]) == 0
    built = _last_json(capsys)
    assert built["items"] == 80 and built["bad_rows"] == 0
    assert main(["retrieve", "--index", str(tmp_path / "index"), "a person wearing a red t-shirt", "--k", "5"]) == 0
    found = _last_json(capsys)["results"]
    assert len(found) == 5 and all(r["item_url"].startswith("https://shop.example/item/item-") for r in found)
    assert [r["score"] for r in found] == sorted((r["score"] for r in found), reverse=True)


def test_chartqa_deplot_from_chartqa_files_chart_to_table_then_program_answers(tmp_path, capsys):
    raw, data, tables, base = tmp_path / "raw", tmp_path / "data", tmp_path / "tables", tmp_path / "base"
    assert main(["data", "standin", "chartqa", "--out", str(raw), "--n", "20", "--size", "64"]) == 0
    assert sorted(p.name for p in (raw / "train").iterdir()) == ["png", "tables", "train_augmented.json"]
    assert main(["data", "import", "chartqa", str(raw), "--out", str(data)]) == 0
    assert main(["chart", "tables", str(data), "--out", str(tables)]) == 0
    assert _last_json(capsys)["splits"] == {"train": 14, "val": 2, "test": 4}
    assert main(["chart", "init-model", "--out", str(base), "--max-patches", "16", "--hidden", "32",
                 "--vision-layers", "1", "--text-layers", "1"]) == 0
    _train(tmp_path, tables, "deplot", capsys, model={"family": "pix2struct", "path": str(base)},
           train={"max_steps": 3, "micro_batch_size": 4, "global_batch_size": 4, "eval_every": 3, "save_every": 3},
           eval={"task": "chart_to_table", "metric": "rms_f1", "batch_size": 8, "max_new_tokens": 12})
    run = tmp_path / "runs" / "deplot"
    val = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "val/rms_f1" in x]
    assert val and 0.0 <= val[-1]["val/rms_f1"] <= 1.0 and "val/rnss" in val[-1]
    assert main(["chart", "eval", "--model", str(run), "--data", str(data), "--split", "test",
                 "--max-new-tokens", "12", "--out", str(tmp_path / "ev")]) == 0
    metrics = _last_json(capsys)
    assert metrics["n_questions"] == metrics["n_charts"] == 4 and 0.0 <= metrics["relaxed_accuracy"] <= 1.0
    assert metrics["table"]["n"] == 4 and 0.0 <= metrics["table"]["rms_f1"] <= 1.0 and "rnss" in metrics["table"]
    assert metrics["ceiling_relaxed_accuracy"] == 1.0, "the program answers every stand-in question from the true CSV"

    from starlette.testclient import TestClient

    from vlmtune.config import ServeCfg
    from vlmtune.data.chart_table import Table
    from vlmtune.data.charts import DEPLOT_PROMPT
    from vlmtune.serve import build_app

    chart = base64.b64encode(next((raw / "test" / "png").iterdir()).read_bytes()).decode()
    app = build_app(run, ServeCfg(), background=False)  # the table model behind the API
    with TestClient(app, base_url="http://127.0.0.1") as client:
        reply = client.post("/v1/chat/completions", json={"model": "deplot", "max_tokens": 12, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{chart}"}},
                                         {"type": "text", "text": DEPLOT_PROMPT}]}]})
    assert reply.status_code == 200, reply.text
    Table.from_text(reply.json()["choices"][0]["message"]["content"])  # what `chart ask` parses, from the server
