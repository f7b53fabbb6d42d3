"""`vlmtune train | eval | predict | export | demo`: a run is trained, evaluated, used and exported (train/, eval/,
infer.py, export.py, demo.py); the generation settings a command takes from the run it reads back.

    vlmtune train --config configs/builtin/tiny_fashion_vqa.yaml [--train.lr 1e-3 ...]
    vlmtune eval --model runs/tiny_fashion_vqa --data data/fashion --split test
    vlmtune predict --model runs/tiny_fashion_vqa --data data/fashion --split test --out preds.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from vlmtune.cli.flags import add_device_args
from vlmtune.config import MAX_PROMPT_LENGTH, EvalCfg, RunCfg
from vlmtune.data.dataset import load_split
from vlmtune.demo import run
from vlmtune.eval.analysis import compare_files, write_analysis
from vlmtune.eval.runner import SUBMISSIONS, auto_max_new_tokens, evaluate, length_limited, predict, write_submission
from vlmtune.eval.score import score_file
from vlmtune.eval.tasks import TASKS, get_task
from vlmtune.export import export
from vlmtune.infer import Predictor
from vlmtune.remote import RemotePredictor
from vlmtune.runs import load_processor, model_ocr_options, run_config_of
from vlmtune.train.checks import check_run
from vlmtune.train.distributed import join_processes
from vlmtune.train.loop import train


def cmd_train(a, overrides: list[str]) -> dict:
    cfg = RunCfg.from_file(a.config, overrides)
    return train(cfg)


def _eval_samples(a, out_dir: Path):
    """The samples to evaluate; with --skip-bad, bad records are listed in OUT_DIR/rejected.jsonl."""
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
    cfg = run_config_of(a.model)
    if cfg is not None:
        check_run(cfg)  # a run read back is refused as `vlmtune train` refuses its config
    e = cfg.eval if cfg is not None else None
    for key, fallback in (("max_new_tokens", EvalCfg.max_new_tokens), ("num_beams", 1)):
        if getattr(a, key) is None:
            setattr(a, key, getattr(e, key) if e is not None else fallback)
    if getattr(a, "max_length", 0) is None:  # a prompt the run trained with fits; a Pix2Struct one is 2048 patches+
        a.max_length = max(cfg.data.max_length, MAX_PROMPT_LENGTH) if cfg is not None else MAX_PROMPT_LENGTH
    if hasattr(a, "lang") and a.lang is None and e is not None:
        a.lang = e.lang


def build_predictor(a, samples=None):
    """The Predictor of --model with the generation settings of `_run_defaults`; `max_new_tokens` auto is sized from
    `samples`' gold texts with the model's tokenizer (`auto_max_new_tokens`). With --url, a RemotePredictor of the
    server there (the run's settings still come from --model when it is given)."""
    _run_defaults(a)
    if getattr(a, "url", None):
        return _remote_predictor(a, samples)
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


def _remote_predictor(a, samples):
    p = RemotePredictor.connect(a.url, a.served_model, a.engine, batch_size=a.batch_size, num_beams=a.num_beams)
    if a.max_new_tokens == "auto":  # sized with the model's tokenizer: the run's, else the server's (vLLM's)
        tokenizer = load_processor(a.model)[1].tokenizer if a.model else p.tokenizer()
        if tokenizer is None:
            raise ValueError(f"--max-new-tokens auto sizes answers with the model's tokenizer, and the {p.engine} "
                             "server offers none: give --model RUN (the run it serves) or a number")
        a.max_new_tokens, how = auto_max_new_tokens(tokenizer, samples or [])
        print(how, file=sys.stderr)
    p = dataclasses.replace(p, max_new_tokens=a.max_new_tokens)
    print(f"answers from {p.engine}{' ' + p.version if p.version else ''} at {p.url}, model {p.model!r}",
          file=sys.stderr)
    return p


def _task_options(a) -> dict:
    return {"vqa_variant": a.vqa_variant, "anls_variant": a.anls_variant, "lang": a.lang}


def _samples_task(samples) -> str:
    """The task the samples themselves name when they all name one that exists (caption data is scored as captions
    without --task), else vqa."""
    tasks = {s.task for s in samples}
    return tasks.pop() if len(tasks) == 1 and next(iter(tasks)) in TASKS else "vqa"


def cmd_eval(a) -> dict:
    if a.eval_verb == "score":
        return cmd_eval_score(a)
    if a.eval_verb == "compare":
        return cmd_eval_compare(a)
    if not (a.model or a.url) or not a.data:
        raise ValueError("eval: --model (or --url) and --data are required (or: vlmtune eval score / vlmtune eval "
                         "compare)")
    if a.url and not (a.out or a.model):
        raise ValueError("eval --url: give --out (where predictions and metrics go), or --model RUN to write them "
                         "under RUN/eval/")
    _run_defaults(a)  # before the task options read a.lang
    split = a.split or "all"  # a served model's evaluation beside the run's own: eval/served-SPLIT
    out = Path(a.out) if a.out else Path(a.model) / "eval" / (f"served-{split}" if a.url else split)
    samples = _eval_samples(a, out)
    a.task = a.task or _samples_task(samples)
    metrics = evaluate(build_predictor(a, samples), a.data, samples, get_task(a.task), out, progress=True,
                       prompt=a.prompt, submission=a.submission, **_task_options(a))
    if a.report:
        page, _ = write_analysis({"model": out / "predictions.jsonl"}, out / "analysis.html", data=a.data,
                                 task=a.task)
        metrics["report"] = str(page)
    print(f"wrote {out}/metrics.json and {out}/predictions.jsonl", file=sys.stderr)
    return metrics


def cmd_eval_score(a) -> dict:
    return score_file(a.predictions, a.task, a.out, **_task_options(a))


def cmd_eval_compare(a) -> dict:
    return compare_files(a.predictions, a.out, data=a.data, task=a.task, names=a.names)


def cmd_predict(a) -> dict:
    if not (a.model or a.url):
        raise ValueError("predict: --model (or --url) is required")
    out = Path(a.out)
    _run_defaults(a)  # the run read back and checked before its data is
    samples = _eval_samples(a, out.parent)
    rows = predict(build_predictor(a, samples), a.data, samples, out, progress=True)
    result = {"out": str(out), "n": len(rows), **length_limited(rows)}
    if a.submission:
        paths = [str(write_submission(rows, out.parent, kind)) for kind in dict.fromkeys(a.submission)]
        result["submission"] = paths[0] if len(paths) == 1 else paths
    return result


def cmd_demo(a) -> dict:
    return run(a.out, quick=a.quick, seed=a.seed)


def cmd_export(a) -> dict:
    return export(a.model, a.out, merge=a.merge)

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


def _add_model_args(p, required: bool = True, model_required: bool | None = None) -> None:
    p.add_argument("--model", required=required if model_required is None else model_required,
                   help="a run directory (its best checkpoint), checkpoint or HF model dir")
    p.add_argument("--data", required=required, help="dataset directory (manifest.jsonl + images)")
    p.add_argument("--split", default=None, help="split to use (default: every sample)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=_max_new_tokens, default=None, metavar="N|auto",
                   help="default: the run's eval.max_new_tokens, else auto (sized from the data's answers/captions: "
                        "99th percentile of their token counts + 25%%, at least 16)")
    p.add_argument("--num-beams", type=int, default=None, help="default: the run's eval.num_beams, else 1")
    p.add_argument("--max-length", type=int, default=None,
                   help="prompt limit, image tokens included (default: the run's data.max_length, at least "
                        f"{MAX_PROMPT_LENGTH})")
    p.add_argument("--limit", type=int, default=None, help="only the first N samples")
    p.add_argument("--skip-bad", action="store_true", help="skip bad records (listed in rejected.jsonl)")
    add_device_args(p)


def _add_remote_args(p) -> None:
    p.add_argument("--url", default=None, help="answers from the OpenAI-compatible server at URL (vlmtune serve, vLLM) "
                                               "instead of loading --model; --model RUN then only gives the run's "
                                               "generation settings")
    p.add_argument("--served-model", default=None, help="with --url: the served model name (default: the first in "
                                                        "its /v1/models)")
    p.add_argument("--engine", default=None, choices=["vllm", "vlmtune", "openai"],
                   help="with --url: refuse a server that is not this engine (default: any; the predictions' "
                        "fingerprint records which it was)")


def _add_task_args(p) -> None:
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


def add_parsers(sub) -> None:
    ex = argparse.RawDescriptionHelpFormatter
    t = sub.add_parser("train", help="fine-tune (or train) a model from a YAML config", formatter_class=ex,
                       epilog="example: vlmtune train --config configs/builtin/tiny_fashion_vqa.yaml --train.lr 1e-3\n"
                              "any config key can be overridden as --section.key VALUE")
    t.add_argument("--config", "-c", default=None)
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="generate answers for a dataset and score them; score or compare prediction files",
                       formatter_class=ex,
                       epilog="examples:\n"
                              "  vlmtune eval --model runs/tiny_fashion_vqa --data data/fashion --split test\n"
                              "  vlmtune eval score --task caption --predictions preds.jsonl --out scores/\n"
                              "  vlmtune eval compare base/predictions.jsonl tuned/predictions.jsonl --data data/x "
                              "--out compare.html")
    _add_model_args(e, required=False)
    _add_remote_args(e)
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
    _add_model_args(pr, model_required=False)
    _add_remote_args(pr)
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
