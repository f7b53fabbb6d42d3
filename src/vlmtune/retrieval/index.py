"""A catalogue's image embeddings on disk, and exact cosine search over them.

    vlmtune retrieve index --model runs/catalogue-clip --catalogue shop/catalogue.tsv --out indexes/shop
    vlmtune retrieve --index indexes/shop "red striped t-shirt" --k 5

The catalogue is a CC3M-style TSV (header `caption<TAB>image<TAB>item_url`, read by `vlmtune.data.formats.cc3m`, image
paths relative to the TSV or `--images`) or an imported vlmtune dataset directory (its caption samples; `item_url`
from the sample's meta). Each good row becomes one item. The index directory:

    index.json            model (path or hub id), model fingerprint (type, dim, config SHA-256, probe embeddings),
                          count, dim, dtype, "normalised": "l2", the catalogue, the bad-row count; written LAST
    vectors.npy           [count, dim] float32 (or float16), rows L2-normalised, opened with np.load(mmap_mode="r")
    items.jsonl           row i: {"row", "id", "caption", "image" (absolute path), "item_url", "source" (file:line)}
    items.offsets.npy     byte offset of each items.jsonl line, so a hit's item is read without reading the file
    rejected.jsonl        the rows that were skipped, each with its source (file:line) and the reason

Building is batched and resumable: vectors and items are appended to `vectors.partial` / `items.partial.jsonl` a batch
at a time, then `progress.json` records how many catalogue rows are done (written after the data, so a crash in
between only leaves bytes that the next run cuts off). Running the same command again continues from there; the
finished index is assembled only when every row is done. A row whose image is missing, corrupt or too large (checked
by `vlmtune.data.images`) or whose TSV line is malformed is reported on stderr with its file, line and reason, listed
in rejected.jsonl and counted; never dropped silently.

Why exact search over a memory-mapped matrix and not FAISS: the result is the true top-k (the tests compare it with
brute force), nothing more to install, and the file is a plain .npy anyone can open. A search is one matrix product
per chunk of 65,536 rows plus `np.argpartition` (linear in the rows) to keep the best k; the matrix is mapped, not
loaded, so 1e6 items x 512 dims (2 GB in float32, 1 GB with --dtype float16) needs only the page cache, and one text
query costs one pass over the file: about 0.1-0.3 s on one CPU core when the pages are cached, a disk read when not.
Past ~1e7 items, or at many queries per second, that pass is what to remove: switch to an approximate index (FAISS
IVF-PQ or HNSW, with recall measured against this exact search), which trades a few percent of recall for speed.

A query model must be the one that built the index: search refuses another model type, embedding size or config,
and also the same architecture with other weights (a fine-tuned model against its base's index: the probe
embeddings differ), since such vectors live in an unrelated space and the ranking would be meaningless.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vlmtune.data.formats import cc3m
from vlmtune.data.images import ImageError, load_image, resolve_inside
from vlmtune.data.store import MANIFEST, BadRecord, iter_records
from vlmtune.io import atomic_path, atomic_write_text
from vlmtune.retrieval.encoder import DualEncoder, fingerprint_mismatch

INDEX, VECTORS, ITEMS, OFFSETS, REJECTED = "index.json", "vectors.npy", "items.jsonl", "items.offsets.npy", \
    "rejected.jsonl"
PARTIAL_VECTORS, PARTIAL_ITEMS, PROGRESS = "vectors.partial", "items.partial.jsonl", "progress.json"
CHUNK_ROWS = 65536
DTYPES = ("float32", "float16")


class IndexModelMismatch(ValueError):
    """The query model is not the one the index was built with."""


@dataclass
class Row:
    """One catalogue row that can become an item."""

    source: str
    """file:line of the row."""
    id: str
    caption: str
    image: Path
    item_url: str | None


def catalogue_rows(catalogue: Path, images: Path | None = None) -> Iterator[Row | BadRecord]:
    """Every row of a CC3M TSV (or directory of TSVs) or of a vlmtune dataset's caption samples, in a fixed order."""
    catalogue = Path(catalogue)
    if catalogue.is_dir() and (catalogue / MANIFEST).is_file():
        for rec in iter_records(catalogue, check_images=False):
            if isinstance(rec, BadRecord):
                yield rec
            elif rec.task == "caption" and len(rec.images) == 1:
                yield Row(f"{catalogue / MANIFEST}:{rec.id}", rec.id, rec.target,
                          resolve_inside(catalogue, rec.images[0]), rec.meta.get("item_url"))
        return

    for rec in cc3m.read(catalogue, images):
        if isinstance(rec, BadRecord):
            yield rec
        else:
            yield Row(f"{rec.file}:{rec.line}", rec.sample.id, rec.sample.target, rec.sources[0].path,
                      rec.sample.meta.get("item_url"))


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _cut(path: Path, size: int) -> None:
    """Cut `path` to `size` bytes (the part a crash wrote past the last recorded batch)."""
    with open(path, "ab") as f:
        if f.tell() < size:
            raise ValueError(f"{path}: shorter ({f.tell()} bytes) than its progress record ({size}); delete the index "
                             "directory and build again")
        f.truncate(size)


