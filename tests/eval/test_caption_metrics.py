"""Tests of the captioning metrics (caption.py) and tokenizers (tokenize.py) against pycocoevalcap 1.2.

Java is required (it is present here and in CI): every test that needs it fails, never skips, without it.
English METEOR loads a 60 MB paraphrase table (~13 s), so all English METEOR values come from ONE
pycocoevalcap ``Meteor`` process shared through the module fixture ``shared_meteor``.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vlmtune.eval.metrics import caption, tokenize
from vlmtune.eval.metrics.caption import caption_metrics
from vlmtune.eval.metrics.tokenize import ptb_tokenize, resolve_ptb_backend, unicode_tokenize

# /work/main/tests/eval/test_caption_metrics.py -> parents[3] == /work, where `shared/` sits beside the repo.
REFERENCE_PATH = Path(__file__).resolve().parents[3] / "shared" / "reference" / "coco_example.json"
TOL = 1e-9


def _load_reference() -> dict:
    # Deliberately no skip: a missing reference file must fail collection loudly.
    with REFERENCE_PATH.open(encoding="utf-8") as f:
        return json.load(f)


REF = _load_reference()
GTS = REF["gts_raw"]
PREDS = {k: v[0] for k, v in REF["res_raw"].items()}
BLEU = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")
BACKENDS = ("java", "python")


def _official_scores(gts_tok: dict, res_tok: dict) -> dict[str, tuple[float, list[float]]]:
    """COCOEvalCap.evaluate's scorer loop (minus METEOR/SPICE) on already tokenized text."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    out = {}
    bleu, bleu_per_image = Bleu(4).compute_score(gts_tok, res_tok, verbose=0)
    for name, score, scores in zip(BLEU, bleu, bleu_per_image, strict=True):
        out[name] = (score, list(scores))
    for name, scorer in (("ROUGE_L", Rouge()), ("CIDEr", Cider())):
        score, scores = scorer.compute_score(gts_tok, res_tok)
        out[name] = (score, list(scores))
    return out


def test_reference_path_is_shared_dir_beside_repo_root():
    repo_root = Path(__file__).resolve().parents[2]
    assert (repo_root / "pyproject.toml").is_file()
    assert REFERENCE_PATH == repo_root.parent / "shared" / "reference" / "coco_example.json"


# ---------------------------------------------------------------- fixtures: one English METEOR JVM


@pytest.fixture(scope="module", autouse=True)
def shared_meteor():
    """One pycocoevalcap Meteor process for every English caption_metrics call in this module.

    Autouse, so the JVM starts loading its paraphrase table with the first test of the module, while the
    tests that do not need it run; the tests that use it sit at the end of the file.
    """
    from pycocoevalcap.meteor import meteor as pycoco_meteor

    if shutil.which("java") is None:
        yield None  # the tests that need Java then fail on their own; the Java-free ones still run
        return
    instance = pycoco_meteor.Meteor()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pycoco_meteor, "Meteor", lambda: instance)
        yield instance


@pytest.fixture(scope="module")
def official(shared_meteor):
    """caption_metrics on the reference example, per PTB backend, all metrics."""
    return {backend: caption_metrics(PREDS, GTS, tokenizer=backend) for backend in BACKENDS}


# ---------------------------------------------------------------- reference reproduction


