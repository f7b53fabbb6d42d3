"""Benchmark: FROMAGe-style fashion retrieval, untrained vs fine-tuned tiny CLIP, on a held-out synthetic catalogue.

    OMP_NUM_THREADS=1 .venv/bin/python bench/retrieval.py          # ~4 minutes on one CPU core; a markdown table

The whole pipeline of docs/fashion-retrieval.md, through the `vlmtune` command line (run in-process):
1. draw a fashion catalogue (`vlmtune.data.synthetic.fashion`, caption for every image) and write it as a team would
   hand it over: a CC3M-style TSV `caption<TAB>image<TAB>item_url<TAB>split`, item_url https://shop.example/item/<id>;
2. `vlmtune data import cc3m` -> a vlmtune dataset (train / val / test splits from the TSV);
3. build a tiny CLIP with random weights offline (`vlmtune.retrieval.tiny.build_tiny`);
4. `vlmtune retrieve eval` of the untrained model on the test split;
5. `vlmtune retrieve train` (contrastive fine-tuning, best checkpoint by validation rsum);
6. `vlmtune retrieve eval` of the fine-tuned model on the same test split;
7. `vlmtune retrieve index` of the test catalogue TSV and one `vlmtune retrieve` text query, timed.
Prints text->image and image->text Recall@1/5/10 (and median rank) side by side. Random chance for R@K on a gallery
of n images is K/n (n=200: R@1 0.5, R@10 5).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path


def _vlmtune(argv: list[str]) -> dict:
    """Run `vlmtune ARGV` in-process; its JSON result (last stdout line) is returned, its stdout kept off ours."""
    from vlmtune import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    if code != 0:
        raise SystemExit(f"vlmtune {' '.join(argv)} failed with exit status {code}")
    print("$ vlmtune " + " ".join(argv), file=sys.stderr)
    return json.loads(out.getvalue().strip().splitlines()[-1])


def write_catalogue(root: Path, n_train: int, n_val: int, n_test: int, size: int, seed: int) -> tuple[Path, Path]:
    """root/catalogue.tsv (every split, with a split column) and root/test.tsv (the held-out items only)."""
    from vlmtune.data.synthetic import fashion

    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = {"all": ["caption\timage\titem_url\tsplit"], "test": ["caption\timage\titem_url"]}
    n = n_train + n_val + n_test
    for i, (sample, image) in enumerate(fashion(n, seed=seed, size=size, caption_fraction=1.0)):
        split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
        name, url = f"img/{i:05d}.png", f"https://shop.example/item/{i:05d}"
        image.save(root / name)
        rows["all"].append(f"{sample.target}\t{name}\t{url}\t{split}")
        if split == "test":
            rows["test"].append(f"{sample.target}\t{name}\t{url}")
    for key, file in (("all", "catalogue.tsv"), ("test", "test.tsv")):
        (root / file).write_text("\n".join(rows[key]) + "\n")
    return root / "catalogue.tsv", root / "test.tsv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-retrieval", help="working directory (must not exist)")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch

    from vlmtune.retrieval.tiny import build_tiny

    torch.manual_seed(a.seed)
    out = Path(a.out)
    if out.exists():
        raise SystemExit(f"{out}: exists; choose another --out")
    t0 = time.time()
    tsv, test_tsv = write_catalogue(out / "catalogue", a.n_train, a.n_val, a.n_test, a.size, a.seed)
    _vlmtune(["data", "import", "cc3m", str(tsv), "--out", str(out / "data")])
    model = build_tiny("clip", out / "tiny-clip", image_size=a.size, patch=8, width=64, layers=2, dim=64)
    params = sum(p.numel() for p in __import__("transformers").CLIPModel.from_pretrained(model).parameters())
    before = _vlmtune(["retrieve", "eval", "--model", str(model), "--data", str(out / "data"), "--split", "test"])
    t1 = time.time()
    trained = _vlmtune(["retrieve", "train", "--model", str(model), "--data", str(out / "data"), "--out",
                        str(out / "run"), "--epochs", str(a.epochs), "--batch-size", str(a.batch_size),
                        "--lr", str(a.lr), "--seed", str(a.seed)])
    train_s = time.time() - t1
    after = _vlmtune(["retrieve", "eval", "--model", str(out / "run"), "--data", str(out / "data"), "--split", "test"])
    t2 = time.time()
    index = _vlmtune(["retrieve", "index", "--model", str(out / "run"), "--catalogue", str(test_tsv), "--out",
                      str(out / "index")])
    index_s = time.time() - t2
    query = "a person wearing a red striped t-shirt and blue trousers"
    t3 = time.time()
    hits = _vlmtune(["retrieve", "--index", str(out / "index"), query, "--k", "5"])["results"]
    search_s = time.time() - t3

    rows = [("text->image R@1", "t2i_R@1"), ("text->image R@5", "t2i_R@5"), ("text->image R@10", "t2i_R@10"),
            ("image->text R@1", "i2t_R@1"), ("image->text R@5", "i2t_R@5"), ("image->text R@10", "i2t_R@10"),
            ("rsum (max 600)", "rsum"), ("text->image median rank", "t2i_median_rank"),
            ("image->text median rank", "i2t_median_rank")]
    print(f"\nTiny CLIP ({params / 1e6:.2f}M parameters, random init, {a.size}x{a.size} images, patch 8), "
          f"fine-tuned {trained['steps']} steps ({a.epochs} epochs of {a.n_train} images, batch {a.batch_size}, "
          f"lr {a.lr}) in {train_s:.0f} s; best validation step {trained['best']['step']}. Held-out test catalogue: "
          f"{after['images']} images, {after['texts']} captions (chance R@K = {100 / after['images']:.1f} x K).\n")
    print("| metric (test split) | untrained | fine-tuned |")
    print("|---|---|---|")
    for label, key in rows:
        print(f"| {label} | {before[key]:.1f} | {after[key]:.1f} |")
    print(f"\nindex: {index['items']} items x {index['dim']} dims in {index_s:.1f} s; query {query!r} "
          f"(model load + search, one process) {search_s:.2f} s; top 5:")
    for h in hits:
        print(f"- {h['score']:.3f} {h['caption']} <{h['item_url']}>")
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
