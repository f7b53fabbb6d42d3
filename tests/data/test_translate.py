"""`vlmtune data translate` on tiny random Marian and NLLB models built here: the output is noise, the mechanics are
real (batching, the cache, resuming, language codes, the original text kept, long/empty/bad text)."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from vlmtune.cli import main
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.data.store import read_samples
from vlmtune.data.translate import CACHE_DIR, Translator, save_tiny_translator, short_lang, translate_dataset

LONG = "the man wears a red hat. " * 8  # ~65 tokens: over the tiny models' 32-token input limit


def _write(root: Path, samples: list[Sample], extra_lines: tuple[str, ...] = ()) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "images/a.png")
    lines = [json.dumps(s.to_json()) for s in samples] + list(extra_lines)
    (root / "manifest.jsonl").write_text("".join(x + "\n" for x in lines))
    return root


def _samples() -> list[Sample]:
    img = ["images/a.png"]
    return [
        Sample(id="q1", messages=[user("Is there a dog?"), assistant("yes")], images=img, answers=["yes", "yes", "no"]),
        Sample(id="q2", messages=[user("Is the shirt red?"), assistant("yes")], images=img, answers=["yes", "no"]),
        Sample(id="c1", messages=[user("Describe the image."), assistant("a dog runs on the grass.")], images=img,
               task="caption", references=["a dog runs on the grass.", "two people are sitting on a bench."]),
        Sample(id="long", messages=[user("Describe the image."), assistant(LONG.strip())], images=img,
               task="caption"),
        Sample(id="pt", messages=[user("Qual é a cor?"), assistant("azul")], images=img, meta={"lang": "pt"}),
        Sample(id="sys", messages=[{"role": "system", "content": [{"type": "text", "text": ""}]},
                                   user("what is two plus one?", n_images=0), assistant("three")]),
    ]


@pytest.fixture(scope="module")
def marian(tmp_path_factory) -> Path:
    return save_tiny_translator(tmp_path_factory.mktemp("marian") / "m", "marian")


@pytest.fixture(scope="module")
def nllb(tmp_path_factory) -> Path:
    return save_tiny_translator(tmp_path_factory.mktemp("nllb") / "m", "nllb")


def _manifest(path: Path) -> list[dict]:
    return [json.loads(x) for x in (path / "manifest.jsonl").read_text().splitlines()]


def test_translate_keeps_the_original_translates_each_text_once_and_reruns_from_the_cache(tmp_path, marian):
    root = _write(tmp_path / "d", _samples())
    translator = Translator(str(marian), "en", "ru", batch_size=4)
    texts = []
    real_generate = translator.generate
    translator.generate = lambda batch: texts.extend(batch) or real_generate(batch)
    result = translate_dataset(root, "ru", str(marian), translator=translator)

    out = tmp_path / "d-ru"  # the default: DIR-<to> beside DIR
    assert result["out"] == str(out)
    samples = {s.id: s for s in read_samples(out)[0]}  # a valid dataset: images there, nothing empty
    assert list(samples) == ["q1", "q2", "c1", "long", "pt", "sys"]
    assert len(texts) == len(set(texts)) == result["new_translations"] == result["texts"], "each text once"
    assert texts.count("yes") == 1 and "" not in texts
    assert result["model_calls"] == -(-len(texts) // 4)
    lengths = translator.n_tokens(texts)
    assert lengths == sorted(lengths, reverse=True), "longest first: batches of similar lengths"

    q1, q2 = samples["q1"], samples["q2"]
    assert q1.target == q2.target == q1.answers[0] == q1.answers[1] != q1.answers[2], "the same text, the same output"
    assert q1.meta["lang"] == "ru" and q1.meta["original"] == {
        "lang": "en", "messages": _samples()[0].messages, "answers": ["yes", "yes", "no"]}
    assert q1.meta["translation"] == {"model": str(marian), "key": translator.key}
    assert samples["c1"].meta["original"]["references"] == _samples()[2].references
    assert samples["c1"].references[0] == samples["c1"].target
    assert samples["pt"] == _samples()[4], "another language than --from: copied unchanged"
    assert samples["sys"].messages[0]["content"][0]["text"] == "", "an empty string stays empty"

    # a text over the input limit is split at sentence boundaries, translated piece by piece, and reported
    assert result["chunked"] == ["long"]
    pieces = translator.pieces(LONG.strip(), "long")
    assert len(pieces) > 1 and all(p in texts for p in pieces) and LONG.strip() not in texts
    cache = {r["text"]: r for r in map(json.loads, Path(result["cache"]).read_text().splitlines())}
    assert samples["long"].target == " ".join(cache[p]["translation"] for p in pieces)
    # the random model never stops: every translated sample is reported as reaching its budget
    assert set(result["length_limited"]) == {"q1", "q2", "c1", "long", "sys"}
    assert (out / "images/a.png").read_bytes() == (root / "images/a.png").read_bytes()

    # a re-run costs nothing: every text comes from the cache, the model is never loaded, the output is the same
    before = (out / "manifest.jsonl").read_text()
    again = Translator(str(marian), "en", "ru", batch_size=4)
    rerun = translate_dataset(root, "ru", str(marian), translator=again)
    assert rerun["model_calls"] == rerun["new_translations"] == 0 and rerun["cached"] == result["texts"]
    assert again._model is None
    assert (out / "manifest.jsonl").read_text() == before
    # another target language is another cache key: nothing is reused across language pairs
    assert Translator(str(marian), "en", "pt").key != translator.key


def test_batch_size_and_interruption_do_not_change_the_result(tmp_path, marian):
    """Batch size 1 vs 4 (greedy) gives the same translations; a run killed after its first batch continues from
    the cache and ends with the same dataset as an uninterrupted one."""
    outs = {}
    for name, bs in (("b4", 4), ("b1", 1)):
        root = _write(tmp_path / name, _samples()[:3])  # 7 distinct texts
        translate_dataset(root, "ru", str(marian), out=tmp_path / f"{name}-out", batch_size=bs)
        outs[name] = _manifest(tmp_path / f"{name}-out")
    assert outs["b1"] == outs["b4"]

    root = _write(tmp_path / "killed", _samples()[:3])
    translator = Translator(str(marian), "en", "ru", batch_size=4)
    real_generate, calls = translator.generate, []

    def dies_on_the_second_batch(batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_generate(batch)

    translator.generate = dies_on_the_second_batch
    with pytest.raises(KeyboardInterrupt):
        translate_dataset(root, "ru", str(marian), out=tmp_path / "killed-out", translator=translator)
    assert not (tmp_path / "killed-out" / "manifest.jsonl").exists(), "the manifest is only written at the end"
    cached = (root / CACHE_DIR).glob("*.jsonl")
    assert [len(p.read_text().splitlines()) for p in cached] == [4], "the first batch was kept"

    cache_file = next((root / CACHE_DIR).glob("*.jsonl"))
    with open(cache_file, "a") as f:
        f.write('{"text": "Is the sh')  # a row torn by the kill: ignored, and the next rows start on a new line
    resumed = translate_dataset(root, "ru", str(marian), out=tmp_path / "killed-out", batch_size=4)
    assert resumed["cached"] == 4 and resumed["new_translations"] == resumed["texts"] - 4
    assert _manifest(tmp_path / "killed-out") == outs["b4"]
    rows = [json.loads(x) for x in cache_file.read_text().splitlines() if x != '{"text": "Is the sh']
    assert len(rows) == resumed["texts"]


def test_nllb_marks_the_source_and_forces_the_target_code(tmp_path, nllb):
    root = _write(tmp_path / "d", _samples()[:3])
    translator = Translator(str(nllb), "en", "ru", batch_size=2)
    tok = translator.tokenizer
    rus, eng = tok.convert_tokens_to_ids("rus_Cyrl"), tok.convert_tokens_to_ids("eng_Latn")
    assert translator.forced_bos_token_id == rus and translator.source_token_id == eng
    assert tok("yes")["input_ids"][0] == eng, "src_lang puts the source code first"
    model = translator.model
    real, firsts = model.generate, []

    def spy(**kwargs):
        out = real(**kwargs)
        firsts.extend(out[:, 1].tolist())  # out[:, 0] is the decoder start token
        return out

    model.generate = spy
    result = translate_dataset(root, "ru", str(nllb), out=tmp_path / "ru", translator=translator)
    assert firsts and set(firsts) == {rus}, "the first generated token is the target language code"
    assert result["samples"] == 3 and read_samples(tmp_path / "ru")[0][0].meta["lang"] == "ru"
    assert "rus_Cyrl" not in (tmp_path / "ru/manifest.jsonl").read_text(), "the code is not part of the text"

    # full codes are taken as they are; Portuguese -> por_Latn; an unknown short code is an error, not a guess
    assert Translator(str(nllb), "eng_Latn", "pt").forced_bos_token_id == tok.convert_tokens_to_ids("por_Latn")
    assert short_lang("por_Latn") == "pt" and short_lang("ukr_Cyrl") == "uk", "meta['lang'] gets the short code"
    with pytest.raises(ValueError, match="no NLLB code known for language 'xx'"):
        Translator(str(nllb), "en", "xx")


def test_m2m100_language_tokens_are_refused_clearly(tmp_path, marian):
    from transformers import AutoTokenizer

    m2m = tmp_path / "m2m"
    shutil.copytree(marian, m2m)
    tok = AutoTokenizer.from_pretrained(m2m)
    tok.add_special_tokens({"additional_special_tokens": ["__en__", "__ru__"]})
    tok.save_pretrained(m2m)
    with pytest.raises(ValueError, match="M2M100-style model"):
        Translator(str(m2m), "en", "ru")


def test_empty_translations_are_left_out_and_listed(tmp_path, marian):
    root = _write(tmp_path / "d", _samples()[:3])
    translator = Translator(str(marian), "en", "ru")
    translator.generate = lambda batch: [("" if t == "no" else f"<{t}>", "stop") for t in batch]
    result = translate_dataset(root, "ru", str(marian), out=tmp_path / "ru", translator=translator)
    assert result["rejected"] == ["q1", "q2"] and result["samples"] == 1 and result["length_limited"] == []
    rejected = [json.loads(x) for x in (tmp_path / "ru/rejected.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejected] == ["q1", "q2"] and "'no' translated to an empty string" in rejected[0]["error"]
    (c1,) = read_samples(tmp_path / "ru")[0]
    assert c1.target == "<a dog runs on the grass.>" and c1.messages[0]["content"][1]["text"] == "<Describe the image.>"


def test_cli_translate_and_bad_records(tmp_path, marian, capsys):
    root = _write(tmp_path / "d", _samples()[:2])
    assert main(["data", "translate", str(root), "--to", "ru", "--model", str(marian), "--fields", "answers",
                 "--out", str(tmp_path / "ru"), "--batch-size", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["fields"] == ["answers"] and result["texts"] == 2 and result["model_calls"] == 1
    (q1, _) = read_samples(tmp_path / "ru")[0]
    assert q1.question == "Is there a dog?", "prompts were not asked for"
    assert q1.meta["original"] == {"lang": "en", "messages": _samples()[0].messages, "answers": ["yes", "yes", "no"]}

    args = ["data", "translate", None, "--to", "ru", "--model", str(marian)]
    bad = _write(tmp_path / "bad", _samples()[:1], ('{"id": "x", "messages": [',))
    assert main([a or str(bad) for a in args]) == 2
    assert "manifest.jsonl:2: malformed JSON" in capsys.readouterr().err

    not_text = Sample(id="odd", messages=[user("hi", n_images=0), assistant("yes")])
    row = not_text.to_json()
    row["messages"][0]["content"][0]["text"] = 7
    bad = _write(tmp_path / "bad2", [], (json.dumps(row),))
    assert main([a or str(bad) for a in args]) == 2
    # the manifest reader's schema names it first, with file and line
    assert "manifest.jsonl:1: sample 'odd': messages[0].content[0].text: must be a string, got integer 7" in \
        capsys.readouterr().err

    word = _write(tmp_path / "word", [Sample(id="w", messages=[user("x" * 400, n_images=0), assistant("yes")])])
    assert main([a or str(word) for a in args]) == 2
    assert "sample 'w' message 0: a single word of" in capsys.readouterr().err

    assert main(["data", "translate", str(root), "--to", "ru", "--model", str(marian), "--fields", "captions"]) == 2
    assert "unknown field(s) ['captions']" in capsys.readouterr().err
    assert main(["data", "translate", str(root), "--to", "ru", "--model", str(tmp_path / "nowhere")]) == 2
    assert f"no such run directory: {tmp_path / 'nowhere'}" in capsys.readouterr().err


def test_each_output_is_cut_at_its_end_token_or_its_own_budget(marian):
    """`generate` decodes each row up to its end token, within a budget set by that row's input length only (so a
    row's result does not depend on its batch), and says whether it stopped or ran out."""
    import torch

    translator = Translator(str(marian), "en", "ru")
    tok, eos, pad = translator.tokenizer, 1, 0
    word = tok("dog", add_special_tokens=False)["input_ids"]
    short, long = "yes", "two people are sitting on a bench ."
    budget = translator.budget(len(tok(short)["input_ids"]))
    assert budget == 2 * len(tok(short)["input_ids"]) + 16 < translator.budget(len(tok(long)["input_ids"]))
    rows = [[pad, *word, eos, pad], [pad] + word * 40]  # the short text stops; the long one runs on
    fake = torch.tensor([r + [pad] * (max(map(len, rows)) - len(r)) for r in rows])
    seen = {}
    translator.model.generate = lambda **kw: seen.update(kw) or fake
    (a, a_end), (b, b_end) = translator.generate([short, long])
    assert (a, a_end) == ("dog", "stop") and b_end == "length"
    long_budget = translator.budget(len(tok(long)["input_ids"]))
    assert tok(b, add_special_tokens=False)["input_ids"] == (word * 40)[:long_budget]
    assert seen["max_new_tokens"] == long_budget + 1 and seen["do_sample"] is False
