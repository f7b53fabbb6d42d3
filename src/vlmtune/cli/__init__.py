"""`vlmtune <verb>`: subcommand -> function. Results are printed as JSON on the last stdout line.

    vlmtune data synth fashion --out data/fashion --n 3000 --seed 0
    vlmtune train --config configs/builtin/tiny_fashion_vqa.yaml [--train.lr 1e-3 ...]
    vlmtune eval --model runs/tiny_fashion_vqa --data data/fashion --split test
    vlmtune predict --model runs/tiny_fashion_vqa --data data/fashion --split test --out preds.jsonl
    vlmtune models
"""

# One module per noun, each with its commands and their parsers (add_parsers): data (data ...), plan, run (train, eval,
# predict, export, demo), serve, chart, retrieve, models (models, compose); flags holds the argparse helpers they
# share. This file only builds the parser from them and runs the command.

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from vlmtune.cli import chart, data, models, plan, retrieve, run, serve
from vlmtune.cli.plan import cmd_plan
from vlmtune.cli.retrieve import _route_retrieve
from vlmtune.cli.run import cmd_train
from vlmtune.remote import RemoteError


def _emit(result: dict | None) -> None:
    # None: the command printed its own output (models --markdown); several processes (torchrun / accelerate
    # launch set RANK): the result once, from rank 0 (training may have ended the process group by now)
    if result is not None and int(os.environ.get("RANK", 0)) == 0:
        # backslashreplace: a lone surrogate (a manifest's "\udcff" escape kept as a split or task name) is written
        # as that escape, which is valid JSON giving the same string back; a UTF-8 stdout could not print it
        print(json.dumps(result, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlmtune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    for noun in (data, run, plan, models, serve, retrieve, chart):
        noun.add_parsers(sub)
    return p


class _OfflineKernelNoise:
    """A logging filter for two warnings bitsandbytes (imported by peft whenever it is installed) logs on every
    offline start, quantised or not: its optional CPU kernel lives on the hub. Nothing is lost: without that kernel
    bitsandbytes uses its built-in CPU path."""

    NOISE = ("Failed to load CPU gemm_4bit_forward from kernels-community", "Skipping publisher trust check")

    def filter(self, record) -> bool:
        return not str(record.getMessage()).startswith(self.NOISE)


def _quiet_offline_kernel_noise() -> None:
    for name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
        logging.getLogger(name).addFilter(_OfflineKernelNoise())


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_offline_kernel_noise()
    argv = _route_retrieve(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    a, rest = parser.parse_known_args(argv)
    if a.verb not in ("train", "plan") and rest:  # the verbs that take --section.key overrides
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        result = cmd_train(a, rest) if a.verb == "train" else cmd_plan(a, rest) if a.verb == "plan" else a.fn(a)
    except (ValueError, FileNotFoundError, FileExistsError, RemoteError) as e:  # bad input (or a server that
        # refused or went away): say what and where, without a traceback
        if os.environ.get("VLMTUNE_DEBUG"):
            raise
        print(f"vlmtune {a.verb}: error: {e}", file=sys.stderr)
        return 2
    _emit(result)
    return 1 if isinstance(result, dict) and result.get("ok") is False else 0  # e.g. data check found errors

