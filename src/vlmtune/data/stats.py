"""Looking at a dataset and dividing it: `dataset_stats` and `split_dataset`, both streaming over the manifest.

    vlmtune data stats data/vizwiz
    vlmtune data split data/catalogue --by image --ratios 0.8,0.1,0.1 --seed 0

`split_dataset` never puts one image in two splits: samples that share an image (by content, not by name: a copy
under another file name counts as the same image), directly or through a multi-image sample, form one group, and
groups are dealt to the splits in a seeded order until each split has its share of the samples.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from vlmtune.data.images import resolve_inside
from vlmtune.data.store import MANIFEST, BadRecord, iter_records
from vlmtune.io import atomic_path, file_sha256

SPLIT_NAMES = ("train", "val", "test")


class _Groups:
    """Union-find over keys (image content hashes)."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, k: str) -> str:
        self.parent.setdefault(k, k)
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def parse_ratios(text: str) -> tuple[float, ...]:
    try:
        ratios = tuple(float(r) for r in text.split(","))
    except ValueError:
        raise ValueError(f"--ratios {text!r}: expected numbers like 0.8,0.1,0.1") from None
    if not 1 <= len(ratios) <= len(SPLIT_NAMES) or any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise ValueError(f"--ratios {text!r}: up to {len(SPLIT_NAMES)} non-negative shares summing to 1")
    return ratios


def split_dataset(root: str | Path, ratios: tuple[float, ...] = (0.8, 0.1, 0.1), by: str = "image",
                  seed: int = 0) -> dict:
    """Assign every sample of `root` to train/val/test (`ratios`), rewriting the manifest atomically.

    `by="image"`: no image (by content) in two splits; `by="sample"`: samples are dealt independently."""
    root = Path(root)
    if by not in ("image", "sample"):
        raise ValueError(f"--by {by!r}: 'image' or 'sample'")
    groups = _Groups()
    keys: list[str] = []  # per sample, in manifest order: one of its images' hash (or its id)
    hashes: dict[str, str] = {}
    for rec in tqdm(iter_records(root, check_images=False), desc="hash images", unit=" samples"):
        if isinstance(rec, BadRecord):
            raise rec
        if by == "sample" or not rec.images:
            keys.append("id:" + rec.id)
            continue
        hs = []
        for rel in rec.images:
            if rel not in hashes:
                hashes[rel] = file_sha256(resolve_inside(root, rel))
            hs.append(hashes[rel])
        for h in hs[1:]:
            groups.union(hs[0], h)
        keys.append(hs[0])
    roots = [groups.find(k) for k in keys]
    size = Counter(roots)
    order = sorted(size, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    target = [r * len(roots) for r in ratios]
    filled = [0] * len(ratios)
    split_of: dict[str, str] = {}
    for g in order:  # the split furthest below its share takes the next group
        k = max(range(len(ratios)), key=lambda i: (target[i] - filled[i]) / (target[i] or 1) if target[i] else -1)
        split_of[g] = SPLIT_NAMES[k]
        filled[k] += size[g]
    manifest = root / MANIFEST
    counts: Counter = Counter()
    with atomic_path(manifest) as tmp, open(manifest, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
        i = 0
        for raw in src:
            if not raw.strip():
                continue
            row = json.loads(raw)
            row["split"] = split_of[roots[i]]
            counts[row["split"]] += 1
            dst.write(json.dumps(row, ensure_ascii=False) + "\n")
            i += 1
    return {"dataset": str(root), "by": by, "seed": seed, "splits": {s: counts[s] for s in SPLIT_NAMES[:len(ratios)]},
            "groups": len(size), "largest_group": max(size.values(), default=0)}


def dataset_stats(root: str | Path) -> dict:
    """Counts that describe a dataset, read from the manifest and the image headers (no pixels decoded)."""
    root = Path(root)
    splits, tasks, sources, qtypes = Counter(), Counter(), Counter(), Counter()
    answers, images_per_sample, turns, sizes = Counter(), Counter(), Counter(), Counter()
    answer_words, question_words, n_answers, bad = [], [], Counter(), 0
    seen_images: set[str] = set()
    for rec in iter_records(root, check_images=False):
        if isinstance(rec, BadRecord):
            bad += 1
            continue
        splits[rec.split or ""] += 1
        tasks[rec.task] += 1
        sources[rec.source or ""] += 1
        images_per_sample[len(rec.images)] += 1
        turns[sum(m["role"] == "assistant" for m in rec.messages)] += 1
        if isinstance(rec.meta.get("question_type"), str):  # meta is free-form: a list there is not a type
            qtypes[rec.meta["question_type"]] += 1
        n_answers[len(rec.answers or rec.references or [None])] += 1
        if rec.messages[-1]["role"] == "assistant":
            answers[rec.target] += 1
            answer_words.append(len(rec.target.split()))
        question_words.append(len(rec.question.split()) if any(m["role"] == "user" for m in rec.messages) else 0)
        for rel in rec.images:
            if rel in seen_images:
                continue
            seen_images.add(rel)
            try:
                with Image.open(resolve_inside(root, rel)) as img:
                    sizes[f"{img.width}x{img.height}"] += 1
            except Exception:  # noqa: BLE001 - `data check` reports unreadable images; stats only count them
                sizes["unreadable"] += 1

    def summary(values: list[int]) -> dict:
        if not values:
            return {}
        v = sorted(values)
        return {"mean": round(sum(v) / len(v), 2), "p50": v[len(v) // 2], "max": v[-1]}

    return {
        "dataset": str(root), "samples": sum(splits.values()), "bad_records": bad, "splits": dict(splits),
        "tasks": dict(tasks), "sources": dict(sources), "question_types": dict(qtypes.most_common()),
        "images": len(seen_images), "images_per_sample": dict(sorted(images_per_sample.items())),
        "assistant_turns": dict(sorted(turns.items())), "references_per_sample": dict(sorted(n_answers.items())),
        "image_sizes": dict(sizes.most_common(10)), "answer_words": summary(answer_words),
        "question_words": summary(question_words), "distinct_answers": len(answers),
        "top_answers": answers.most_common(15),
    }