def build_index(encoder: DualEncoder, catalogue: str | Path, out: str | Path, images: str | Path | None = None,
                batch_size: int = 64, dtype: str = "float32") -> dict:
    """Embed every good row of `catalogue` into the index directory `out` (resuming an interrupted build there)."""
    if dtype not in DTYPES:
        raise ValueError(f"index dtype must be one of {DTYPES}, got {dtype!r}")
    catalogue, out = Path(catalogue).resolve(), Path(out)
    if (out / INDEX).exists():
        raise FileExistsError(f"{out}: already holds a finished index (never overwritten)")
    if out.exists() and any(out.iterdir()) and not (out / PROGRESS).exists():
        raise FileExistsError(f"{out}: exists and is not an index being built; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    fp = encoder.fingerprint()
    setup = {"catalogue": str(catalogue), "images": str(Path(images).resolve()) if images else None, "dtype": dtype,
             "fingerprint": fp}
    progress = {"rows_done": 0, "items": 0, "items_bytes": 0, "bad": 0, "setup": setup}
    if (out / PROGRESS).exists():
        progress = json.loads((out / PROGRESS).read_text())
        if progress["setup"]["fingerprint"] != fp and fingerprint_mismatch(progress["setup"]["fingerprint"], fp):
            raise IndexModelMismatch(f"{out}: an interrupted build made with another model; use that model or "
                                     "another --out")
        for key in ("catalogue", "images", "dtype"):
            if progress["setup"][key] != setup[key]:
                raise ValueError(f"{out}: an interrupted build of {key}={progress['setup'][key]!r}, not {setup[key]!r}")
        print(f"retrieve index: resuming {out}: {progress['rows_done']} rows done, {progress['items']} items",
              file=sys.stderr)
    row_bytes = fp["dim"] * np.dtype(dtype).itemsize
    for name, size in ((PARTIAL_VECTORS, progress["items"] * row_bytes), (PARTIAL_ITEMS, progress["items_bytes"])):
        (out / name).touch()
        _cut(out / name, size)
    if progress["rows_done"] == 0:
        (out / REJECTED).write_text("")

    pending: list[tuple[Row, object]] = []
    rejected: list[dict] = []

    def flush(rows_done: int) -> None:
        if pending:
            vectors = encoder.embed_images([image for _, image in pending], batch_size).astype(dtype)
            _append(out / PARTIAL_VECTORS, vectors.tobytes())
            lines = "".join(json.dumps({"row": progress["items"] + i, "id": r.id, "caption": r.caption,
                                        "image": str(r.image), "item_url": r.item_url, "source": r.source},
                                       ensure_ascii=False) + "\n" for i, (r, _) in enumerate(pending))
            data = lines.encode("utf-8")
            _append(out / PARTIAL_ITEMS, data)
            progress["items"] += len(pending)
            progress["items_bytes"] += len(data)
        if rejected:
            _append(out / REJECTED, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected).encode())
            progress["bad"] += len(rejected)
        progress["rows_done"] = rows_done
        atomic_write_text(out / PROGRESS, json.dumps(progress) + "\n")
        pending.clear()
        rejected.clear()

    n = 0
    for n, rec in enumerate(catalogue_rows(catalogue, Path(images) if images else None), start=1):
        if n <= progress["rows_done"]:
            continue
        if isinstance(rec, BadRecord):
            rejected.append({"source": f"{rec.file}:{rec.line}", "error": rec.reason})
            print(f"retrieve index: skipped {rec}", file=sys.stderr)
        else:
            try:
                pending.append((rec, load_image(rec.image)))
            except ImageError as e:
                rejected.append({"source": rec.source, "error": str(e)})
                print(f"retrieve index: skipped {rec.source}: {e}", file=sys.stderr)
        if len(pending) >= batch_size:
            flush(n)
    flush(max(n, progress["rows_done"]))
    if progress["items"] == 0:
        raise ValueError(f"{catalogue}: no row could be indexed ({progress['bad']} bad row(s), see {out / REJECTED})")
    return _finish(out, progress, encoder)


