"""`vlmtune data ...`: create, import, convert, check and enrich datasets (data/).

    vlmtune data synth fashion --out data/fashion --n 3000 --seed 0
    vlmtune data import vizwiz vizwiz/ --out data/vizwiz
    vlmtune data check data/vizwiz --model runs/base --max-length 1024
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from vlmtune.cli.flags import add_config_flags, add_device_args
from vlmtune.cli.run import build_predictor
from vlmtune.config import MAX_PROMPT_LENGTH, OcrCfg
from vlmtune.data.attributes import generate_vqa
from vlmtune.data.dataset import synthesize
from vlmtune.data.formats import FORMATS, export_dataset, get_format, import_dataset
from vlmtune.data.lint import check_dataset, parse_size, show_mask, summary, write_report
from vlmtune.data.ocr import enrich_dataset
from vlmtune.data.standin import JOBS, write_standin
from vlmtune.data.stats import dataset_stats, parse_ratios, split_dataset
from vlmtune.data.translate import translate_dataset
from vlmtune.eval.autolabel import autolabel
from vlmtune.eval.metrics import METRICS
from vlmtune.eval.pairs import FALLBACKS, make_pairs
from vlmtune.runs import image_token_report, model_video_options, resolve_model, resolve_model_dir


def cmd_data_synth(a) -> dict:
    questions = a.questions.split(",") if a.questions else None
    counts = synthesize(a.out, a.world, a.n, a.seed, a.size, a.caption_fraction, a.val, a.test, questions,
                        a.caption_turn)
    return {"out": str(a.out), "world": a.world, "splits": counts}


def cmd_data_standin(a) -> dict:
    return write_standin(a.job, a.out, a.n, a.seed, a.size)


def cmd_data_import(a) -> dict:
    options = {}
    for item in a.option or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--option {item!r}: expected NAME=VALUE")
        options[name] = value
    return import_dataset(get_format(a.format), a.src, a.out, a.images, skip_bad=a.skip_bad, options=options)


def cmd_data_export(a) -> dict:
    return export_dataset(get_format(a.format), a.dir, a.out, split=a.split)


def cmd_data_check(a) -> dict:
    if a.image_size and not a.model:
        raise ValueError("data check --image-size needs --model (a run, checkpoint or model directory, or a hub id)")
    if a.dir is None:
        if not a.image_size:
            raise ValueError("data check: give a dataset directory, or --model with --image-size WxH")
        report = image_token_report(a.model, [parse_size(s) for s in a.image_size])
        for size, n in report["image_tokens"].items():
            print(f"{report['family']}: one {size} image takes {n} tokens", file=sys.stderr)
        return report
    limit = {} if a.max_text_chars is None else {"max_text_chars": a.max_text_chars}
    report = check_dataset(a.dir, *resolve_model(a.model), a.max_length, model_name=a.model,
                           video=model_video_options(a.model) if a.model else None, **limit)
    if a.image_size:
        report["image_tokens"] = image_token_report(a.model, [parse_size(s) for s in a.image_size])["image_tokens"]
    out = Path(a.out) if a.out else Path(a.dir) / "check_report.json"
    write_report(report, out)
    print(summary(report) + f"\nreport: {out}", file=sys.stderr)
    return {k: v for k, v in report.items() if k not in ("errors", "warnings")} | {"report": str(out)}


def cmd_data_vqa_from_attributes(a) -> dict:
    report = generate_vqa(a.table, a.images, a.templates, a.out, langs=a.langs, balance=a.balance,
                          min_count=a.min_count, seed=a.seed, val=a.val, test=a.test, skip_bad=a.skip_bad,
                          sheet=a.sheet)
    return {k: report[k] for k in ("out", "languages", "samples", "images", "splits", "rare", "rejected")}


def cmd_data_split(a) -> dict:
    return split_dataset(a.dir, parse_ratios(a.ratios), by=a.by, seed=a.seed)


def cmd_data_stats(a) -> dict:
    return dataset_stats(a.dir)


def cmd_data_ocr(a) -> dict:
    given = {f.name: getattr(a, f.name) for f in dataclasses.fields(OcrCfg)}
    opts = OcrCfg(**given | {"template": a.template.replace("\\n", "\n")})
    return enrich_dataset(a.dir, opts, out=a.out, skip_bad=a.skip_bad)


def cmd_data_show_mask(a) -> dict:
    shown = show_mask(a.dir, *resolve_model(a.model), a.n, a.split)
    for s in shown:
        print(f"== {s['id']} ({s['split']}): {s['tokens']} tokens, {s['trained_tokens']} trained ==\n{s['text']}\n")
    return {"samples": [{k: s[k] for k in ("id", "tokens", "trained_tokens", "trained_text")} for s in shown]}


def cmd_data_translate(a) -> dict:
    return translate_dataset(a.dir, a.to, a.model, src=a.src, out=a.out, fields=a.fields, batch_size=a.batch_size,
                             progress=True)


def cmd_data_autolabel(a) -> dict:
    return autolabel(build_predictor(a), a.model, a.src, a.task, out=a.out, prompt=a.prompt, questions=a.questions,
                     progress=True, model_dir=resolve_model_dir(a.model))


def cmd_data_pairs(a) -> dict:
    return make_pairs(build_predictor(a), a.model, a.src, a.metric, out=a.out, k=a.samples,
                      temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, split=a.split, threshold=a.threshold,
                      fallback=a.fallback, seed=a.seed, progress=True, model_dir=resolve_model_dir(a.model))


def add_parsers(sub) -> None:
    ex = argparse.RawDescriptionHelpFormatter
    d = sub.add_parser("data", help="create, import and check datasets")
    dsub = d.add_subparsers(dest="data_verb", required=True)
    s = dsub.add_parser("synth", help="draw a synthetic world with known answers", formatter_class=ex,
                        epilog="example: vlmtune data synth fashion --out data/fashion --n 3000 --seed 0")
    s.add_argument("world", choices=["fashion", "shapes", "charts", "video"])
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--caption-fraction", type=float, default=0.0)
    s.add_argument("--questions", default=None, help="comma-separated question types (default: all of the world's)")
    s.add_argument("--caption-turn", action="store_true",
                   help="follow each train-split question with a caption turn (val/test keep the question alone)")
    s.add_argument("--val", type=float, default=0.1, help="fraction in the val split")
    s.add_argument("--test", type=float, default=0.1, help="fraction in the test split")
    s.set_defaults(fn=cmd_data_synth)

    si = dsub.add_parser("standin", help="write drawn stand-in data in the raw format a recipe starts from",
                         formatter_class=ex, epilog="jobs: " + ", ".join(JOBS) + "\nexample: vlmtune data standin "
                         "vizwiz --out raw/vizwiz --n 600; then: vlmtune data import vizwiz raw/vizwiz --out data/vw")
    si.add_argument("job", choices=sorted(JOBS))
    si.add_argument("--out", required=True, help="a new directory")
    si.add_argument("--n", type=int, default=600, help="number of photos")
    si.add_argument("--seed", type=int, default=0)
    si.add_argument("--size", type=int, default=None, help="image side in pixels (default: the job's)")
    si.set_defaults(fn=cmd_data_standin)

    formats = "\n".join(f"  {k:12s} {v}" for k, v in FORMATS.items())
    im = dsub.add_parser("import", help="convert an outside dataset into a vlmtune dataset", formatter_class=ex,
                         epilog=f"formats:\n{formats}\n\nexample: vlmtune data import vizwiz vizwiz/ --out data/vizwiz"
                                "\nan interrupted import continues where it stopped when run again")
    im.add_argument("format", choices=sorted(FORMATS), metavar="FORMAT")
    im.add_argument("src", help="the source file or directory")
    im.add_argument("--out", required=True, help="new dataset directory")
    im.add_argument("--images", default=None, help="directory the source's image paths are relative to")
    im.add_argument("--skip-bad", action="store_true", help="skip bad records (listed in OUT/rejected.jsonl)")
    im.add_argument("--option", action="append", metavar="NAME=VALUE",
                    help="a format's import option, e.g. vlfeedback's pairs=all (repeatable)")
    im.set_defaults(fn=cmd_data_import)
    ex_ = dsub.add_parser("export", help="write a vlmtune dataset in an outside format", formatter_class=ex,
                          epilog=f"formats:\n{formats}\n\nexample: vlmtune data export llava data/vizwiz --out llava/")
    ex_.add_argument("format", choices=sorted(FORMATS), metavar="FORMAT")
    ex_.add_argument("dir", help="vlmtune dataset directory")
    ex_.add_argument("--out", required=True, help="new directory to write (never overwritten)")
    ex_.add_argument("--split", default=None, help="only this split (default: every sample)")
    ex_.set_defaults(fn=cmd_data_export)

    ck = dsub.add_parser("check", help="check a dataset (and its fit to a model) before training", formatter_class=ex,
                         epilog="examples:\n  vlmtune data check data/vizwiz --model runs/base --max-length 1024"
                                "   (exit status 1 when errors are found)\n"
                                "  vlmtune data check --model runs/my_run --image-size 336x336 --image-size 1280x960"
                                "   (image tokens per image of each size)")
    ck.add_argument("dir", nargs="?", default=None, help="vlmtune dataset directory")
    ck.add_argument("--model", default=None,
                    help="a family name (what it can take), or a run/checkpoint/model directory or hub id "
                         "(also token lengths; a hub id fetches only config and processor files)")
    ck.add_argument("--max-length", type=int, default=None, help="report samples longer than this (tokens)")
    ck.add_argument("--max-text-chars", type=int, default=None,
                    help="report texts longer than this many characters (default: data.max_text_chars's, 100000)")
    ck.add_argument("--out", default=None, help="JSON report path (default: DIR/check_report.json)")
    ck.add_argument("--image-size", action="append", default=[], metavar="WxH",
                    help="report the image tokens one image of this size takes (repeatable)")
    ck.set_defaults(fn=cmd_data_check)

    va = dsub.add_parser("vqa-from-attributes", formatter_class=ex,
                         help="generate VQA from a table of per-image attributes and question templates",
                         epilog="example: vlmtune data vqa-from-attributes catalogue.xlsx --images photos/ "
                                "--templates templates.yaml --out data/catalogue-vqa --balance cap:3\n"
                                "see docs/data.md for the templates file (questions per language, answer translations)")
    va.add_argument("table", help="CSV or XLSX: one row per image, one column per attribute")
    va.add_argument("--images", required=True, help="directory the table's image paths are relative to")
    va.add_argument("--templates", required=True, help="YAML: questions (per language) and answer translations")
    va.add_argument("--out", required=True, help="new dataset directory")
    va.add_argument("--langs", default=None, help="comma-separated languages (default: the templates' languages)")
    va.add_argument("--balance", default=None, metavar="cap:K",
                    help="train split: no answer more than K times as frequent as the rarest (per attribute)")
    va.add_argument("--min-count", type=int, default=20, help="report values seen in fewer rows as too rare")
    va.add_argument("--seed", type=int, default=0)
    va.add_argument("--val", type=float, default=0.1)
    va.add_argument("--test", type=float, default=0.1)
    va.add_argument("--sheet", default=None, help="XLSX sheet (default: the first)")
    va.add_argument("--skip-bad", action="store_true", help="skip bad rows (listed in OUT/rejected.jsonl)")
    va.set_defaults(fn=cmd_data_vqa_from_attributes)

    sp = dsub.add_parser("split", help="assign train/val/test splits, never one image in two", formatter_class=ex,
                         epilog="example: vlmtune data split data/catalogue --by image --ratios 0.8,0.1,0.1")
    sp.add_argument("dir", help="vlmtune dataset directory (its manifest is rewritten)")
    sp.add_argument("--by", choices=["image", "sample"], default="image",
                    help="image: samples sharing an image (by content) stay together (default)")
    sp.add_argument("--ratios", default="0.8,0.1,0.1", help="train,val,test shares (default 0.8,0.1,0.1)")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(fn=cmd_data_split)
    st = dsub.add_parser("stats", help="counts that describe a dataset (splits, tasks, answers, image sizes)")
    st.add_argument("dir", help="vlmtune dataset directory")
    st.set_defaults(fn=cmd_data_stats)
    sm = dsub.add_parser("show-mask", help="print samples with the tokens the model is trained on marked",
                         formatter_class=ex,
                         epilog="example: vlmtune data show-mask data/vizwiz --model runs/base --n 3\n"
                                "trained tokens are in [[double brackets]]; an image's tokens show as <image xN>")
    sm.add_argument("dir", help="vlmtune dataset directory")
    sm.add_argument("--model", required=True, help="a model/run directory, or a family name (its test processor)")
    sm.add_argument("--n", type=int, default=3)
    sm.add_argument("--split", default=None)
    sm.set_defaults(fn=cmd_data_show_mask)

    tr = dsub.add_parser("translate", help="translate a dataset's text with a translation model (original kept)",
                         formatter_class=ex,
                         epilog="examples:\n  vlmtune data translate data/vizwiz --to ru "
                                "--model Helsinki-NLP/opus-mt-en-ru   (-> data/vizwiz-ru)\n"
                                "  vlmtune data translate data/flickr30k --to ru "
                                "--model facebook/nllb-200-distilled-600M --fields references\n"
                                "translations are cached in DIR/.cache/translate: an interrupted run continues, a "
                                "repeated one costs nothing\nsee docs/translate-autolabel.md")
    tr.add_argument("dir", help="vlmtune dataset directory")
    tr.add_argument("--to", required=True, help="target language: en, ru, pt, ... or an NLLB code (rus_Cyrl)")
    tr.add_argument("--from", dest="src", default="en", help="source language (default en)")
    tr.add_argument("--model", required=True, help="Marian or NLLB model: hub id or directory")
    tr.add_argument("--out", default=None, help="new dataset directory (default: DIR-<to> beside DIR)")
    tr.add_argument("--fields", default="prompts,answers,references",
                    help="what to translate: prompts (user/system turns), answers (assistant turns + answers), "
                         "references (default: all three)")
    tr.add_argument("--batch-size", type=int, default=16)
    tr.set_defaults(fn=cmd_data_translate)

    al = dsub.add_parser("autolabel", help="caption or answer questions about unlabelled images with a model",
                         formatter_class=ex,
                         epilog="examples:\n  vlmtune data autolabel photos/ --model runs/x --task caption "
                                "--out data/photos-captions\n"
                                "  vlmtune data autolabel photos/ --model runs/x --task vqa --questions q.txt\n"
                                "  torchrun --nproc_per_node 4 -m vlmtune.cli data autolabel photos/ --model runs/x "
                                "--task caption   (sharded)\n"
                                "an interrupted run continues where it stopped; empty/garbage generations are listed in"
                                " OUT/flagged.jsonl\nsee docs/translate-autolabel.md")
    al.add_argument("src", help="a folder of images, or a vlmtune dataset whose samples lack targets")
    al.add_argument("--model", required=True, help="a run directory (its best checkpoint), checkpoint or model dir")
    al.add_argument("--task", required=True, choices=["caption", "vqa"])
    al.add_argument("--prompt", default=None,
                    help="caption on a folder: the instruction (default 'Write a short caption for the image.'); "
                         "otherwise a template with {question} used for generation")
    al.add_argument("--questions", default=None, help="vqa on a folder: a text file, one question per line")
    al.add_argument("--out", default=None, help="new dataset directory (default: SRC-autolabel beside SRC)")
    al.add_argument("--batch-size", type=int, default=16)
    al.add_argument("--max-new-tokens", type=int, default=32)
    al.add_argument("--num-beams", type=int, default=1)
    al.add_argument("--max-length", type=int, default=None,
                    help="prompt limit, image tokens included (default: the run's data.max_length, at least "
                         f"{MAX_PROMPT_LENGTH})")
    add_device_args(al)
    al.set_defaults(fn=cmd_data_autolabel)

    pr = dsub.add_parser("pairs", help="DPO pairs from a model's own right and wrong sampled answers",
                         formatter_class=ex,
                         epilog="examples:\n  vlmtune data pairs data/charts --model runs/chart-sft --samples 8 "
                                "--temperature 1.0 --metric relaxed_accuracy --out data/charts-pairs --split train\n"
                                "  torchrun --nproc_per_node 4 -m vlmtune.cli data pairs data/charts --model runs/x "
                                "--metric vqa_accuracy   (sharded)\n"
                                "chosen: the most frequent answer scoring >= --threshold, rejected: the most frequent "
                                "one below it;\nan interrupted run continues where it stopped; then train with "
                                "train.method: dpo\nsee docs/preference.md")
    pr.add_argument("src", help="a vlmtune dataset whose samples have gold answers")
    pr.add_argument("--model", required=True, help="a run directory (its best checkpoint), checkpoint or model dir")
    pr.add_argument("--metric", required=True, choices=sorted(METRICS), help="scores each sampled answer")
    pr.add_argument("--samples", type=int, default=8, help="answers sampled per prompt (default 8)")
    pr.add_argument("--temperature", type=float, default=1.0)
    pr.add_argument("--top-p", type=float, default=1.0)
    pr.add_argument("--top-k", type=int, default=None, help="default: the model's generation config's; 0 is off")
    pr.add_argument("--threshold", type=float, default=1.0, help="an answer scoring >= this is right (default 1.0)")
    pr.add_argument("--fallback", choices=FALLBACKS, default="gold",
                    help="no sampled answer right: gold = the sample's own target is chosen (default), skip = no pair")
    pr.add_argument("--split", default=None, help="only this split's samples (default: all)")
    pr.add_argument("--seed", type=int, default=0, help="sampling seed; each prompt's answers by (seed, sample id)")
    pr.add_argument("--out", default=None, help="new dataset directory (default: SRC-pairs beside SRC)")
    pr.add_argument("--batch-size", type=int, default=16)
    pr.add_argument("--max-new-tokens", type=int, default=32)
    pr.add_argument("--max-length", type=int, default=None,
                    help="prompt limit, image tokens included (default: the run's data.max_length, at least "
                         f"{MAX_PROMPT_LENGTH})")
    add_device_args(pr)
    pr.set_defaults(fn=cmd_data_pairs, num_beams=1)

    oc = dsub.add_parser("ocr", help="read the text in every image with tesseract (into a prompt copy, or meta)",
                         formatter_class=ex,
                         epilog="examples:\n  vlmtune data ocr data/memes --langs rus+eng --into meta  "
                                "(meta['ocr'] added in place)\n"
                                "  vlmtune data ocr data/shop --langs por+eng --into prompt --out data/shop-ocr\n"
                                "put the data's main language first; `make ocr` installs tesseract (eng, rus, por);"
                                "\nresults are cached in DIR/.cache/ocr, so a second run reads no image again")
    oc.add_argument("dir", help="vlmtune dataset directory")
    # every OcrCfg field is a flag with the field's default (one default each: `data.ocr: {}` of a run reads the same)
    add_config_flags(oc, OcrCfg, extra={"into": {"note": "prompt needs --out."},
                                        "template": {"note": "On the command line \\n is a line break."}})
    oc.add_argument("--out", default=None, help="write an enriched copy here (required for --into prompt)")
    oc.add_argument("--skip-bad", action="store_true", help="skip samples whose image cannot be read")
    oc.set_defaults(fn=cmd_data_ocr)
