"""`vlmtune <verb>`: subcommand -> function. Results are printed as JSON on the last stdout line.

    vlmtune data synth fashion --out data/fashion --n 3000 --seed 0
    vlmtune train --config configs/builtin/tiny_fashion_vqa.yaml [--train.lr 1e-3 ...]
    vlmtune eval --model runs/tiny_fashion_vqa --data data/fashion --split test
    vlmtune predict --model runs/tiny_fashion_vqa --data data/fashion --split test --out preds.jsonl
    vlmtune models
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _emit(result: dict | None) -> None:
    # None: the command printed its own output (models --markdown); several processes (torchrun / accelerate
    # launch set RANK): the result once, from rank 0 (training may have ended the process group by now)
    if result is not None and int(os.environ.get("RANK", 0)) == 0:
        # backslashreplace: a lone surrogate (a manifest's "\udcff" escape kept as a split or task name) is written
        # as that escape, which is valid JSON giving the same string back; a UTF-8 stdout could not print it
        print(json.dumps(result, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8"))


def cmd_data_synth(a) -> dict:
    from vlmtune.data.dataset import synthesize

    questions = a.questions.split(",") if a.questions else None
    counts = synthesize(a.out, a.world, a.n, a.seed, a.size, a.caption_fraction, a.val, a.test, questions,
                        a.caption_turn)
    return {"out": str(a.out), "world": a.world, "splits": counts}


def cmd_data_standin(a) -> dict:
    from vlmtune.data.standin import write_standin

    return write_standin(a.job, a.out, a.n, a.seed, a.size)


def cmd_data_import(a) -> dict:
    from vlmtune.data.formats import get_format, import_dataset

    return import_dataset(get_format(a.format), a.src, a.out, a.images, skip_bad=a.skip_bad)


def cmd_data_export(a) -> dict:
    from vlmtune.data.formats import export_dataset, get_format

    return export_dataset(get_format(a.format), a.dir, a.out, split=a.split)


def cmd_data_check(a) -> dict:
    from vlmtune.data.lint import check_dataset, parse_size, summary, write_report
    from vlmtune.runs import image_token_report, resolve_model

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
    report = check_dataset(a.dir, *resolve_model(a.model), a.max_length, model_name=a.model, **limit)
    if a.image_size:
        report["image_tokens"] = image_token_report(a.model, [parse_size(s) for s in a.image_size])["image_tokens"]
    out = Path(a.out) if a.out else Path(a.dir) / "check_report.json"
    write_report(report, out)
    print(summary(report) + f"\nreport: {out}", file=sys.stderr)
    return {k: v for k, v in report.items() if k not in ("errors", "warnings")} | {"report": str(out)}


def cmd_data_vqa_from_attributes(a) -> dict:
    from vlmtune.data.attributes import generate_vqa

    report = generate_vqa(a.table, a.images, a.templates, a.out, langs=a.langs, balance=a.balance,
                          min_count=a.min_count, seed=a.seed, val=a.val, test=a.test, skip_bad=a.skip_bad,
                          sheet=a.sheet)
    return {k: report[k] for k in ("out", "languages", "samples", "images", "splits", "rare", "rejected")}


def cmd_data_split(a) -> dict:
    from vlmtune.data.stats import parse_ratios, split_dataset

    return split_dataset(a.dir, parse_ratios(a.ratios), by=a.by, seed=a.seed)


def cmd_data_stats(a) -> dict:
    from vlmtune.data.stats import dataset_stats

    return dataset_stats(a.dir)


def cmd_data_ocr(a) -> dict:
    from vlmtune.config import OcrCfg
    from vlmtune.data.ocr import enrich_dataset

    opts = OcrCfg(langs=a.langs, psm=a.psm, into=a.into, template=a.template.replace("\\n", "\n"),
                  max_chars=a.max_chars, min_conf=a.min_conf, timeout_s=a.timeout_s)
    return enrich_dataset(a.dir, opts, out=a.out, skip_bad=a.skip_bad)


def cmd_data_show_mask(a) -> dict:
    from vlmtune.data.lint import show_mask
    from vlmtune.runs import resolve_model

    shown = show_mask(a.dir, *resolve_model(a.model), a.n, a.split)
    for s in shown:
        print(f"== {s['id']} ({s['split']}): {s['tokens']} tokens, {s['trained_tokens']} trained ==\n{s['text']}\n")
    return {"samples": [{k: s[k] for k in ("id", "tokens", "trained_tokens", "trained_text")} for s in shown]}


def cmd_data_translate(a) -> dict:
    from vlmtune.data.translate import translate_dataset

    return translate_dataset(a.dir, a.to, a.model, src=a.src, out=a.out, fields=a.fields, batch_size=a.batch_size,
                             progress=True)


def cmd_data_autolabel(a) -> dict:
    from vlmtune.data.autolabel import autolabel
    from vlmtune.runs import resolve_model_dir

    return autolabel(_predictor(a), a.model, a.src, a.task, out=a.out, prompt=a.prompt, questions=a.questions,
                     progress=True, model_dir=resolve_model_dir(a.model))


def cmd_serve(a) -> dict | None:
    import dataclasses

    from vlmtune.config import ServeCfg
    from vlmtune.serve import serve

    fields = {f.name for f in dataclasses.fields(ServeCfg)}
    cfg = ServeCfg(**{k: v for k, v in vars(a).items() if k in fields and v is not None})
    serve(a.model, cfg, a.index)
    return None


def cmd_train(a, overrides: list[str]) -> dict:
    from vlmtune.config import RunCfg
    from vlmtune.train.loop import train

    cfg = RunCfg.from_file(a.config, overrides)
    return train(cfg)


def _eval_samples(a, out_dir: Path):
    """The samples to evaluate; with --skip-bad, bad records are listed in OUT_DIR/rejected.jsonl."""
    from vlmtune.data.dataset import load_split
    from vlmtune.runs import model_ocr_options

    rejected = out_dir / "rejected.jsonl" if a.skip_bad else None
    if rejected:
        rejected.unlink(missing_ok=True)  # this evaluation's list (load_split adds to the file)
    ocr = model_ocr_options(a.model)  # a run trained with data.ocr is evaluated on the same enriched prompts
    if ocr:
        print(f"the model's run was trained with OCR enrichment: applying it (langs {ocr.langs}, into {ocr.into})",
              file=sys.stderr)
    return load_split(Path(a.data), a.split, a.skip_bad, rejected, ocr, limit=a.limit)


def _run_defaults(a) -> None:
    """Generation settings not given on the command line come from the run's own eval section (a run trained to
    write 100-token captions is not cut at 16 tokens by `vlmtune eval --model RUN`), else from the CLI defaults."""
    from vlmtune.config import EvalCfg
    from vlmtune.runs import run_config_of
    from vlmtune.train.checks import check_run

    cfg = run_config_of(a.model)
    if cfg is not None:
        check_run(cfg)  # a run read back is refused as `vlmtune train` refuses its config
    e = cfg.eval if cfg is not None else None
    for key, fallback in (("max_new_tokens", EvalCfg.max_new_tokens), ("num_beams", 1)):
        if getattr(a, key) is None:
            setattr(a, key, getattr(e, key) if e is not None else fallback)
    if getattr(a, "max_length", 0) is None:  # a prompt the run trained with fits; a Pix2Struct one is 2048 patches+
        a.max_length = max(cfg.data.max_length, 4096) if cfg is not None else 4096
    if hasattr(a, "lang") and a.lang is None and e is not None:
        a.lang = e.lang


def _predictor(a, samples=None):
    """The Predictor of --model with the generation settings of `_run_defaults`; `max_new_tokens` auto is sized from
    `samples`' gold texts with the model's tokenizer (`auto_max_new_tokens`)."""
    import dataclasses

    from vlmtune.eval.runner import auto_max_new_tokens
    from vlmtune.infer import Predictor
    from vlmtune.train.distributed import join_processes

    _run_defaults(a)
    device = join_processes()  # under torchrun / accelerate launch: one process group, each process its share
    auto = a.max_new_tokens == "auto"
    p = Predictor.from_path(a.model, device=device if device is not None else a.device, dtype=a.dtype,
                            batch_size=a.batch_size, num_beams=a.num_beams, max_length=a.max_length,
                            **({} if auto else {"max_new_tokens": a.max_new_tokens}))
    if auto:
        cap, how = auto_max_new_tokens(p.loaded.processor.tokenizer, samples or [])
        print(how, file=sys.stderr)
        p = dataclasses.replace(p, max_new_tokens=cap)
    return p


def _task_options(a) -> dict:
    return {"vqa_variant": a.vqa_variant, "anls_variant": a.anls_variant, "lang": a.lang}


def _samples_task(samples) -> str:
    """The task the samples themselves name when they all name one that exists (caption data is scored as captions
    without --task), else vqa."""
    from vlmtune.eval.tasks import TASKS

    tasks = {s.task for s in samples}
    return tasks.pop() if len(tasks) == 1 and next(iter(tasks)) in TASKS else "vqa"


def cmd_eval(a) -> dict:
    from vlmtune.eval.runner import evaluate
    from vlmtune.eval.tasks import get_task

    if a.eval_verb == "score":
        return cmd_eval_score(a)
    if a.eval_verb == "compare":
        return cmd_eval_compare(a)
    if not a.model or not a.data:
        raise ValueError("eval: --model and --data are required (or: vlmtune eval score / vlmtune eval compare)")
    _run_defaults(a)  # before the task options read a.lang
    out = Path(a.out) if a.out else Path(a.model) / "eval" / (a.split or "all")
    samples = _eval_samples(a, out)
    a.task = a.task or _samples_task(samples)
    metrics = evaluate(_predictor(a, samples), a.data, samples, get_task(a.task), out, progress=True, prompt=a.prompt,
                       submission=a.submission, **_task_options(a))
    if a.report:
        from vlmtune.eval.analysis import write_analysis

        page, _ = write_analysis({"model": out / "predictions.jsonl"}, out / "analysis.html", data=a.data,
                                 task=a.task)
        metrics["report"] = str(page)
    print(f"wrote {out}/metrics.json and {out}/predictions.jsonl", file=sys.stderr)
    return metrics


def cmd_eval_score(a) -> dict:
    from vlmtune.eval.score import score_file

    return score_file(a.predictions, a.task, a.out, **_task_options(a))


def cmd_eval_compare(a) -> dict:
    from vlmtune.eval.analysis import compare_files

    return compare_files(a.predictions, a.out, data=a.data, task=a.task, names=a.names)


def cmd_predict(a) -> dict:
    from vlmtune.eval.runner import length_limited, predict, write_submission

    out = Path(a.out)
    _run_defaults(a)  # the run read back and checked before its data is
    samples = _eval_samples(a, out.parent)
    rows = predict(_predictor(a, samples), a.data, samples, out, progress=True)
    result = {"out": str(out), "n": len(rows), **length_limited(rows)}
    if a.submission:
        paths = [str(write_submission(rows, out.parent, kind)) for kind in dict.fromkeys(a.submission)]
        result["submission"] = paths[0] if len(paths) == 1 else paths
    return result


def cmd_demo(a) -> dict:
    from vlmtune.demo import run

    return run(a.out, quick=a.quick, seed=a.seed)


def cmd_export(a) -> dict:
    from vlmtune.export import export

    return export(a.model, a.out, merge=a.merge)


def cmd_compose(a) -> dict:
    from vlmtune.models.compose import compose

    return compose(a.vision, a.lm, a.out, projector=a.projector, seed=a.seed)


def cmd_models(a) -> dict | None:
    from vlmtune.models import FAMILIES, support_table

    if a.markdown:
        print(support_table(), end="")
        return None
    rows = {}
    for name, f in FAMILIES.items():
        rows[name] = {"description": f.description, "tasks": list(f.tasks), "lora_targets": list(f.lora_targets),
                      "freeze_groups": sorted(f.freeze_groups), "text_only": f.text_only,
                      "multi_image": f.multi_image}
        print(f"{name:12s} {f.description}", file=sys.stderr)
    return {"families": rows, "builtin": "model.path: builtin (llava family)"}


def _chart_reasoners(a, several: bool) -> list:
    """The reasoning setups named by --reasoner (`chart eval`: a comma list or "all"), over the --llm model."""
    from vlmtune.chart.lm import load_lm
    from vlmtune.chart.reason import SETUPS, build_reasoner

    names = list(SETUPS) if several and a.reasoner == "all" else [n.strip() for n in a.reasoner.split(",")]
    unknown = [n for n in names if n not in SETUPS]
    if unknown or not names or len(set(names)) != len(names) or (len(names) > 1 and not several):
        raise ValueError(f"chart: --reasoner {a.reasoner!r}: " + ("one of " if not several else "a comma list of ")
                         + ", ".join(SETUPS) + (" or all" if several else "") + " (each once)")
    if any(n != "program" for n in names) and not a.llm:
        raise ValueError(f"chart: --reasoner {a.reasoner} needs --llm DIR (a causal LM or a vlmtune model directory)")
    lm = load_lm(a.llm, device=a.device, seed=a.seed) if a.llm and names != ["program"] else None
    return [build_reasoner(n, lm, max_new_tokens=a.llm_max_new_tokens, k=a.sc_k, temperature=a.sc_temperature,
                           sc_prompts=tuple(p.strip() for p in a.sc_prompts.split(",")),
                           time_limit_s=a.pot_time_limit, memory_mb=a.pot_memory_mb,
                           fallback=a.fallback == "program") for n in names]


def cmd_chart_ask(a) -> dict:
    from vlmtune.chart.ask import ask
    from vlmtune.data.images import load_image
    from vlmtune.infer import Predictor

    predictor = Predictor.from_path(a.model, device=a.device, dtype=a.dtype, max_new_tokens=a.max_new_tokens,
                                    max_length=a.max_length)
    result = ask(predictor, load_image(Path(a.image)), a.question, _chart_reasoners(a, several=False)[0])
    print(f"table:\n  {result['table'].replace('<0x0A>', chr(10) + '  ')}\nprogram: {result['program']}\n"
          f"answer: {result['answer']}" + (f"\nerror: {result['error']}" if result["error"] else ""))
    return {"image": a.image, "question": a.question, **result}


def cmd_chart_eval(a) -> dict:
    from vlmtune.chart.ask import evaluate_charts, setups_table
    from vlmtune.infer import Predictor

    if bool(a.model) == a.oracle:
        raise ValueError("chart eval: give --model M (tables written by the model) or --oracle (the true tables)")
    predictor = None if a.oracle else Predictor.from_path(a.model, device=a.device, dtype=a.dtype,
                                                          batch_size=a.batch_size, max_new_tokens=a.max_new_tokens,
                                                          max_length=a.max_length)
    out = Path(a.out) if a.out else Path(a.model or a.data) / ("chart_eval_oracle" if a.oracle else "chart_eval") / (
        a.split or "all")
    metrics = evaluate_charts(predictor, a.data, a.split, out, _chart_reasoners(a, several=True), limit=a.limit,
                              ceiling=a.ceiling, progress=True)
    print(setups_table(metrics) + f"wrote {out}/metrics.json and {out}/predictions.jsonl", file=sys.stderr)
    return metrics


def cmd_chart_tables(a) -> dict:
    from vlmtune.chart.ask import tables_dataset

    return tables_dataset(a.src, a.out)


def cmd_chart_init_model(a) -> dict:
    from vlmtune.chart.model import TinyDeplotCfg, init_model

    cfg = TinyDeplotCfg(vqa=a.vqa, max_patches=a.max_patches, hidden=a.hidden, ff=2 * a.hidden,
                        vision_layers=a.vision_layers, text_layers=a.text_layers)
    return init_model(a.out, cfg, seed=a.seed)


def cmd_chart_init_lm(a) -> dict:
    from vlmtune.chart.lm import init_lm

    return init_lm(a.out, a.source, layers=a.layers, hidden=a.hidden, seed=a.seed)


def cmd_retrieve_train(a) -> dict:
    from vlmtune.retrieval.train import RetrievalTrainCfg, train

    return train(RetrievalTrainCfg.load(
        a.config, model=a.model, data=a.data, out=a.out, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
        weight_decay=a.weight_decay, warmup=a.warmup, eval_every=a.eval_every, freeze=a.freeze,
        train_split=a.train_split, val_split=a.val_split, seed=a.seed))


def cmd_retrieve_eval(a) -> dict:
    from vlmtune.retrieval.encoder import DualEncoder
    from vlmtune.retrieval.evaluate import evaluate, load_gallery

    metrics = evaluate(DualEncoder.load(a.model, a.device), load_gallery(a.data, a.split), a.batch_size)
    print(" ".join(f"{k} {v:.2f}" for k, v in metrics.items() if "@" in k or k == "rsum"), file=sys.stderr)
    return {"model": a.model, "data": a.data, "split": a.split, **metrics}


def cmd_retrieve_index(a) -> dict:
    from vlmtune.retrieval.encoder import DualEncoder
    from vlmtune.retrieval.index import build_index

    return build_index(DualEncoder.load(a.model, a.device), a.catalogue, a.out, a.images, a.batch_size, a.dtype)


def cmd_retrieve_init_model(a) -> dict:
    from vlmtune.retrieval.tiny import build_tiny

    out = build_tiny(a.family, a.out, image_size=a.image_size, seed=a.seed)
    return {"out": str(out), "family": a.family, "image_size": a.image_size}


def cmd_retrieve_search(a) -> dict:
    from vlmtune.retrieval.index import search

    if a.query and a.image:
        raise ValueError("retrieve: give a text query or --image PATH, not both")
    result = search(a.index, " ".join(a.query) or None, a.image, a.k, a.model, a.device)
    for r in result["results"]:
        print(f"{r['rank']:3d}  {r['score']:+.4f}  {r['caption'][:60]:60s}  {r['item_url'] or '-'}  {r['image']}",
              file=sys.stderr)
    return result


RETRIEVE_VERBS = ("train", "eval", "index", "search", "init-model")


def _route_retrieve(argv: list[str]) -> list[str]:
    """`vlmtune retrieve --index DIR "query"` is the search verb: insert it when no other retrieve verb is named."""
    if len(argv) > 1 and argv[0] == "retrieve" and argv[1] not in (*RETRIEVE_VERBS, "-h", "--help"):
        return ["retrieve", "search", *argv[1:]]
    return argv


def _add_device_args(p, dtype: bool = True) -> None:
    """--device (and --dtype): the inference placement policy of every command that loads a model
    (models/device.py). `retrieve` takes --device only: its --dtype is the index's vector dtype."""
    from vlmtune.models.device import DTYPES

    p.add_argument("--device", default="auto",
                   help="auto (default: the GPU when there is one, else MPS, else CPU), cuda, cuda:N, mps or cpu")
    if dtype:
        p.add_argument("--dtype", default=None, choices=DTYPES,
                       help="default: the dtype the run trained in (model.dtype), else the checkpoint's config.json")


