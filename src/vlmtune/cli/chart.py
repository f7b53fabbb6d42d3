"""`vlmtune chart ...`: the DePlot pipeline (chart -> table -> answer), its evaluation and tiny models (chart/).

    vlmtune chart ask chart.png "Which country has the highest value?" --model RUN
    vlmtune chart eval --model RUN --data data/charts-qa --split test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlmtune.chart.ask import ask, evaluate_charts, setups_table, tables_dataset
from vlmtune.chart.lm import init_lm, load_lm
from vlmtune.chart.model import TinyDeplotCfg, init_model
from vlmtune.chart.reason import MAX_NEW_TOKENS, SC_K, SC_TEMPERATURE, SETUPS, build_reasoner
from vlmtune.chart.sandbox import MEMORY_LIMIT_MB, TIME_LIMIT_S
from vlmtune.cli.flags import add_device_args
from vlmtune.data.images import load_image
from vlmtune.infer import Predictor


def _chart_reasoners(a, several: bool) -> list:
    """The reasoning setups named by --reasoner (`chart eval`: a comma list or "all"), over the --llm model."""
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
    predictor = Predictor.from_path(a.model, device=a.device, dtype=a.dtype, max_new_tokens=a.max_new_tokens,
                                    max_length=a.max_length)
    result = ask(predictor, load_image(Path(a.image)), a.question, _chart_reasoners(a, several=False)[0])
    print(f"table:\n  {result['table'].replace('<0x0A>', chr(10) + '  ')}\nprogram: {result['program']}\n"
          f"answer: {result['answer']}" + (f"\nerror: {result['error']}" if result["error"] else ""))
    return {"image": a.image, "question": a.question, **result}


def cmd_chart_eval(a) -> dict:
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
    return tables_dataset(a.src, a.out)


def cmd_chart_init_model(a) -> dict:
    cfg = TinyDeplotCfg(vqa=a.vqa, max_patches=a.max_patches, hidden=a.hidden, ff=2 * a.hidden,
                        vision_layers=a.vision_layers, text_layers=a.text_layers)
    return init_model(a.out, cfg, seed=a.seed)


def cmd_chart_init_lm(a) -> dict:
    return init_lm(a.out, a.source, layers=a.layers, hidden=a.hidden, seed=a.seed)


def add_parsers(sub) -> None:
    ex = argparse.RawDescriptionHelpFormatter
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
        add_device_args(p)

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

