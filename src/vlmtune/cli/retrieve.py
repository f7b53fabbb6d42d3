"""`vlmtune retrieve ...`: catalogue search, and fine-tuning, evaluating and indexing CLIP/SigLIP (retrieval/).

    vlmtune retrieve --index indexes/shop "red striped t-shirt" --k 5
    vlmtune retrieve train --model openai/clip-vit-base-patch32 --data data/shop --out runs/fashion-clip
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from vlmtune.cli.flags import add_config_flags, add_device_args
from vlmtune.retrieval.encoder import DualEncoder
from vlmtune.retrieval.evaluate import evaluate, load_gallery
from vlmtune.retrieval.index import build_index, search
from vlmtune.retrieval.tiny import build_tiny
from vlmtune.retrieval.train import RetrievalTrainCfg, train


def cmd_retrieve_train(a) -> dict:
    given = {f.name: getattr(a, f.name) for f in dataclasses.fields(RetrievalTrainCfg)}
    return train(RetrievalTrainCfg.load(a.config, **given))  # the flags given (not None) over the recipe's keys


def cmd_retrieve_eval(a) -> dict:
    metrics = evaluate(DualEncoder.load(a.model, a.device), load_gallery(a.data, a.split), a.batch_size)
    print(" ".join(f"{k} {v:.2f}" for k, v in metrics.items() if "@" in k or k == "rsum"), file=sys.stderr)
    return {"model": a.model, "data": a.data, "split": a.split, **metrics}


def cmd_retrieve_index(a) -> dict:
    return build_index(DualEncoder.load(a.model, a.device), a.catalogue, a.out, a.images, a.batch_size, a.dtype)


def cmd_retrieve_init_model(a) -> dict:
    out = build_tiny(a.family, a.out, image_size=a.image_size, seed=a.seed)
    return {"out": str(out), "family": a.family, "image_size": a.image_size}


def cmd_retrieve_search(a) -> dict:
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


def add_parsers(sub) -> None:
    ex = argparse.RawDescriptionHelpFormatter
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
    add_device_args(rs, dtype=False)
    rs.set_defaults(fn=cmd_retrieve_search)
    rtr = rsub.add_parser("train", help="contrastive fine-tuning on a dataset's image-caption pairs",
                          formatter_class=ex,
                          epilog="example: vlmtune retrieve train --model openai/clip-vit-base-patch32 "
                                 "--data data/shop --out runs/fashion-clip --epochs 5 --batch-size 128 --lr 1e-5\n"
                                 "the same command again resumes an interrupted run")
    rtr.add_argument("--config", default=None, help="a YAML recipe (configs/retrieval/); flags override its keys")
    # every RetrievalTrainCfg field is a flag; unset: one not given leaves the recipe's value, else the field's default
    add_config_flags(rtr, RetrievalTrainCfg, unset=True, extra={"freeze": {"note": "Keep one tower fixed."}})
    rtr.set_defaults(fn=cmd_retrieve_train)
    rev = rsub.add_parser("eval", help="image<->text Recall@1/5/10 on a dataset split", formatter_class=ex,
                          epilog="example: vlmtune retrieve eval --model runs/fashion-clip --data data/shop "
                                 "--split test")
    rev.add_argument("--model", required=True, help="CLIP/SigLIP checkpoint, or a retrieve train run (its best/)")
    rev.add_argument("--data", required=True)
    rev.add_argument("--split", default="test")
    rev.add_argument("--batch-size", type=int, default=64)
    add_device_args(rev, dtype=False)
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
    add_device_args(rix, dtype=False)
    rix.set_defaults(fn=cmd_retrieve_index)
    rim = rsub.add_parser("init-model", help="write a tiny random CLIP or SigLIP (offline; to try the pipeline on CPU)",
                          formatter_class=ex, epilog="example: vlmtune retrieve init-model --out models/tiny-clip; "
                                                     "then: vlmtune retrieve train --model models/tiny-clip ...")
    rim.add_argument("--out", required=True, help="new directory (never overwritten)")
    rim.add_argument("--family", choices=["clip", "siglip"], default="clip")
    rim.add_argument("--image-size", type=int, default=64)
    rim.add_argument("--seed", type=int, default=0)
    rim.set_defaults(fn=cmd_retrieve_init_model)