def _finish(out: Path, progress: dict, encoder: DualEncoder) -> dict:
    setup, count = progress["setup"], progress["items"]
    dim, dtype = setup["fingerprint"]["dim"], setup["dtype"]
    partial = np.memmap(out / PARTIAL_VECTORS, dtype=dtype, mode="r", shape=(count, dim))
    with atomic_path(out / VECTORS) as tmp:
        final = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(count, dim))
        for start in range(0, count, CHUNK_ROWS):
            final[start: start + CHUNK_ROWS] = partial[start: start + CHUNK_ROWS]
        final.flush()
        del final, partial
    offsets, pos = [], 0
    with open(out / PARTIAL_ITEMS, "rb") as f:
        for line in f:
            offsets.append(pos)
            pos += len(line)
    np.save(out / OFFSETS, np.asarray(offsets, dtype=np.int64))
    (out / PARTIAL_ITEMS).replace(out / ITEMS)
    model = encoder.name if not Path(encoder.name).exists() else str(Path(encoder.name).resolve())
    meta = {"model": model, "fingerprint": setup["fingerprint"], "count": count, "dim": dim, "dtype": dtype,
            "normalised": "l2", "metric": "cosine (dot product of unit vectors)", "catalogue": setup["catalogue"],
            "bad_rows": progress["bad"], "rows": progress["rows_done"]}
    atomic_write_text(out / INDEX, json.dumps(meta, indent=2) + "\n")
    (out / PARTIAL_VECTORS).unlink()
    (out / PROGRESS).unlink()
    print(f"retrieve index: {count} items in {out}" + (f", {progress['bad']} bad row(s) skipped (listed in "
                                                        f"{out / REJECTED})" if progress["bad"] else ""),
          file=sys.stderr)
    return {"out": str(out), "items": count, "bad_rows": progress["bad"], "dim": dim, "dtype": dtype,
            "model": model}


def top_k(vectors: np.ndarray, queries: np.ndarray, k: int, chunk_rows: int = CHUNK_ROWS
          ) -> tuple[np.ndarray, np.ndarray]:
    """The k best rows of `vectors` [N, D] for each query [Q, D] by dot product: (rows [Q, k'], scores [Q, k']),
    k' = min(k, N), best first, ties broken by the lower row (the order of `np.argsort(-s, kind="stable")`).

    Chunk by chunk: scores [Q, C] in float32, merged with the best so far; `np.argpartition` finds the k-th best
    score in linear time, and only the candidates at or above it are sorted."""
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    n = len(vectors)
    if queries.shape[1] != vectors.shape[1]:
        raise ValueError(f"query dim {queries.shape[1]} != index dim {vectors.shape[1]}")
    if not np.isfinite(queries).all():
        raise ValueError("query vector is not finite")
    k = min(int(k), n)
    if k < 1:
        raise ValueError("k must be >= 1 and the index non-empty")
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    for start in range(0, n, chunk_rows):
        block = np.asarray(vectors[start: start + chunk_rows], dtype=np.float32)  # [C, D]
        scores = np.concatenate([best_scores, queries @ block.T], axis=1)  # [Q, k + C]
        rows = np.concatenate([best_rows, np.broadcast_to(np.arange(start, start + len(block)),
                                                          (len(queries), len(block)))], axis=1)
        width = min(k, scores.shape[1])
        kth = -np.partition(-scores, width - 1, axis=1)[:, width - 1]  # [Q] the width-th best score
        new_rows = np.empty((len(queries), width), dtype=np.int64)
        new_scores = np.empty((len(queries), width), dtype=np.float32)
        for q in range(len(queries)):
            keep = np.flatnonzero(scores[q] >= kth[q])  # every candidate at or above the threshold (ties included)
            order = np.lexsort((rows[q, keep], -scores[q, keep]))[:width]
            new_rows[q], new_scores[q] = rows[q, keep[order]], scores[q, keep[order]]
        best_rows, best_scores = new_rows, new_scores
    return best_rows, best_scores


