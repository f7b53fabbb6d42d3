"""OCR enrichment (data/ocr.py) with the real tesseract (`make ocr` installs it with eng, rus and por data): images
with drawn Russian and Portuguese text are read back, the cache is proven to skip tesseract, and the text reaches
the prompt the model is trained on and evaluated with. Failures tesseract cannot be made to produce on demand
(a crash, a hang) use a stand-in `tesseract` script put first on PATH."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import tiny_run_cfg
from PIL import Image, ImageDraw, ImageFont

from vlmtune.config import OcrCfg
from vlmtune.data import ocr
from vlmtune.data.ocr import OcrUnavailable, enrich_samples, with_ocr_text
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.store import BadRecord
from vlmtune.runs import model_ocr_options

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"  # Debian's fonts-dejavu-core (installed by `make ocr`)
LANGS = "rus+por+eng"
QUESTION = "What does the sign say?"
SIGNS = {  # id: (text, background, split)
    "meme_ru": ("КОГДА ПОНЕДЕЛЬНИК", (40, 120, 200), "train"),
    "label_pt": ("VESTIDO AZUL • promoção", (250, 230, 200), "train"),
    "sign_en": ("OPEN 24 HOURS", (200, 30, 30), "val"),
}


def render(text: str, background: tuple[int, int, int], size: tuple[int, int] = (480, 120)) -> Image.Image:
    """`text` centred on a plain background, white on dark colours and black on light ones."""
    img = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(FONT, 32)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    fill = (255, 255, 255) if sum(background) < 400 else (20, 20, 20)
    draw.text(((size[0] - right + left) // 2 - left, (size[1] - bottom + top) // 2 - top), text, fill=fill, font=font)
    return img


def cer(ref: str, hyp: str) -> float:
    """Character error rate: Levenshtein distance / reference length."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1] / max(1, len(ref))