def _max_new_tokens(text: str) -> int | str:
    """`--max-new-tokens N|auto`."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {text!r}")
    return n


def _add_model_args(p, required: bool = True) -> None:
    p.add_argument("--model", required=required,
                   help="a run directory (its best checkpoint), checkpoint or HF model dir")
    p.add_argument("--data", required=required, help="dataset directory (manifest.jsonl + images)")
    p.add_argument("--split", default=None, help="split to use (default: every sample)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=_max_new_tokens, default=None, metavar="N|auto",
                   help="default: the run's eval.max_new_tokens, else auto (sized from the data's answers/captions: "
                        "99th percentile of their token counts + 25%%, at least 16)")
    p.add_argument("--num-beams", type=int, default=None, help="default: the run's eval.num_beams, else 1")
    p.add_argument("--max-length", type=int, default=None,
                   help="prompt limit, image tokens included (default: the run's data.max_length, at least 4096)")
    p.add_argument("--limit", type=int, default=None, help="only the first N samples")
    p.add_argument("--skip-bad", action="store_true", help="skip bad records (listed in rejected.jsonl)")
    _add_device_args(p)


def _add_task_args(p) -> None:
    from vlmtune.eval.tasks import TASKS

    p.add_argument("--task", default=None, choices=sorted(TASKS),
                   help="default: the task every sample names (caption, chartqa, ...), or for score/compare the task "
                        "the prediction rows record; vqa when they name none or differ")
    p.add_argument("--vqa-variant", default=None,
                   choices=["official", "evalai", "vizwiz", "lavis_pre2021", "lmms_eval"],
                   help="VQA accuracy as computed by (default) the official GT-Vision-Lab code, or another tool")
    p.add_argument("--anls-variant", default=None, choices=["rrc", "lmms_eval", "pix2struct"],
                   help="ANLS as computed by (default) the RRC DocVQA script, or another tool")
    p.add_argument("--lang", default=None, help="caption language when rows carry none (default en)")


SCORE_HELP = """each line of --predictions is one JSON object:
  vqa        {"id": "1", "prediction": "two", "answers": ["2", "two", ...], "answer_type": "number",
              "question_type": "how many", "answerable": 1}
  caption    {"id": "1", "prediction": "a dog", "references": ["A dog runs.", ...], "lang": "en"}
  chartqa    {"id": "1", "prediction": "14", "target": "14"}
  chart_to_table  {"id": "1", "prediction": "TITLE | t <0x0A> Year | Sales <0x0A> 2019 | 12", "target": "..."}
  docvqa     {"id": "1", "prediction": "Dr. Lobo", "answers": ["Dr. Lobo", "Dear Dr. Lobo"]}
  retrieval  {"id": "img1", "similarity": {"t1": 0.3, "t2": 0.9}, "positives": ["t2"]}
