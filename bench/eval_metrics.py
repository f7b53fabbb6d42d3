"""Benchmark: scoring captions and VQA answers, vlmtune vs pycocoevalcap and vs the official-style loop.

    .venv/bin/python bench/eval_metrics.py            # ~3 minutes on 2 CPU cores; prints markdown tables

Captioning: 5,000 images x 5 references (synthetic sentences over a 300-word vocabulary, with punctuation and
capitals), one prediction each.
  pycocoevalcap        what COCOEvalCap.evaluate() does: PTBTokenizer (Java CoreNLP) on references and predictions,
                       then Bleu(4), Meteor(), Rouge(), Cider() (SPICE left out: it needs models downloaded)
  vlmtune (java)       caption_metrics(tokenizer="java")
  vlmtune (python)     caption_metrics(tokenizer="python"): the pure-Python PTB tokenizer
Every metric must agree to 1e-9 (asserted), corpus and per image. Meteor's JVM is started before the clocks start,
on both sides (it takes ~10 s to load its paraphrase table; vlmtune starts it once per process).

VQA: 100,000 questions x 10 human answers (answers drawn with the variation real annotators type: case, trailing
punctuation, number words, articles).
  official-style loop  the structure of GT-Vision-Lab's vqaEval.evaluate(): per question, strip the answers,
                       normalise prediction and answers when the answers disagree, leave-one-out over the 10 answers
  vlmtune              vqa_accuracy(prediction, answers) per question (normalisation cached)
Every per-question accuracy must be equal (asserted).
"""

from __future__ import annotations

import argparse
import random
import time


def _vocab(rng: random.Random, n: int = 300) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 8))) for _ in range(n)]


def _sentence(rng: random.Random, words: list[str]) -> str:
    s = " ".join(rng.choice(words) for _ in range(rng.randint(5, 14)))
    s = s[0].upper() + s[1:]
    if rng.random() < 0.3:
        k = s.find(" ", len(s) // 2)
        s = s[:k] + "," + s[k:] if k > 0 else s
    return s + rng.choice([".", ".", ".", "!", ""])


def caption_data(n: int, seed: int = 0):
    rng = random.Random(seed)
    words = _vocab(rng)
    refs = {str(i): [_sentence(rng, words) for _ in range(5)] for i in range(n)}
    preds = {}
    for i, r in refs.items():  # a prediction shares words with its references
        base = rng.choice(r).rstrip(".!").split()
        for _ in range(rng.randint(1, 4)):
            base[rng.randrange(len(base))] = rng.choice(words)
        preds[i] = " ".join(base) + "."
    return preds, refs


def pycocoevalcap_scores(preds: dict, refs: dict, meteor) -> tuple[dict, dict]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in refs[i]] for i in refs})
    res = tok.tokenize({i: [{"caption": preds[i]}] for i in preds})
    corpus, per = {}, {}
    for scorer, names in ((Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]), (meteor, ["METEOR"]),
                          (Rouge(), ["ROUGE_L"]), (Cider(), ["CIDEr"])):
        score, scores = scorer.compute_score(gts, res)
        if len(names) == 1:
            score, scores = [score], [scores]
        for name, s, ss in zip(names, score, scores, strict=True):
            corpus[name] = s
            per[name] = dict(zip(gts.keys(), ss, strict=True))
    return corpus, per


# ---------------------------------------------------------------- VQA

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five"]


def vqa_data(n: int, seed: int = 0):
    rng = random.Random(seed)
    answers = ["yes", "no", "red", "blue", "white", "2", "3", "dog", "cat", "pizza", "tennis", "baseball", "kitchen",
               "left", "wood", "frisbee", "giraffe", "umbrella", "skateboarding", "black and white"]

    def typed(a: str) -> str:  # how a human may type answer a
        r = rng.random()
        if r < 0.1:
            return a.capitalize()
        if r < 0.15:
            return a + "."
        if r < 0.2 and a.isdigit() and int(a) < len(NUMBER_WORDS):
            return NUMBER_WORDS[int(a)]
        if r < 0.23:
            return "the " + a
        return a

    data = []
    for _ in range(n):
        main = rng.choice(answers)
        gts = [typed(main if rng.random() < 0.7 else rng.choice(answers)) for _ in range(10)]
        pred = typed(main if rng.random() < 0.6 else rng.choice(answers))
        data.append((pred, gts))
    return data