def write_signs(root: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A dataset of the SIGNS (question: what does the sign say; answer: its text), plus `extra` raw image files
    (id -> file bytes, train split)."""
    from vlmtune.data.store import write_dataset

    items = [(Sample(id=sid, messages=[user(QUESTION), assistant(text)], images=[f"images/{sid}.png"], split=split),
              [render(text, bg)]) for sid, (text, bg, split) in SIGNS.items()]
    write_dataset(root, items)
    for sid, data in (extra or {}).items():
        (root / "images" / f"{sid}.png").write_bytes(data)
        row = Sample(id=sid, messages=[user(QUESTION), assistant("x")], images=[f"images/{sid}.png"], split="train")
        with open(root / "manifest.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")
    return root


@pytest.fixture(scope="module")
def signs(tmp_path_factory) -> Path:
    return write_signs(tmp_path_factory.mktemp("signs"))


@pytest.fixture
def tesseract_calls(monkeypatch) -> list[list[str]]:
    """Every command the ocr module runs (version/language probes and OCR) is recorded here."""
    calls: list[list[str]] = []
    real = subprocess.run

    def recording(cmd, *args, **kwargs):
        calls.append([str(c) for c in cmd])
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(ocr.subprocess, "run", recording)
    return calls


def ocr_runs(calls: list[list[str]]) -> int:
    return sum("stdin" in c for c in calls)  # OCR of an image (the probes are --version / --list-langs)


def samples_of(root: Path, split: str | None = None) -> list[Sample]:
    from vlmtune.data.store import read_samples

    return read_samples(root, split)[0]


def test_tesseract_reads_the_russian_meme_and_the_portuguese_label_and_caches_by_image_content(
        signs, tmp_path, tesseract_calls):
    cache = tmp_path / "cache"
    meta = OcrCfg(langs=LANGS, into="meta")
    first, bad, report = enrich_samples(samples_of(signs), signs, meta, cache_dir=cache)
    assert not bad and (report.images, report.ran, report.cached) == (3, 3, 0)
    assert ocr_runs(tesseract_calls) == 3
    for s in first:
        text = SIGNS[s.id][0]
        err = cer(text, s.meta["ocr"])
        assert err <= 0.1, f"{s.id}: tesseract read {s.meta['ocr']!r} for {text!r}: CER {err:.3f} > 0.1"
        assert s.messages == samples_of(signs)[[x.id for x in first].index(s.id)].messages  # meta only
    assert len(list(cache.glob("*.json"))) == 3 and not list(cache.glob(".*"))  # no temporary files left

    # a second run, and a second config with another template / min_conf / target on the same images: no OCR
    tesseract_calls.clear()
    again, _, report = enrich_samples(samples_of(signs), signs, meta, cache_dir=cache)
    assert (report.ran, report.cached) == (0, 3) and [s.meta for s in again] == [s.meta for s in first]
    other = OcrCfg(langs=LANGS, into="prompt", template="OCR: {text} | {prompt}", min_conf=10, max_chars=12)
    prompted, _, report = enrich_samples(samples_of(signs), signs, other, cache_dir=cache)
    assert report.ran == 0 and ocr_runs(tesseract_calls) == 0, tesseract_calls
    ru = next(s for s in prompted if s.id == "meme_ru")
    assert ru.question == "OCR: КОГДА | " + QUESTION  # cut at a word boundary to max_chars=12

    # the languages are part of the key: the same image read as por+eng is a new entry
    label = [s for s in samples_of(signs) if s.id == "label_pt"]
    por, _, report = enrich_samples(label, signs, OcrCfg(langs="por+eng", into="meta"), cache_dir=cache)
    assert report.ran == 1 and ocr_runs(tesseract_calls) == 1 and len(list(cache.glob("*.json"))) == 4
    assert cer("VESTIDO AZUL • promoção", por[0].meta["ocr"]) <= 0.1, por[0].meta["ocr"]


def test_cache_key_covers_image_langs_psm_and_tesseract_version():
    base = ocr.cache_key("a" * 64, "eng", 3, "tesseract 5.3.0")
    assert base == ocr.cache_key("a" * 64, "eng", 3, "tesseract 5.3.0")
    assert len({base, ocr.cache_key("b" * 64, "eng", 3, "tesseract 5.3.0"), ocr.cache_key("a" * 64, "rus", 3,
                "tesseract 5.3.0"), ocr.cache_key("a" * 64, "eng", 6, "tesseract 5.3.0"),
                ocr.cache_key("a" * 64, "eng", 3, "tesseract 5.4.0")}) == 5


def test_text_normalisation_confidence_and_length():
    tsv = ("level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n"
           "4\t1\t1\t1\t1\t0\t0\t0\t9\t9\t-1\t\n"
           "5\t1\t1\t1\t1\t1\t0\t0\t9\t9\t96.1\tpromoc\u0327a\u0303o\n"  # decomposed ç and ã
           "5\t1\t1\t1\t1\t2\t0\t0\t9\t9\t8.5\t|~\n"
           "5\t1\t1\t1\t2\t1\t0\t0\t9\t9\t91.0\t  AZUL \n")
    words = ocr.parse_tsv(tsv)
    assert [w["line"] for w in words] == ["1.1.1", "1.1.1", "1.1.2"]
    assert ocr.text_of(words) == "promoção |~ AZUL" and len("promoção") == 8  # NFC: one code point per letter
    assert ocr.text_of(words, min_conf=30) == "promoção AZUL"  # the low-confidence noise is dropped
    assert ocr.text_of(words, min_conf=30, max_chars=10) == "promoção"
    assert ocr.truncate("ПОНЕДЕЛЬНИК", 5) == "ПОНЕД"  # one overlong word: cut inside it


def test_enrichment_into_prompt_and_into_meta():
    s = Sample(id="m", images=["a.png"], split="train",
               messages=[user("Explain the joke."), assistant("It is Monday."), user("And now?", n_images=0),
                         assistant("Still Monday.")])
    p = with_ocr_text(s, "КОГДА ПОНЕДЕЛЬНИК", "prompt", OcrCfg.template)
    assert p.messages[0]["content"] == [
        {"type": "image"}, {"type": "text", "text": "Text in the image: КОГДА ПОНЕДЕЛЬНИК\nExplain the joke."}]
    assert p.messages[1:] == s.messages[1:] and p.meta == {"ocr": "КОГДА ПОНЕДЕЛЬНИК", "ocr_in_prompt": True}
    assert s.messages[0]["content"][1]["text"] == "Explain the joke."  # the original is not mutated
    assert with_ocr_text(p, "КОГДА ПОНЕДЕЛЬНИК", "prompt") is p  # enriched once only
    m = with_ocr_text(s, "КОГДА ПОНЕДЕЛЬНИК", "meta")
    assert m.messages == s.messages and m.meta == {"ocr": "КОГДА ПОНЕДЕЛЬНИК"}
    assert with_ocr_text(s, "", "prompt").messages == s.messages  # no text found: the prompt is unchanged
    image_only = Sample(id="i", images=["a.png"], messages=[{"role": "user", "content": [{"type": "image"}]},
                                                            assistant("a sign")])
    assert with_ocr_text(image_only, "OPEN", "prompt").question == "Text in the image: OPEN"
    text_only = Sample(id="t", messages=[user("hi", n_images=0), assistant("hello")])
    out, bad, report = enrich_samples([text_only], "/nonexistent", OcrCfg())
    assert out == [text_only] and not bad and report.images == 0  # nothing to read, tesseract not even asked


def test_corrupt_image_names_file_and_sample_and_is_skipped_under_skip_bad(tmp_path):
    from vlmtune.data.dataset import load_split

    root = write_signs(tmp_path / "d", extra={"broken": b"\x89PNG\r\n\x1a\n this is not a png"})
    opts = OcrCfg(langs=LANGS)
    with pytest.raises(BadRecord) as e:
        load_split(root, "train", skip_bad=False, ocr=opts)
    assert "broken" in str(e.value) and "images/broken.png" in str(e.value) and "skip_bad" in str(e.value)
    rejected = tmp_path / "rejected.jsonl"
    loaded = load_split(root, "train", skip_bad=True, rejected_path=rejected, ocr=opts)
    assert sorted(s.id for s in loaded) == ["label_pt", "meme_ru"] and all(s.meta["ocr"] for s in loaded)
    assert [json.loads(x)["raw"] for x in rejected.read_text().splitlines()][0].startswith('{"id": "broken"')

    # the same image reaching OCR directly (a sample not read through the store)
    broken = Sample(id="broken", messages=[user(QUESTION), assistant("x")], images=["images/broken.png"])
    with pytest.raises(BadRecord, match=r"sample 'broken': OCR of image 'images/broken.png': .*cannot decode"):
        enrich_samples([broken], root, opts)
    out, bad, report = enrich_samples([broken], root, opts, skip_bad=True)
    assert out == [] and len(bad) == 1 and (report.failed, report.skipped_samples, report.ran) == (1, 1, 0)


def test_missing_tesseract_or_language_pack_says_how_to_install(monkeypatch, tmp_path):
    with pytest.raises(OcrUnavailable) as e:
        ocr.find_tesseract("rus+qaa")  # qaa: an ISO 639 code reserved for local use, never packaged
    msg = str(e.value)
    assert "no language data for qaa" in msg and "make ocr" in msg and "apt-get install -y tesseract-ocr-qaa" in msg
    assert "rus" in msg.split("installed:")[1]  # the installed ones are listed (and rus is not reported missing)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(OcrUnavailable, match=r"tesseract is not installed .*make ocr.*apt-get"):
        enrich_samples(samples_of(write_signs(tmp_path / "d")), tmp_path / "d", OcrCfg())


FAKE = """#!/bin/sh
case "$1" in
  --version) echo "tesseract 0.0-stand-in"; exit 0;;
  --list-langs) echo 'List of available languages in "/nowhere/" (1):'; echo eng; exit 0;;