without --task, the rows' own "task" (vlmtune eval and predict write it) picks it, else vqa;
the metrics are printed as JSON on the last line"""


SUBMISSION_HELP = ("also write this official submission file; repeat for several: vqav2, vizwiz (JSON, "
                   "[{image, answer}]), vizwiz-npy (the answers alone as a NumPy array, in the test file's order)")


def build_parser() -> argparse.ArgumentParser:
    ex = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="vlmtune", description=__doc__, formatter_class=ex)
    sub = p.add_subparsers(dest="verb", required=True)

    d = sub.add_parser("data", help="create, import and check datasets")
    dsub = d.add_subparsers(dest="data_verb", required=True)
    s = dsub.add_parser("synth", help="draw a synthetic world with known answers", formatter_class=ex,
                        epilog="example: vlmtune data synth fashion --out data/fashion --n 3000 --seed 0")
    s.add_argument("world", choices=["fashion", "shapes", "charts"])
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

    from vlmtune.data.standin import JOBS

    si = dsub.add_parser("standin", help="write drawn stand-in data in the raw format a recipe starts from",
                         formatter_class=ex, epilog="jobs: " + ", ".join(JOBS) + "\nexample: vlmtune data standin "
                         "vizwiz --out raw/vizwiz --n 600; then: vlmtune data import vizwiz raw/vizwiz --out data/vw")
    si.add_argument("job", choices=sorted(JOBS))
    si.add_argument("--out", required=True, help="a new directory")
    si.add_argument("--n", type=int, default=600, help="number of photos")
    si.add_argument("--seed", type=int, default=0)
    si.add_argument("--size", type=int, default=None, help="image side in pixels (default: the job's)")
    si.set_defaults(fn=cmd_data_standin)

    from vlmtune.data.formats import FORMATS

    formats = "\n".join(f"  {k:12s} {v}" for k, v in FORMATS.items())
    im = dsub.add_parser("import", help="convert an outside dataset into a vlmtune dataset", formatter_class=ex,
                         epilog=f"formats:\n{formats}\n\nexample: vlmtune data import vizwiz vizwiz/ --out data/vizwiz"
                                "\nan interrupted import continues where it stopped when run again")
    im.add_argument("format", choices=sorted(FORMATS), metavar="FORMAT")
    im.add_argument("src", help="the source file or directory")
    im.add_argument("--out", required=True, help="new dataset directory")
    im.add_argument("--images", default=None, help="directory the source's image paths are relative to")
    im.add_argument("--skip-bad", action="store_true", help="skip bad records (listed in OUT/rejected.jsonl)")
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
                    help="prompt limit, image tokens included (default: the run's data.max_length, at least 4096)")
    _add_device_args(al)
    al.set_defaults(fn=cmd_data_autolabel)

    from vlmtune.config import OcrCfg

    ocr = OcrCfg()  # the defaults of data.ocr: one default each
    oc = dsub.add_parser("ocr", help="read the text in every image with tesseract (into a prompt copy, or meta)",
                         formatter_class=ex,
                         epilog="examples:\n  vlmtune data ocr data/memes --langs rus+eng --into meta  "
                                "(meta['ocr'] added in place)\n"
                                "  vlmtune data ocr data/shop --langs por+eng --into prompt --out data/shop-ocr\n"
                                "put the data's main language first; `make ocr` installs tesseract (eng, rus, por);"
                                "\nresults are cached in DIR/.cache/ocr, so a second run reads no image again")
    oc.add_argument("dir", help="vlmtune dataset directory")
    oc.add_argument("--langs", default=ocr.langs, help=f"tesseract languages joined by + (default {ocr.langs})")
    oc.add_argument("--into", choices=["prompt", "meta"], default=ocr.into,
                    help=f"prompt: the first user turn, through --template (needs --out); meta: sample.meta['ocr'] "
                         f"(default {ocr.into})")
    oc.add_argument("--out", default=None, help="write an enriched copy here (required for --into prompt)")
    oc.add_argument("--psm", type=int, default=ocr.psm, help="tesseract page segmentation mode (default 3; 11: sparse)")
    oc.add_argument("--template", default=ocr.template, help=f"\\n is a line break (default {ocr.template!r})")
    oc.add_argument("--max-chars", type=int, default=ocr.max_chars)
    oc.add_argument("--min-conf", type=float, default=ocr.min_conf, help="drop words with a lower confidence (0-100)")
    oc.add_argument("--timeout-s", type=float, default=ocr.timeout_s, help="per image")
    oc.add_argument("--skip-bad", action="store_true", help="skip samples whose image cannot be read")
    oc.set_defaults(fn=cmd_data_ocr)

    t = sub.add_parser("train", help="fine-tune (or train) a model from a YAML config", formatter_class=ex,
                       epilog="example: vlmtune train --config configs/builtin/tiny_fashion_vqa.yaml --train.lr 1e-3\n"
                              "any config key can be overridden as --section.key VALUE")
    t.add_argument("--config", "-c", default=None)
    t.set_defaults(fn=cmd_train)

    from vlmtune.eval.runner import SUBMISSIONS

    e = sub.add_parser("eval", help="generate answers for a dataset and score them; score or compare prediction files",
                       formatter_class=ex,
                       epilog="examples:\n"
                              "  vlmtune eval --model runs/tiny_fashion_vqa --data data/fashion --split test\n"
                              "  vlmtune eval score --task caption --predictions preds.jsonl --out scores/\n"
                              "  vlmtune eval compare base/predictions.jsonl tuned/predictions.jsonl --data data/x "
                              "--out compare.html")
    _add_model_args(e, required=False)
    _add_task_args(e)
    e.add_argument("--out", default=None, help="output directory (default: MODEL/eval/SPLIT)")
    e.add_argument("--prompt", default=None, help='rewrite each question, e.g. "{question}\\nAnswer the question '
                                                  'using a single word or phrase."')
    e.add_argument("--submission", choices=SUBMISSIONS, action="append", default=None,
                   help=SUBMISSION_HELP + " (default: the JSON of the data's source, vqav2 or vizwiz)")
    e.add_argument("--no-report", dest="report", action="store_false", help="do not write analysis.html")
    esub = e.add_subparsers(dest="eval_verb")
    sc = esub.add_parser("score", help="score a predictions JSONL made anywhere (no model is loaded)",
                         formatter_class=ex, epilog=SCORE_HELP)
    _add_task_args(sc)
    sc.add_argument("--predictions", required=True, help="JSONL: id, prediction and answers/references/target")
    sc.add_argument("--out", default=None, help="directory for metrics.json and the scored predictions")
    cp = esub.add_parser("compare", help="error-analysis page of two or more prediction files side by side",
                         formatter_class=ex,
                         epilog="example: vlmtune eval compare runs/base/eval/test/predictions.jsonl "
                                "runs/tuned/eval/test/predictions.jsonl --data data/x --out compare.html")
    _add_task_args(cp)
    cp.add_argument("predictions", nargs="+", help="predictions.jsonl files (the first is the baseline)")
    cp.add_argument("--names", default=None, help="comma-separated column names (default: base,tuned / file names)")
    cp.add_argument("--data", default=None, help="dataset directory, to show the images")
    cp.add_argument("--out", required=True, help="HTML file to write")
    e.set_defaults(fn=cmd_eval)

    pr = sub.add_parser("predict", help="write predictions for a dataset", formatter_class=ex,
                        epilog="example: vlmtune predict --model runs/x --data data/fashion --out preds.jsonl")
    _add_model_args(pr)
    pr.add_argument("--out", required=True, help="predictions JSONL file")
    pr.add_argument("--submission", choices=SUBMISSIONS, action="append", default=None,
                    help=SUBMISSION_HELP + ", beside --out")
    pr.set_defaults(fn=cmd_predict)

    dm = sub.add_parser("demo", help="the offline demo: pretrain, fine-tune naive vs replay, measure forgetting",
                        formatter_class=ex, epilog="example: vlmtune demo            (about 7 minutes on 2 CPU cores)")
    dm.add_argument("--quick", action="store_true", help="a small version (seconds; what the tests run)")
    dm.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    dm.add_argument("--seed", type=int, default=0,
                    help="training seed (weights, order); the drawn data is the same for every seed (default: 0)")
    dm.set_defaults(fn=cmd_demo)

    x = sub.add_parser("export", help="write a run as a standalone Hugging Face model directory", formatter_class=ex,
                       epilog="example: vlmtune export --model runs/my_run --out exported/my_model --merge")
    x.add_argument("--model", required=True, help="run directory (its best checkpoint), checkpoint or model directory")
    x.add_argument("--out", required=True, help="new directory to write (never overwritten)")
    x.add_argument("--merge", action="store_true", help="merge a LoRA adapter into its base (required for adapters)")
    x.set_defaults(fn=cmd_export)

    co = sub.add_parser("compose", help="join a CLIP/SigLIP vision tower and a causal LM into a LLaVA model",
                        formatter_class=ex,
                        epilog="example: vlmtune compose --vision openai/clip-vit-large-patch14-336 "
                               "--lm lmsys/vicuna-7b-v1.5 --projector mlp2x --out models/clip-vicuna")
    co.add_argument("--vision", required=True, help="CLIP or SigLIP checkpoint (hub id or directory)")
    co.add_argument("--lm", required=True, help="causal language model checkpoint (hub id or directory)")
    co.add_argument("--projector", choices=["linear", "mlp2x"], default="mlp2x")
    co.add_argument("--out", required=True, help="new directory to write (never overwritten)")
    co.add_argument("--seed", type=int, default=0, help="seed of the new projector's initialisation")
    co.set_defaults(fn=cmd_compose)

    sv = sub.add_parser("serve", help="serve a model: OpenAI-compatible API + web page", formatter_class=ex,
                        epilog="example: vlmtune serve --model runs/my_run --port 8000 --api-key secret\n"
                               "then: open http://127.0.0.1:8000/ or use any OpenAI client with base_url "
                               "http://127.0.0.1:8000/v1\n"
                               "a shop assistant (answers + catalogue items with links): vlmtune serve --model "
                               "runs/shop-chat --index indexes/shop   (see docs/fashion-retrieval.md)")
    sv.add_argument("--model", required=True, help="a run (its best checkpoint), checkpoint, adapter or model dir")
    sv.add_argument("--index", default=None, metavar="DIR",
                    help="a catalogue index (vlmtune retrieve index): chat answers carry its top-k items and links, "
                         "and POST /v1/retrieve searches it")
    sv.add_argument("--k", dest="retrieve_k", type=int, default=None, metavar="N",
                    help="catalogue items per answer with --index (default 4; a request may ask 0 to 50)")
    sv.add_argument("--max-retrieve-k", type=int, default=None, metavar="N",
                    help="the largest k a request may ask (default 50)")
    sv.add_argument("--host", default=None, help="default 127.0.0.1")
    sv.add_argument("--port", type=int, default=None, help="default 8000")
    sv.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY (an empty key is refused)")
    sv.add_argument("--allowed-hosts", nargs="+", default=None, metavar="HOST",
                    help="Host names served ('*', '*.example.com'); default: --host and localhost (any IP too when "
                         "bound to 0.0.0.0)")
    sv.add_argument("--allowed-origins", nargs="+", default=None, metavar="ORIGIN",
                    help="web origins whose pages may call the API (CORS), e.g. https://app.example.com; default: "
                         "only the server's own page")
    sv.add_argument("--model-name", default=None, help="the id in /v1/models (default: the model directory name)")
    sv.add_argument("--max-batch-size", type=int, default=None, help="requests per generate call (default 8)")
    sv.add_argument("--max-wait-ms", type=float, default=None, help="how long a batch waits to fill (default 10)")
    sv.add_argument("--max-tokens", type=int, default=None, help="largest max_tokens a request may ask (512)")
    sv.add_argument("--max-prompt-tokens", type=int, default=None, help="prompt limit, image tokens included (4096)")
    sv.add_argument("--max-images", type=int, default=None, help="images per request (default 4)")
    sv.add_argument("--max-image-bytes", type=int, default=None)
    sv.add_argument("--max-image-pixels", type=int, default=None)
    sv.add_argument("--max-aspect-ratio", type=float, default=None, help="longest / shortest image side (default 50)")
    sv.add_argument("--max-resized-pixels", type=int, default=None,
                    help="image pixels once the model's processor resizes or pads it (default 40000000)")
    sv.add_argument("--max-body-bytes", type=int, default=None)
    sv.add_argument("--timeout-s", type=float, default=None, help="per-request limit (default 120)")
    sv.add_argument("--body-timeout-s", type=float, default=None,
                    help="a request body must arrive within this (default 30)")
    sv.add_argument("--allow-remote-images", action="store_true", default=None,
                    help="fetch http(s) image URLs (never from private or loopback addresses)")
    _add_device_args(sv)
    sv.set_defaults(fn=cmd_serve)

    rt = sub.add_parser("retrieve", help="search a catalogue by text or image; fine-tune, evaluate, index CLIP/SigLIP",
                        formatter_class=ex,
                        epilog="examples:\n"
                               "  vlmtune retrieve --index indexes/shop \"red striped t-shirt\" --k 5\n"
                               "  vlmtune retrieve --index indexes/shop --image query.jpg\n"
                               "  vlmtune retrieve train --model openai/clip-vit-base-patch32 --data data/shop "
                               "--out runs/fashion-clip\n"
                               "  vlmtune retrieve eval --model runs/fashion-clip --data data/shop --split test\n"
                               "  vlmtune retrieve index --model runs/fashion-clip --catalogue shop.tsv "
                               "--out indexes/shop\n"
                               "see docs/fashion-retrieval.md")
    rsub = rt.add_subparsers(dest="retrieve_verb", required=True)
    rs = rsub.add_parser("search", help="the top-k catalogue items for a text or image query (the default verb)",
                         formatter_class=ex, epilog='example: vlmtune retrieve --index indexes/shop "black skirt"')
    rs.add_argument("query", nargs="*", help="the text query")
    rs.add_argument("--index", required=True, help="index directory (vlmtune retrieve index)")
    rs.add_argument("--image", default=None, help="an image file as the query instead of text")
    rs.add_argument("--k", type=int, default=5)
    rs.add_argument("--model", default=None, help="query model (default: the index's; another one is refused)")
    _add_device_args(rs, dtype=False)
    rs.set_defaults(fn=cmd_retrieve_search)
    rtr = rsub.add_parser("train", help="contrastive fine-tuning on a dataset's image-caption pairs",
                          formatter_class=ex,
                          epilog="example: vlmtune retrieve train --model openai/clip-vit-base-patch32 "
                                 "--data data/shop --out runs/fashion-clip --epochs 5 --batch-size 128 --lr 1e-5\n"
                                 "the same command again resumes an interrupted run")
    rtr.add_argument("--config", default=None, help="a YAML recipe (configs/retrieval/); flags override its keys")
    rtr.add_argument("--model", help="CLIP or SigLIP checkpoint (hub id or directory)")
    rtr.add_argument("--data", help="vlmtune dataset with caption samples (train and val splits)")
    rtr.add_argument("--out", help="run directory")
    rtr.add_argument("--epochs", type=int, help="default 10")
    rtr.add_argument("--batch-size", type=int, help="default 64")
    rtr.add_argument("--lr", type=float, help="default 1e-5")
    rtr.add_argument("--weight-decay", type=float, help="default 0.1")
    rtr.add_argument("--warmup", type=float, help="fraction of the steps warming up (default 0.1)")
    rtr.add_argument("--eval-every", type=int, help="validate every N steps (default: each epoch)")
    rtr.add_argument("--freeze", choices=["none", "vision", "text"], help="keep one tower fixed (default none)")
    rtr.add_argument("--train-split", help="default train")
    rtr.add_argument("--val-split", help="default val")
    rtr.add_argument("--seed", type=int, help="default 0")
    rtr.set_defaults(fn=cmd_retrieve_train)
    rev = rsub.add_parser("eval", help="image<->text Recall@1/5/10 on a dataset split", formatter_class=ex,
                          epilog="example: vlmtune retrieve eval --model runs/fashion-clip --data data/shop "
                                 "--split test")
    rev.add_argument("--model", required=True, help="CLIP/SigLIP checkpoint, or a retrieve train run (its best/)")
    rev.add_argument("--data", required=True)
    rev.add_argument("--split", default="test")
    rev.add_argument("--batch-size", type=int, default=64)
    _add_device_args(rev, dtype=False)
    rev.set_defaults(fn=cmd_retrieve_eval)
    rix = rsub.add_parser("index", help="embed a catalogue into an on-disk index (resumable)", formatter_class=ex,
                          epilog="example: vlmtune retrieve index --model runs/fashion-clip --catalogue shop.tsv "
                                 "--out indexes/shop\nthe TSV has a header caption<TAB>image<TAB>item_url; an "
                                 "interrupted build continues when run again")
    rix.add_argument("--model", required=True, help="CLIP/SigLIP checkpoint, or a retrieve train run (its best/)")
    rix.add_argument("--catalogue", required=True, help="CC3M-style TSV (or a directory of them, or a vlmtune dataset)")
    rix.add_argument("--out", required=True, help="index directory")
    rix.add_argument("--images", default=None, help="directory the TSV's image paths are relative to")
    rix.add_argument("--batch-size", type=int, default=64)
    rix.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    _add_device_args(rix, dtype=False)
    rix.set_defaults(fn=cmd_retrieve_index)
    rim = rsub.add_parser("init-model", help="write a tiny random CLIP or SigLIP (offline; to try the pipeline on CPU)",
                          formatter_class=ex, epilog="example: vlmtune retrieve init-model --out models/tiny-clip; "
                                                     "then: vlmtune retrieve train --model models/tiny-clip ...")
    rim.add_argument("--out", required=True, help="new directory (never overwritten)")
    rim.add_argument("--family", choices=["clip", "siglip"], default="clip")
    rim.add_argument("--image-size", type=int, default=64)
    rim.add_argument("--seed", type=int, default=0)
    rim.set_defaults(fn=cmd_retrieve_init_model)

    ch = sub.add_parser("chart", help="DePlot pipeline: chart -> table -> answer; its evaluation", formatter_class=ex,
                        epilog="examples:\n"
                               "  vlmtune chart ask chart.png \"Which country has the highest value?\" --model RUN\n"
                               "  vlmtune chart eval --model RUN --data data/charts-qa --split test\n"
                               "  vlmtune chart eval --oracle --data data/charts-qa --split test   (true tables)\n"
                               "  vlmtune chart eval --oracle --data data/charts-qa --reasoner all --llm models/lm\n"
                               "  vlmtune chart tables data/chartqa --out data/chartqa-tables\n"
                               "  vlmtune chart init-model --out runs/tiny-deplot-base\n"
                               "  vlmtune chart init-lm --out runs/tiny-lm   (a random LM for the LM setups offline)\n"
                               "see docs/chartqa-deplot.md")
    chsub = ch.add_subparsers(dest="chart_verb", required=True)

    def reasoner_args(p, several: bool) -> None:
        from vlmtune.chart.reason import MAX_NEW_TOKENS, SC_K, SC_TEMPERATURE
        from vlmtune.chart.sandbox import MEMORY_LIMIT_MB, TIME_LIMIT_S

        p.add_argument("--reasoner", default="program",
                       help="program (default: rules, no LM); with --llm, DePlot's setups: zero_shot, cot (few-shot "
                            "chain-of-thought), pot (program-of-thought, run sandboxed), sc (self-consistency)"
                            + ("; a comma list, or all, to compare them in one table" if several else ""))
        p.add_argument("--llm", default=None, help="causal LM or vlmtune model directory for the LM setups")
        p.add_argument("--llm-max-new-tokens", type=int, default=None,
                       help="reply tokens (default per style: " + ", ".join(f"{k} {v}" for k, v in
                                                                          MAX_NEW_TOKENS.items()) + ")")
        p.add_argument("--sc-k", type=int, default=SC_K, help=f"self-consistency samples per style (default {SC_K})")
        p.add_argument("--sc-temperature", type=float, default=SC_TEMPERATURE,
                       help=f"self-consistency sampling temperature (default {SC_TEMPERATURE})")
        p.add_argument("--sc-prompts", default="cot,pot",
                       help="prompt styles self-consistency samples from (default cot,pot: DePlot's best pools both)")
        p.add_argument("--pot-time-limit", type=float, default=TIME_LIMIT_S,
                       help=f"seconds a generated program may run (default {TIME_LIMIT_S:g})")
        p.add_argument("--pot-memory-mb", type=int, default=MEMORY_LIMIT_MB,
                       help=f"memory of a generated program's interpreter, MB (default {MEMORY_LIMIT_MB})")
        p.add_argument("--fallback", choices=["none", "program"], default="none",
                       help="program: the rule-based program answers where the LM gives no answer (default none)")
        p.add_argument("--seed", type=int, default=0, help="sampling seed of self-consistency")
        p.add_argument("--max-new-tokens", type=int, default=128, help="table tokens the chart model may write")
        p.add_argument("--max-length", type=int, default=4096)
        _add_device_args(p)

    cha = chsub.add_parser("ask", help="one chart, one question: prints the table, the program and the answer")
    cha.add_argument("image")
    cha.add_argument("question")
    cha.add_argument("--model", required=True, help="chart-to-table model: a run, checkpoint or model directory")
    reasoner_args(cha, several=False)
    cha.set_defaults(fn=cmd_chart_ask)
    che = chsub.add_parser("eval", help="chart QA through tables: relaxed accuracy + RMS-F1/RNSS of the tables")
    che.add_argument("--model", default=None, help="chart-to-table model (run, checkpoint or model directory)")
    che.add_argument("--oracle", action="store_true", help="answer from the true tables (meta.table): the ceiling")
    che.add_argument("--data", required=True, help="dataset with chartqa questions (meta.table for table scores)")
    che.add_argument("--split", default=None)
    che.add_argument("--out", default=None, help="output directory (default: MODEL/chart_eval/SPLIT)")
    che.add_argument("--batch-size", type=int, default=16)
    che.add_argument("--limit", type=int, default=None, help="only the first N questions")
    che.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                     help="skip answering again from the true tables (meta.table) when the model wrote them")
    reasoner_args(che, several=True)
    che.set_defaults(fn=cmd_chart_eval)
    cht = chsub.add_parser("tables", help="chart-to-table training data (one sample per chart) from chart QA data")
    cht.add_argument("src", help="dataset with meta.table on its questions (vlmtune data import chartqa ...)")
    cht.add_argument("--out", required=True, help="new dataset directory")
    cht.set_defaults(fn=cmd_chart_tables)
    chi = chsub.add_parser("init-model", help="write a small random Pix2Struct (DePlot architecture) to train")
    chi.add_argument("--out", required=True, help="new model directory (model.path of a train config)")
    chi.add_argument("--vqa", action="store_true", help="draw the prompt above the chart, as google/deplot does")
    chi.add_argument("--max-patches", type=int, default=144, help="patches of 16 px per image (default 144)")
    chi.add_argument("--hidden", type=int, default=128, help="width of encoder and decoder (default 128)")
    chi.add_argument("--vision-layers", type=int, default=4)
    chi.add_argument("--text-layers", type=int, default=2)
    chi.add_argument("--seed", type=int, default=0)
    chi.set_defaults(fn=cmd_chart_init_model)
    chl = chsub.add_parser("init-lm", help="write a causal LM with random weights, to run the LM setups offline")
    chl.add_argument("--out", required=True, help="new model directory (--llm of chart ask|eval)")
    chl.add_argument("--from", dest="source", default=None,
                     help="a model directory with config.json + tokenizer (no weights needed); default: a small Llama "
                          "with a tokenizer trained on chart-reasoning text")
    chl.add_argument("--layers", type=int, default=2, help="depth (cuts --from's config; default 2)")
    chl.add_argument("--hidden", type=int, default=64, help="width without --from (default 64)")
    chl.add_argument("--seed", type=int, default=0)
    chl.set_defaults(fn=cmd_chart_init_lm)

    m = sub.add_parser("models", help="list model families")
    m.add_argument("--markdown", action="store_true", help="print the support table of docs/models.md")
    m.set_defaults(fn=cmd_models)
    return p


class _OfflineKernelNoise:
    """A logging filter for two warnings bitsandbytes (imported by peft whenever it is installed) logs on every
    offline start, quantised or not: its optional CPU kernel lives on the hub. Nothing is lost: without that kernel
    bitsandbytes uses its built-in CPU path."""

    NOISE = ("Failed to load CPU gemm_4bit_forward from kernels-community", "Skipping publisher trust check")

    def filter(self, record) -> bool:
        return not str(record.getMessage()).startswith(self.NOISE)


def _quiet_offline_kernel_noise() -> None:
    import logging

    for name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
        logging.getLogger(name).addFilter(_OfflineKernelNoise())


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_offline_kernel_noise()
    argv = _route_retrieve(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    a, rest = parser.parse_known_args(argv)
    if a.verb != "train" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        result = cmd_train(a, rest) if a.verb == "train" else a.fn(a)
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # bad input: say what and where, without a traceback
        if os.environ.get("VLMTUNE_DEBUG"):
            raise
        print(f"vlmtune {a.verb}: error: {e}", file=sys.stderr)
        return 2
    _emit(result)
    return 1 if isinstance(result, dict) and result.get("ok") is False else 0  # e.g. data check found errors


if __name__ == "__main__":
    sys.exit(main())