class CatalogueIndex:
    """A finished index directory, memory-mapped."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"no such index directory: {self.root} (build one with vlmtune retrieve index)")
        if not (self.root / INDEX).is_file():
            hint = " (an interrupted build: run `vlmtune retrieve index` again)" if (self.root / PROGRESS).exists() \
                else ""
            raise FileNotFoundError(f"{self.root}: no {INDEX}, not a finished retrieval index{hint}")
        self.meta = json.loads((self.root / INDEX).read_text())
        self.vectors = np.load(self.root / VECTORS, mmap_mode="r")
        self.offsets = np.load(self.root / OFFSETS)
        if self.vectors.shape != (self.meta["count"], self.meta["dim"]) or len(self.offsets) != self.meta["count"]:
            raise ValueError(f"{self.root}: {VECTORS} {self.vectors.shape} / {OFFSETS} ({len(self.offsets)}) do not "
                             f"match {INDEX} (count {self.meta['count']}, dim {self.meta['dim']})")

    def __len__(self) -> int:
        return int(self.meta["count"])

    def check_model(self, encoder: DualEncoder) -> None:
        """Raise IndexModelMismatch unless `encoder` is the model that built the index."""
        why = fingerprint_mismatch(self.meta["fingerprint"], encoder.fingerprint())
        if why:
            raise IndexModelMismatch(f"{self.root}: built with {self.meta['model']}; the query model {encoder.name} "
                                     f"cannot search it: {why}")

    def item(self, row: int) -> dict:
        with open(self.root / ITEMS, "rb") as f:
            f.seek(int(self.offsets[row]))
            return json.loads(f.readline())

    def search(self, query: np.ndarray, k: int = 5) -> list[dict]:
        """Top-k items for one normalised query vector, each with its rank, score and catalogue fields."""
        rows, scores = top_k(self.vectors, query, k)
        return [{"rank": r + 1, "score": round(float(s), 6), **self.item(int(i))}
                for r, (i, s) in enumerate(zip(rows[0], scores[0], strict=True))]


class Retriever:
    """An index with its query model, loaded and checked once, answering many queries (`vlmtune serve --index`).

    A query is a text, an image or both. Both: the sum of the two unit embeddings, normalised again, so the items
    closest to the text and the image together rank first (the usual zero-shot composed query of a dual encoder:
    "like this photo, but striped")."""

    def __init__(self, index: CatalogueIndex, encoder: DualEncoder):
        self.index, self.encoder = index, encoder
        self._lock = threading.Lock()  # one embedding at a time: the server calls from several threads

    @classmethod
    def load(cls, index: str | Path, model: str | None = None, device: str = "auto") -> Retriever:
        """The index at `index` and its own model (or `model`, refused unless it embeds as the index's did)."""
        idx = CatalogueIndex(index)
        encoder = DualEncoder.load(model or idx.meta["model"], device)
        idx.check_model(encoder)
        return cls(idx, encoder)

    def query_vector(self, text: str | None = None, image: Image.Image | Path | None = None) -> np.ndarray:
        """[1, dim], unit length."""
        if text is None and image is None:
            raise ValueError("a retrieval query needs a text, an image or both")
        with self._lock:
            parts = ([self.encoder.embed_texts([text])] if text is not None else []) + \
                    ([self.encoder.embed_images([image])] if image is not None else [])
        query = np.sum(parts, axis=0)  # [1, dim]
        return query / max(float(np.linalg.norm(query)), 1e-12)

    def search(self, text: str | None = None, image: Image.Image | Path | None = None, k: int = 5) -> list[dict]:
        """The top-k items (rank, score, row, id, caption, image path, item_url, source), best first."""
        return self.index.search(self.query_vector(text, image), k)


def search(index: str | Path, text: str | None = None, image: str | Path | None = None, k: int = 5,
           model: str | None = None, device: str = "auto") -> dict:
    """Text or image query against an index, with the index's own model unless `model` is given (then checked)."""
    if (text is None) == (image is None):
        raise ValueError("retrieve: give either a text query or --image PATH")
    retriever = Retriever.load(index, model, device)
    results = retriever.search(text, Path(image) if image is not None else None, k)
    return {"index": str(retriever.index.root), "query": text if image is None else {"image": str(image)},
            "model": retriever.index.meta["model"], "results": results}