esac
echo "$@" >> "$FAKE_LOG"
cat > /dev/null
case "$FAKE_MODE" in
  fail) echo "Error in pixReadMem: Unknown format" >&2; exit 3;;
  hang) exec sleep 30;;
esac
printf 'level\\tpage_num\\tblock_num\\tpar_num\\tline_num\\tword_num\\tleft\\ttop\\twidth\\theight\\tconf\\ttext\\n'
printf '5\\t1\\t1\\t1\\t1\\t1\\t0\\t0\\t9\\t9\\t95.0\\tHELLO\\n'
"""


@pytest.fixture
def stand_in(tmp_path, monkeypatch) -> Path:
    """A `tesseract` first on PATH that logs each OCR call to FAKE_LOG and fails or hangs as FAKE_MODE says."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    exe = bin_dir / "tesseract"
    exe.write_text(FAKE)
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.log"))
    return tmp_path / "calls.log"


def test_tesseract_failure_or_timeout_is_a_bad_record_and_damaged_cache_entries_are_redone(
        stand_in, tmp_path, monkeypatch):
    root = write_signs(tmp_path / "d")
    samples = [s for s in samples_of(root) if s.id == "meme_ru"]
    monkeypatch.setenv("FAKE_MODE", "fail")
    with pytest.raises(BadRecord, match=r"sample 'meme_ru': OCR of image .*tesseract failed \(exit 3\): Error in pix"):
        enrich_samples(samples, root, OcrCfg())
    monkeypatch.setenv("FAKE_MODE", "hang")
    out, bad, report = enrich_samples(samples, root, OcrCfg(timeout_s=0.5), skip_bad=True)
    assert out == [] and "took longer than 0.5 s" in bad[0].reason and report.skipped_samples == 1
    monkeypatch.setenv("FAKE_MODE", "ok")
    stand_in.unlink()
    out, _, _ = enrich_samples(samples, root, OcrCfg())
    assert out[0].meta["ocr"] == "HELLO" and len(stand_in.read_text().splitlines()) == 1
    entry = next((root / ocr.CACHE_DIR).glob("*.json"))
    assert json.loads(entry.read_text())["tesseract"] == "tesseract 0.0-stand-in"  # the version is in the key
    entry.write_text('{"words": [')  # damaged (a full disk, a hand edit): read again, not a crash
    out, _, report = enrich_samples(samples, root, OcrCfg())
    assert report.ran == 1 and out[0].meta["ocr"] == "HELLO" and len(stand_in.read_text().splitlines()) == 2
    assert json.loads(entry.read_text())["words"][0]["text"] == "HELLO"