@pytest.mark.parametrize("backend", BACKENDS)
def test_ptb_tokenize_reproduces_reference_tokenization(backend):
    assert ptb_tokenize(GTS, backend) == REF["gts_tokenized"]
    assert ptb_tokenize(REF["res_raw"], backend) == REF["res_tokenized"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ptb_tokenizer_quirks_example(backend):
    case = REF["notes"]["ptb_tokenizer_quirks"]
    assert ptb_tokenize({"q": [case["input"]]}, backend) == {"q": [case["output"]]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_case_no_4gram_match(backend):
    case = REF["edge_case_no_4gram_match"]
    preds = {k: v[0] for k, v in case["res_raw"].items()}
    result = caption_metrics(preds, GTS, tokenizer=backend, metrics=("Bleu", "CIDEr"))
    assert [result["corpus"][m] for m in BLEU] == pytest.approx(case["Bleu_1..4"], abs=TOL)
    assert result["corpus"]["Bleu_4"] > 0  # tiny/small smoothing, not 0
    assert result["corpus"]["CIDEr"] == pytest.approx(case["CIDEr"], abs=TOL)


def test_prediction_empty_after_tokenization_is_scored_like_empty():
    only_punct = caption_metrics({**PREDS, "2": "... !"}, GTS, tokenizer="python", metrics=("Bleu", "CIDEr"))
    empty = caption_metrics({**PREDS, "2": ""}, GTS, tokenizer="python", metrics=("Bleu", "CIDEr"))
    assert only_punct["corpus"] == empty["corpus"]


def test_single_sample_cider_is_zero():
    result = caption_metrics({"1": PREDS["1"]}, {"1": GTS["1"]}, tokenizer="python", metrics=("CIDEr",))
    assert result["corpus"]["CIDEr"] == REF["notes"]["single_image_cider"] == 0.0
    assert any("every IDF is 0" in note for note in result["notes"])


def test_vlmevalkit_untokenized_variant():
    case = REF["untokenized_like_vlmevalkit"]
    result = caption_metrics(PREDS, GTS, tokenizer="none", metrics=("Bleu", "ROUGE_L", "CIDEr"))
    assert result["tokenizer"] == "none"
    assert [result["corpus"][m] for m in BLEU] == pytest.approx(case["Bleu_1..4"], abs=TOL)
    assert result["corpus"]["ROUGE_L"] == pytest.approx(case["ROUGE_L"], abs=TOL)
    assert result["corpus"]["CIDEr"] == pytest.approx(case["CIDEr"], abs=TOL)
    assert result["corpus"]["CIDEr"] != pytest.approx(REF["corpus"]["CIDEr"], abs=1e-3)


# ---------------------------------------------------------------- PTB: Java vs pure Python

PTB_CORPUS = [
    # contractions and clitics
    "I don't know.", "The cat's toy.", "You can't go.", "We won't stop.", "It is 5 o'clock.", "She's here.",
    "They'll come, we'd go, I'm fine, you're late, I've seen it.", "Isn't it? Aren't they? Wasn't he?",
    "Y'all gonna wanna gotta lemme gimme cannot.", "'Tis the season, 'twas the night.", "rock 'n' roll",
    "The dogs' bowls and the boss' desk.", "O'Neill and d'Avignon drank ol' rum.", "ma'am, ne'er, e'er",
    "DON'T SHOUT", "Don't, won't, can't!", "the '90s and '60s", "isn't", "he's", "dogs'",
    "Curly: don’t, it’s, the cat’s, dogs’ bowls, o’clock, we’ll", "it`s and don`t",
    # hyphens, dashes
    "A T-shirt and an e-mail.", "A self-driving, well-known, state-of-the-art car.", "co-op re-enter 3-D",
    "He said--no way--and left.", "a -- b --- c ---- d - e", "Pages 10-12 and 1990-2000.", "-5 degrees",
    "an en–dash and an em—dash", "X-ray", "mid-1990s", "anti-inflammatory", "soft\u00adhyphen",
    # numbers, currency, percent
    "1,000 people", "It costs $5.50 or 3.5 euros.", "50% off", "about 1/2 cup and 5 7/8 inches",
    "#1 in 2014", "12/25/2014 at 3:30pm", "£10, €20, ¥30, ¢40", "+3 and .5 and 1,000.5", "½ ¼ ¾ ⅓ ⅔",
    "Call (555) 123-4567 or 555-123-4567.", "2nd 3rd 4th 21st", "24/7 service",
    # quotes and parentheses
    '"Hello," she said.', "'Hi', he said.", "``quoted'' and `single'", "“curly” and ‘single curly’",
    "«guillemets»", "(parentheses) [brackets] {braces}", "a (b) c", "f(x)", "&quot;entity&quot; &apos;x&apos;",
    # abbreviations, acronyms, ellipses
    "The U.S. and the U.K.", "In the U.S. The end.", "Dr. Smith met Mr. Jones and Mrs. Brown Jr.",
    "apples, pears, etc. and more", "at 5 p.m. on Jan. 5", "No. 5 and fig. 3 and ca. 1900", "e.g. this, i.e. that",
    "Washington D.C. is big.", "A. M. Smith", "I. J. K.", "Co. Ltd. and pty. ltd.", "vs. and v. and approx. 5",
    "Wait...", "Wait... what", "a . . . b", "and so on....", "ellipsis … yes", "end.", "U.S.", "etc.",
    # trailing punctuation
    "What?", "Wow!", "Really?!", "No!!!", "Yes??", "Is it?!?", "OK.", "Yahoo! and E! news", "hi;", "a: b",
    # whitespace
    "A dog   with   spaces", "tabs\there\tand\tthere", "  leading and trailing  ", "no\u00a0break space",
    "wide\u3000space", "zero\u200bwidth", "", "two\nlines\n\nin one caption\n", " \t\n ",
    # unicode, emoji
    "Emoji 😀 and 👍🏽 and 🇺🇸", "café naïve über résumé", "Привет мир", "中文 日本語 한국어", "αβγ ΣΑΣ",
    "İstanbul", "Ångström", "ﬁ ligature", "\ufeffbom", "x\u0301 combining",
    # web, symbols
    "email foo@bar.com or see http://www.example.com/x?y=1 and www.google.com", "@user #hashtag",
    "see http://x.com/😀 now", "AT&T and R&D and &amp;", "<b>bold</b>", "a < b > c", ":) ;-) :-(",
    "c++ and c# code", "file.txt",
    "a/b and a / b", "5 * 3 = 15", "100°C", "x^2", "a|b", "a\\b", "~5", "a_b", "he said: \"yes\"",
]  # fmt: skip


def _generated_ptb_lines(n: int, seed: int) -> list[str]:
    """Seeded word/punctuation/unicode soup, for extra coverage of the lexer's rules."""
    rng = random.Random(seed)
    words = (
        "a man the dog cat's don't can't o'clock dogs' U.S. Dr. Mr. etc. e-mail T-shirt 1,000 3.5 $5 50% "
        "... -- ( ) \" ' `` gonna cannot 'tis y'all I'm p.m. Inc. Jan. No. 5 7/8 1/2 www.google.com :) <b> "
        "&amp; AT&T D.C. He The It In A I. St. vs. Jr. &quot; '90s café Привет 中文 😀 e.g. fig. 3 co-op 24/7"
    ).split()
    chars = list("abcxyzAEIOUT0123456789 .,;:'\"-_!?()[]{}<>/\\@#$%&*+=~`|") + list("éñü€£½’‘“”«»…–—\u00a0中😀")
    lines = []
    for _ in range(n):
        if rng.random() < 0.6:
            tokens = []
            for _ in range(rng.randint(1, 12)):
                word = rng.choice(words)
                if rng.random() < 0.15:
                    word += rng.choice(".,!?;:'\")-")
                if rng.random() < 0.05:
                    word = rng.choice("\"'(`") + word
                tokens.append(word)
            lines.append(" ".join(tokens) + rng.choice(["", ".", "!", "?", " .", "...", '."']))
        else:
            lines.append("".join(rng.choice(chars) for _ in range(rng.randint(0, 30))))
    return lines


def test_ptb_python_equals_java_sentence_by_sentence():
    sentences = PTB_CORPUS + _generated_ptb_lines(1500, seed=0)
    texts = {f"s{i:04d}": [s] for i, s in enumerate(sentences)}
    java = ptb_tokenize(texts, "java")  # one JVM start for the whole corpus
    python = ptb_tokenize(texts, "python")
    assert list(java) == list(texts)
    mismatches = [
        (sentences[k], java[key], python.get(key)) for k, key in enumerate(texts) if java[key] != python.get(key)
    ]
    assert not mismatches, "\n".join(f"{s!r}\n  java   {j!r}\n  python {p!r}" for s, j, p in mismatches[:20])


def test_ptb_line_breaks_shift_captions_in_both_backends():
    texts = {"a": ["first\rcaption"], "b": ["second one"], "c": ["third"]}
    java = ptb_tokenize(texts, "java")
    assert java == ptb_tokenize(texts, "python")
    assert java == {"a": ["first"], "b": ["caption"], "c": ["second one"]}  # official misalignment


# Recorded from the Java backend; this test runs without Java.
PTB_KNOWN = {
    "A T-shirt, isn't it? (yes) -- 3.5 dogs... U.S. e-mail": "a t-shirt is n't it -lrb- yes -rrb- 3.5 dogs u.s. e-mail",
    "I don't know; the cat's toy can't be found.": "i do n't know the cat 's toy ca n't be found",
    "The dogs' bowls are empty at 5 o'clock!": "the dogs bowls are empty at 5 o'clock",
    "1,000 people paid $5 for 50% off.": "1,000 people paid $ 5 for 50 % off",
    "\"Hello,\" she said. 'Hi', he said.": "hello she said hi he said",
    "Dr. Smith and Mr. Jones met Mrs. Brown, etc.": "dr. smith and mr. jones met mrs. brown etc.",
    "We're gonna eat 1/2 cup, 5 7/8 inches wide.": "we 're gon na eat 1/2 cup 5\xa07/8 inches wide",
    "Emoji 😀 and café naïve Привет 中文": "emoji and café naïve привет 中文",
    "[brackets] {braces} <angle> AT&T &amp; R&D": "-lsb- brackets -rsb- -lcb- braces -rcb- <angle> at&t & r&d",
    "Wait!! Really?! He said--no way--and left.": "wait !! really ?! he said no way and left",
    "A man... and a woman . . . and an ellipsis … yes": "a man and a woman and an ellipsis yes",
    "Call (555) 123-4567 or see www.google.com now": "call -lrb-555-rrb-\xa0123-4567 or see www.google.com now",
    "cannot wanna 'tis y'all rock 'n' roll": "can not wan na 't is y' all rock 'n' roll",
    "": "",
}


def test_ptb_python_known_outputs_without_java(monkeypatch):
    monkeypatch.setattr(tokenize.shutil, "which", lambda name: None)
    assert resolve_ptb_backend("auto") == "python"
    texts = {str(i): [s] for i, s in enumerate(PTB_KNOWN)}
    got = ptb_tokenize(texts, "auto")
    assert [got[str(i)][0] for i in range(len(PTB_KNOWN))] == list(PTB_KNOWN.values())


def test_auto_without_java_uses_python_and_reports_it(monkeypatch):
    monkeypatch.setattr(tokenize.shutil, "which", lambda name: None)
    monkeypatch.setattr(caption.shutil, "which", lambda name: None)
    result = caption_metrics(PREDS, GTS, metrics=("Bleu", "METEOR", "SPICE"))
    assert result["tokenizer"] == "ptb-python"
    assert any("no `java` executable" in note for note in result["notes"])
    assert result["corpus"]["Bleu_4"] == pytest.approx(REF["corpus"]["Bleu_4"], abs=TOL)
    assert "java" in result["unavailable"]["METEOR"] and "SPICE" in result["unavailable"]


def test_java_backend_fails_without_java(monkeypatch):
    monkeypatch.setattr(tokenize.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="java"):
        ptb_tokenize({"a": ["x"]}, "java")


def test_caption_metrics_repairs_line_breaks():
    preds = {**PREDS, "1": PREDS["1"].replace(" down ", "\r\ndown\u2028")}
    result = caption_metrics(preds, GTS, tokenizer="python", metrics=("Bleu", "CIDEr"))
    clean = caption_metrics(PREDS, GTS, tokenizer="python", metrics=("Bleu", "CIDEr"))
    assert result["corpus"] == clean["corpus"]
    assert any("line-break characters" in note and "'1'" in note for note in result["notes"])


# ---------------------------------------------------------------- property test vs COCOEvalCap


VOCAB = "a an the man woman dog dogs cat red blue big small on in with of and is are sitting riding near".split()
PUNCT = [",", ".", "!", "?", "'s", "n't", ";", ":", "-"]


def _random_caption(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randint(0, 9)):
        word = rng.choice(VOCAB)
        if rng.random() < 0.1:
            word = word.capitalize()
        if rng.random() < 0.2:
            word += rng.choice(PUNCT)
        if rng.random() < 0.05:
            word = f"({word})"
        words.append(word)
    return " ".join(words) + rng.choice(["", ".", " .", "!", "..."])


def _random_cases(n_cases: int, seed: int) -> list[tuple[dict, dict]]:
    rng = random.Random(seed)
    cases = []
    for _ in range(n_cases):
        ids = [f"img{k}" for k in range(rng.randint(1, 6))]
        refs = {i: [_random_caption(rng) for _ in range(rng.randint(1, 5))] for i in ids}
        if not any(r.strip(" .!") for rs in refs.values() for r in rs):
            refs[ids[0]].append("a dog")
        cases.append(({i: _random_caption(rng) for i in ids}, refs))
    return cases


def test_property_bleu_rouge_cider_equal_cocoevalcap():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # Checked first: without Java, PTBTokenizer would leave its temporary file in site-packages.
    assert shutil.which("java"), "this test needs a `java` executable on PATH"
    cases = _random_cases(30, seed=1234)
    # COCOEvalCap tokenizes gts and res in two Java calls; all 30 cases share those two calls, with a
    # lower-case filler line between cases so that no lexer lookahead crosses from one case into the next.
    all_gts, all_res = {}, {}
    for c, (preds, refs) in enumerate(cases):
        for i in refs:
            all_gts[f"{c}/{i}"] = [{"caption": r} for r in refs[i]]
            all_res[f"{c}/{i}"] = [{"caption": preds[i]}]
        all_gts[f"{c}/sep"] = [{"caption": "x"}]
        all_res[f"{c}/sep"] = [{"caption": "x"}]
    gts_tok, res_tok = PTBTokenizer().tokenize(all_gts), PTBTokenizer().tokenize(all_res)
    for c, (preds, refs) in enumerate(cases):
        gts = {i: gts_tok[f"{c}/{i}"] for i in refs}
        res = {i: res_tok[f"{c}/{i}"] for i in refs}
        if not any(r.strip() for rs in gts.values() for r in rs):
            continue  # pycocoevalcap's CIDEr cannot run without any reference n-gram
        expected = _official_scores(gts, res)
        got = caption_metrics(preds, refs, tokenizer="python", metrics=("Bleu", "ROUGE_L", "CIDEr"))
        for name, (score, scores) in expected.items():
            assert got["corpus"][name] == pytest.approx(score, abs=TOL), (c, name)
            assert [got["per_sample"][i][name] for i in refs] == pytest.approx(scores, abs=TOL), (c, name)


# ---------------------------------------------------------------- other languages

RU_PREDS = {"a": "Собаки бегут по зелёной траве.", "b": "Кошка спит на диване!", "c": ""}
RU_REFS = {
    "a": ["Собака бежит по траве.", "Коричневая собака на лугу."],
    "b": ["Кот спит на диване.", "Кошка лежит на синем диване."],
    "c": ["Красная машина, у дома."],
}
ZH_PREDS = {"a": "一只狗在草地上奔跑。", "b": "猫在沙发上睡觉"}
ZH_REFS = {"a": ["狗在草地上跑。", "一只棕色的狗在绿草地上奔跑"], "b": ["一只猫睡在沙发上。"]}


@pytest.mark.parametrize(
    ("text", "lang", "expected"),
    [
        (
            "Коричневая собака бежит по зелёной траве.",
            "ru",
            ["коричневая", "собака", "бежит", "по", "зелёной", "траве"],
        ),
        ("Ёлка, ЁЖИК — и «кот»!", "ru", ["ёлка", "ёжик", "и", "кот"]),
        (
            "一只棕色的狗在绿草地上奔跑。",
            "zh",
            ["一", "只", "棕", "色", "的", "狗", "在", "绿", "草", "地", "上", "奔", "跑"],
        ),
        ("ＡＢＣ１２３とカタカナ、ひらがな", "ja", ["abc123", "と", "カ", "タ", "カ", "ナ", "ひ", "ら", "が", "な"]),
        ("고양이가 잔다", "ko", ["고", "양", "이", "가", "잔", "다"]),
        ("Un café, l’homme et l'été!", "fr", ["un", "café", "l'homme", "et", "l'été"]),
        ("Straße GROSS 3.5 e-mail 😀 x'", "de", ["strasse", "gross", "3", "5", "e", "mail", "x"]),
        ("cafe\u0301 naïve ﬁne", "fr", ["café", "naïve", "fine"]),
        ("नमस्ते दुनिया", "hi", ["नमस्ते", "दुनिया"]),
        ("", "ru", []),
        ("... !!", "zh", []),
    ],
)
def test_unicode_tokenize(text, lang, expected):
    assert unicode_tokenize(text, lang) == expected


def test_russian_captions():
    result = caption_metrics(RU_PREDS, RU_REFS, lang="ru")
    assert result["tokenizer"] == "unicode"
    notes = " ".join(result["notes"])
    assert "METEOR for 'ru'" in notes and "exact" in notes and "stem" in notes and "-l ru" in notes
    assert "English WordNet is never used" in notes and "unicode_tokenize" in notes
    assert "lang is 'ru'" in result["unavailable"]["SPICE"]
    gts = {i: [" ".join(unicode_tokenize(r, "ru")) for r in refs] for i, refs in RU_REFS.items()}
    res = {i: [" ".join(unicode_tokenize(p, "ru"))] for i, p in RU_PREDS.items()}
    for name, (score, scores) in _official_scores(gts, res).items():
        assert result["corpus"][name] == pytest.approx(score, abs=TOL)
        assert [result["per_sample"][i][name] for i in RU_REFS] == pytest.approx(scores, abs=TOL)
    assert 0 < result["corpus"]["METEOR"] <= 1
    assert result["per_sample"]["c"]["METEOR"] == 0.0 and result["per_sample"]["c"]["Bleu_1"] == 0.0
    # "собаки"/"собака" share a Snowball stem: stem matching scores above exact-only matching.
    exact_only, exact_only_per_sample = caption._meteor_jar(gts, res, ["-l", "ru", "-m", "exact", "-lower"])
    assert result["corpus"]["METEOR"] > exact_only
    assert result["per_sample"]["a"]["METEOR"] > exact_only_per_sample[0]


def test_chinese_captions():
    result = caption_metrics(ZH_PREDS, ZH_REFS, lang="zh-CN")
    assert result["tokenizer"] == "unicode"
    assert any("METEOR for 'zh': exact matching only" in note for note in result["notes"])
    gts = {i: [" ".join(unicode_tokenize(r, "zh")) for r in refs] for i, refs in ZH_REFS.items()}
    res = {i: [" ".join(unicode_tokenize(p, "zh"))] for i, p in ZH_PREDS.items()}
    assert res == {"a": ["一 只 狗 在 草 地 上 奔 跑"], "b": ["猫 在 沙 发 上 睡 觉"]}
    for name, (score, _) in _official_scores(gts, res).items():
        assert result["corpus"][name] == pytest.approx(score, abs=TOL)
    assert 0 < result["corpus"]["METEOR"] <= 1


# ---------------------------------------------------------------- SPICE, chrF, input errors


def test_spice_unavailable_without_corenlp_models(monkeypatch, tmp_path):
    def no_download():
        raise AssertionError("SPICE models must never be downloaded")

    monkeypatch.setattr(caption, "_spice_lib_dir", lambda: tmp_path)
    monkeypatch.setattr(caption.shutil, "which", lambda name: "/usr/bin/java")  # only the models are missing
    monkeypatch.setattr("pycocoevalcap.spice.get_stanford_models.get_stanford_models", no_download)
    monkeypatch.setattr("pycocoevalcap.spice.spice.get_stanford_models", no_download)
    result = caption_metrics(PREDS, GTS, tokenizer="python", metrics=("SPICE", "Bleu"))
    reason = result["unavailable"]["SPICE"]
    assert "CoreNLP 3.6.0" in reason and "stanford-corenlp-3.6.0-models.jar" in reason and "no network" in reason
    assert "SPICE" not in result["corpus"] and "Bleu_1" in result["corpus"]
    assert all("SPICE" not in scores for scores in result["per_sample"].values())


class _FakeSpice:
    """Stands in for pycocoevalcap's Spice: like it, returns per-image scores in sorted-id order."""

    def compute_score(self, gts, res):
        scores = [{"All": {"f": len(res[i][0].split()) / 100}} for i in sorted(gts)]
        return sum(s["All"]["f"] for s in scores) / len(scores), scores


def test_spice_per_sample_scores_follow_sorted_ids(monkeypatch):
    monkeypatch.setattr(caption, "_spice_unavailable_reason", lambda lang, java: None)
    monkeypatch.setattr("pycocoevalcap.spice.spice.Spice", _FakeSpice)
    preds = {"b": "one two three", "a": "one", "c": "one two"}
    result = caption_metrics(preds, {i: ["x"] for i in preds}, tokenizer="python", metrics=("SPICE",))
    assert {i: s["SPICE"] for i, s in result["per_sample"].items()} == {"b": 0.03, "a": 0.01, "c": 0.02}
    assert result["corpus"]["SPICE"] == pytest.approx(0.02) and not result["unavailable"]


def test_spice_failure_is_reported_not_raised(monkeypatch):
    class BrokenSpice:
        def compute_score(self, gts, res):
            raise subprocess.CalledProcessError(1, ["java", "-jar", "spice-1.0.jar"])

    monkeypatch.setattr(caption, "_spice_unavailable_reason", lambda lang, java: None)
    monkeypatch.setattr("pycocoevalcap.spice.spice.Spice", BrokenSpice)
    result = caption_metrics(PREDS, GTS, tokenizer="python", metrics=("SPICE", "ROUGE_L"))
    assert result["unavailable"]["SPICE"].startswith("SPICE failed: CalledProcessError")
    assert result["corpus"]["ROUGE_L"] == pytest.approx(REF["corpus"]["ROUGE_L"], abs=TOL)


def test_spice_in_installed_environment_is_reported_not_raised():
    result = caption_metrics(PREDS, GTS, tokenizer="python", metrics=("SPICE",))
    assert "SPICE" in result["corpus"] or "SPICE" in result["unavailable"]


def test_chrf_equals_sacrebleu():
    from sacrebleu.metrics import CHRF

    preds = {**PREDS, "3": ""}
    refs = {**GTS, "4": GTS["4"][:2]}  # variable number of references
    result = caption_metrics(preds, refs, tokenizer="python", metrics=("chrF",))
    ids = list(refs)
    streams = [[refs[i][k] if k < len(refs[i]) else None for i in ids] for k in range(5)]
    expected = CHRF().corpus_score([preds[i] for i in ids], streams).score / 100
    assert result["corpus"]["chrF"] == pytest.approx(expected, abs=1e-12)
    for i in ids:
        assert result["per_sample"][i]["chrF"] == pytest.approx(CHRF().sentence_score(preds[i], refs[i]).score / 100)
    assert result["per_sample"]["3"]["chrF"] == 0.0
    assert 0 < result["corpus"]["chrF"] < 1


def test_mismatched_ids_name_the_ids():
    with pytest.raises(
        ValueError, match=r"predictions without references: 'extra'.*references without predictions: '4'"
    ):
        caption_metrics({**{k: v for k, v in PREDS.items() if k != "4"}, "extra": "x"}, GTS, tokenizer="python")


@pytest.mark.parametrize(
    ("predictions", "references", "match"),
    [
        ({}, {}, "no samples"),
        ({"a": "x"}, {"a": []}, "at least one reference; none for 'a'"),
        ({"a": "x"}, {"a": ["...", ""]}, "every reference is empty"),
    ],
    ids=["no_samples", "empty_references", "references_empty_after_tokenization"],
)
def test_invalid_inputs(predictions, references, match):
    with pytest.raises(ValueError, match=match):
        caption_metrics(predictions, references, tokenizer="python", metrics=("Bleu", "CIDEr"))


def test_invalid_options():
    with pytest.raises(ValueError, match="unknown metrics"):
        caption_metrics(PREDS, GTS, metrics=("BLEU",))
    with pytest.raises(ValueError, match="unknown tokenizer"):
        caption_metrics(PREDS, GTS, tokenizer="spacy")
    with pytest.raises(TypeError):
        caption_metrics({"a": None}, {"a": ["x"]})
    with pytest.raises(TypeError):
        ptb_tokenize({"a": "not a list"}, "python")


def test_modules_do_not_import_torch():
    code = (
        "import sys, vlmtune.eval.metrics.caption, vlmtune.eval.metrics.tokenize; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------- English METEOR (shared JVM, last)


@pytest.mark.parametrize("metric", list(REF["corpus"]))
@pytest.mark.parametrize("backend", BACKENDS)
def test_corpus_scores_match_reference(official, backend, metric):
    assert official[backend]["corpus"][metric] == pytest.approx(REF["corpus"][metric], abs=TOL)


@pytest.mark.parametrize("metric", list(REF["per_image"]))
@pytest.mark.parametrize("backend", BACKENDS)
def test_per_image_scores_match_reference(official, backend, metric):
    got = {i: official[backend]["per_sample"][i][metric] for i in GTS}
    assert got == pytest.approx(REF["per_image"][metric], abs=TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reference_result_shape(official, backend):
    result = official[backend]
    assert result["tokenizer"] == f"ptb-{backend}"
    assert set(result) == {"corpus", "per_sample", "unavailable", "tokenizer", "notes"}
    assert set(result["corpus"]) == {*BLEU, "METEOR", "ROUGE_L", "CIDEr", "chrF"}
    assert all(set(scores) == set(result["corpus"]) for scores in result["per_sample"].values())
    assert "SPICE" in result["unavailable"]
    assert any("CIDEr-D" in note for note in result["notes"])
    assert any("divided by 100" in note for note in result["notes"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_prediction_matches_reference(shared_meteor, backend):
    case = REF["notes"]["empty_prediction_for_image_2"]
    result = caption_metrics({**PREDS, "2": ""}, GTS, tokenizer=backend, metrics=("Bleu", "METEOR", "ROUGE_L", "CIDEr"))
    assert [result["corpus"][m] for m in BLEU] == pytest.approx(case["Bleu_1..4"], abs=TOL)
    for metric in ("ROUGE_L", "CIDEr", "METEOR"):
        assert result["corpus"][metric] == pytest.approx(case[metric], abs=TOL)
    assert result["per_sample"]["2"]["ROUGE_L"] == 0.0
    assert any("empty after tokenization ('2')" in note for note in result["notes"])