def official_style(prediction: str, answers: list[str]) -> float:
    """The per-question body of vqaEval.evaluate(), written in its structure (no caching), with the official
    normalisation functions."""
    from vlmtune.eval.metrics.vqa import _process_digit_article, _process_punctuation

    res = prediction.replace("\n", " ").replace("\t", " ").strip()
    gts = [{"answer": a.replace("\n", " ").replace("\t", " ").strip(), "answer_id": k} for k, a in enumerate(answers)]
    if len({g["answer"] for g in gts}) > 1:
        for g in gts:
            g["answer"] = _process_digit_article(_process_punctuation(g["answer"]))
        res = _process_digit_article(_process_punctuation(res))
    accs = []
    for g in gts:
        others = [o for o in gts if o is not g]
        matching = [o for o in others if o["answer"] == res]
        accs.append(min(1.0, len(matching) / 3))
    return sum(accs) / len(accs)


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--questions", type=int, default=100_000)
    a = ap.parse_args()

    from pycocoevalcap.meteor.meteor import Meteor

    from vlmtune.eval.metrics.caption import _english_meteor, caption_metrics
    from vlmtune.eval.metrics.vqa import normalize_answer, vqa_accuracy

    preds, refs = caption_data(a.images)
    # Meteor's JVM start (~10 s: its paraphrase table) is paid before timing, by both sides
    warm = ({"0": ["a dog runs"]}, {"0": ["a dog"]})  # the first request waits for the table to load
    meteor = Meteor()
    meteor.compute_score(*warm)
    _english_meteor().compute_score(*warm)
    (ref_corpus, ref_per), t_ref = timed(pycocoevalcap_scores, preds, refs, meteor)
    rows = [("pycocoevalcap (PTBTokenizer + Bleu, Meteor, Rouge, Cider)", t_ref)]
    for backend in ("java", "python"):
        kept = ("Bleu", "METEOR", "ROUGE_L", "CIDEr")
        res, t = timed(caption_metrics, preds, refs, "en", backend, kept)
        for name, value in ref_corpus.items():
            assert abs(res["corpus"][name] - value) <= 1e-9, (backend, name, res["corpus"][name], value)
            for i, v in ref_per[name].items():
                assert abs(res["per_sample"][i][name] - v) <= 1e-9, (backend, name, i)
        rows.append((f"vlmtune caption_metrics(tokenizer={backend!r})", t))
    print(f"### Captioning: {a.images:,} images x 5 references (corpus CIDEr {ref_corpus['CIDEr']:.6f}, "
          f"BLEU-4 {ref_corpus['Bleu_4']:.6f}, METEOR {ref_corpus['METEOR']:.6f}; all equal to 1e-9)\n")
    print("| scorer | seconds | time vs pycocoevalcap |\n| --- | --- | --- |")
    for name, t in rows:
        print(f"| {name} | {t:.1f} | {t / t_ref:.2f}x |")

    data = vqa_data(a.questions)
    official, t_off = timed(lambda: [official_style(p, g) for p, g in data])
    normalize_answer.cache_clear()
    ours, t_ours = timed(lambda: [vqa_accuracy(p, g) for p, g in data])
    assert ours == official, "per-question accuracies differ"
    acc = 100 * sum(ours) / len(ours)
    print(f"\n### VQA accuracy: {a.questions:,} questions x 10 answers (accuracy {acc:.2f}, identical per question)\n")
    print("| scorer | seconds | questions/s | time vs official-style loop |\n| --- | --- | --- | --- |")
    for name, t in (("official-style loop (vqaEval.evaluate structure)", t_off), ("vlmtune vqa_accuracy", t_ours)):
        print(f"| {name} | {t:.2f} | {a.questions / t:,.0f} | {t / t_off:.2f}x |")


if __name__ == "__main__":
    main()