def test_config_validates_ocr_settings(tmp_path):
    from vlmtune.config import DataCfg, RunCfg

    cfg = RunCfg.from_file(None, ["--data.path", "d", "--data.ocr.langs", "por+eng", "--data.ocr.min_conf", "40",
                                  "--data.ocr.into", "meta"])
    assert cfg.data.ocr == OcrCfg(engine="tesseract", langs="por+eng", min_conf=40.0, into="meta")
    assert DataCfg(path="d").ocr is None  # off by default
    assert RunCfg.from_file(None, ["--data.path", "d", "--data.ocr.engine", "tesseract"]).data.ocr == OcrCfg()
    for key, value, error in [("engine", "easyocr", "not one of"), ("langs", "eng rus", "joined by '+'"),
                              ("psm", "0", "page segmentation"), ("into", "answer", "not one of"),
                              ("template", "{prompt}", "must contain {text}"),
                              ("template", "{text} {prompt} {lang}", "may only use"),
                              ("min_conf", "101", "0-100"), ("max_chars", "0", ">= 1"), ("timeout_s", "0", "> 0")]:
        with pytest.raises(ValueError, match=re.escape(error)):
            RunCfg.from_file(None, ["--data.path", "d", f"--data.ocr.{key}", value])


def test_configs_of_the_old_form_are_read_until_0_2(tmp_path):
    """`ocr: tesseract` with flat `ocr_<key>`s (older recipes, and the run_config.yaml of every older run, which
    saves `ocr: null` and all seven keys) become the `data.ocr` section."""
    from vlmtune.config import RunCfg

    old = {"path": "d", "ocr": "tesseract", "ocr_langs": "rus", "ocr_min_conf": 50, "ocr_template": "T {text} {prompt}"}
    with pytest.warns(FutureWarning, match=r"write data: \{ocr: \{engine: tesseract, langs: 'rus', template: 'T "):
        cfg = RunCfg.from_dict({"data": old})
    assert cfg.data.ocr == OcrCfg(langs="rus", min_conf=50.0, template="T {text} {prompt}", into="prompt")
    saved = RunCfg.from_dict({"data": {"path": "d"}}).to_dict()["data"]
    saved.update({"ocr": None, **{f"ocr_{k}": v for k, v in dataclasses.asdict(OcrCfg()).items() if k != "engine"}})
    assert RunCfg.from_dict({"data": saved}).data.ocr is None  # an older run without OCR
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"data": old}))  # a new-form override on an old-form file
    with pytest.warns(FutureWarning):
        cfg = RunCfg.from_file(tmp_path / "c.yaml", ["--data.ocr.psm", "11", "--data.ocr_max_chars", "99"])
    assert (cfg.data.ocr.langs, cfg.data.ocr.psm, cfg.data.ocr.max_chars) == ("rus", 11, 99)
    with pytest.raises(ValueError, match=r"ocr_langs and ocr.langs set the same thing"):
        RunCfg.from_dict({"data": {"path": "d", "ocr": {"langs": "eng"}, "ocr_langs": "rus"}})
    with pytest.raises(ValueError, match=r"data.ocr.psm: 0 is not"):  # a value that never worked still fails
        RunCfg.from_dict({"data": {"path": "d", "ocr_psm": 0}})


def test_data_ocr_flags_default_to_the_config_section():
    """One default per setting: `vlmtune data ocr` without flags reads as `data.ocr: {}` does (into: prompt)."""
    from vlmtune.cli import build_parser

    a = build_parser().parse_args(["data", "ocr", "d"])
    defaults = dataclasses.asdict(OcrCfg())
    assert {k: getattr(a, k) for k in defaults if k != "engine"} == {k: v for k, v in defaults.items() if k != "engine"}
    assert a.into == "prompt"


def test_end_to_end_train_eval_predict_serve_and_data_ocr_command_see_the_ocr_text(tmp_path, capsys,
                                                                                    tesseract_calls):
    """A tiny dataset of drawn signs whose answer is their text: with data.ocr the prompt the model is trained
    on (as encoded by the family) holds the sign's text, the run records the setting, `vlmtune eval --model RUN`
    / `predict` evaluate on the same enriched prompts (from the cache), `serve` reads an uploaded sign into the
    same prompt, and `vlmtune data ocr` writes an enriched copy."""
    from transformers import AutoProcessor

    from vlmtune.cli import main
    from vlmtune.data.dataset import load_split
    from vlmtune.data.images import load_image
    from vlmtune.models import get_family

    root = write_signs(tmp_path / "signs")
    cfg = tiny_run_cfg(tmp_path, root, name="ocr", data={"path": str(root), "max_length": 256,
                                                         "ocr": {"langs": LANGS}},
                       train={"max_steps": 2, "micro_batch_size": 2, "global_batch_size": 2, "eval_every": 0,
                              "save_every": 0})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 0
    run = tmp_path / "runs" / "ocr"
    saved = yaml.safe_load((run / "run_config.yaml").read_text())["data"]
    assert (saved["ocr"]["engine"], saved["ocr"]["langs"], saved["ocr"]["into"]) == ("tesseract", LANGS, "prompt")
    assert len(list((root / ocr.CACHE_DIR).glob("*.json"))) == 3  # training read every image once

    # what the model is trained on: the family's encoding (with the run's processor) of the loaded training samples
    assert model_ocr_options(run / "best") == model_ocr_options(run) == OcrCfg(langs=LANGS)
    train = load_split(root, "train", False, ocr=model_ocr_options(run))
    processor = AutoProcessor.from_pretrained(run / "best")
    batch = get_family("llava").encode(processor, train, [[load_image(root / s.images[0])] for s in train], "train",
                                       256)
    for row, s in zip(batch.inputs["input_ids"], train, strict=True):
        text = processor.tokenizer.decode(row, skip_special_tokens=True)
        read = s.meta["ocr"]
        assert f"Text in the image: {read}\n{QUESTION}" in text, text
        assert cer(SIGNS[s.id][0], read) <= 0.1, (s.id, read)

    # eval --model RUN applies the run's enrichment (all cache hits) and predict does the same
    capsys.readouterr()
    assert main(["eval", "--model", str(run), "--data", str(root), "--split", "val", "--out", str(tmp_path / "ev"),
                 "--max-new-tokens", "2", "--no-report"]) == 0
    err = capsys.readouterr().err
    assert "trained with OCR enrichment" in err and "1 cached, 0 read by tesseract" in err, err
    row = json.loads((tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()[0])
    assert row["question"].startswith("Text in the image: ") and row["question"].endswith(QUESTION)
    assert cer("OPEN 24 HOURS", row["meta"]["ocr"]) <= 0.1, row
    assert main(["predict", "--model", str(run / "best"), "--data", str(root), "--split", "val", "--out",
                 str(tmp_path / "p.jsonl"), "--max-new-tokens", "2"]) == 0
    assert json.loads((tmp_path / "p.jsonl").read_text())["question"] == row["question"]

    # serve --model RUN: the uploaded image's text goes into the prompt exactly as for eval
    import base64
    import io

    from fastapi.testclient import TestClient

    from vlmtune.config import ServeCfg
    from vlmtune.serve import build_app
    from vlmtune.serve.messages import _job

    app = build_app(run, ServeCfg(), background=False)
    assert app.state.vlmtune.ocr == OcrCfg(langs=LANGS)
    png = io.BytesIO()
    render(*SIGNS["sign_en"][:2]).save(png, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    req = {"max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": QUESTION}]}]}
    assert _job(req, ServeCfg(), app.state.vlmtune.ocr)[0].sample.question == row["question"]
    tesseract_calls.clear()
    with TestClient(app, base_url="http://127.0.0.1") as client:
        response = client.post("/v1/chat/completions", json=req)
    assert response.status_code == 200 and ocr_runs(tesseract_calls) == 1, response.text  # the handler read it

    # vlmtune data ocr: an enriched copy (from the cache), which loading with OCR again does not enrich twice
    capsys.readouterr()
    assert main(["data", "ocr", str(root), "--langs", LANGS, "--into", "prompt", "--out", str(tmp_path / "copy"),
                 "--template", "OCR: {text}\\n{prompt}"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["samples"], result["with_text"], result["ocr"]["ran"], result["ocr"]["cached"]) == (3, 3, 0, 3)
    copy = samples_of(tmp_path / "copy", "val")
    assert copy[0].question == f"OCR: {row['meta']['ocr']}\n{QUESTION}"  # the CLI's \\n is a line break
    reloaded = load_split(tmp_path / "copy", "val", False, ocr=OcrCfg(langs=LANGS))
    assert reloaded[0].messages == copy[0].messages
    assert main(["data", "ocr", str(root)]) == 2  # rewriting questions (the default, --into prompt) in place: refused
    assert "--out" in capsys.readouterr().err
    assert main(["data", "ocr", str(root), "--langs", LANGS, "--into", "meta"]) == 0  # meta in place
    assert all(s.meta["ocr"] and s.messages[0]["content"][1]["text"] == QUESTION for s in samples_of(root))
