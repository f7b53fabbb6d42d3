"""The on-disk catalogue index: exact top-k, resumable build, bad rows reported, wrong query model refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vlmtune.retrieval import index as index_mod
from vlmtune.retrieval.encoder import DualEncoder
from vlmtune.retrieval.index import CatalogueIndex, IndexModelMismatch, build_index, search, top_k

QUERIES = ["a person wearing a red t-shirt and blue trousers", "a person wearing a black dotted sweater and a "
           "white skirt", "green shorts"]


def _brute(vectors: np.ndarray, query: np.ndarray, k: int):
    scores = vectors.astype(np.float32) @ query.astype(np.float32)
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_top_k_is_exact_brute_force_across_chunks(dtype):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((1000, 16)).astype(dtype)
    queries = rng.standard_normal((3, 16)).astype(np.float32)
    for k in (1, 7, 1000, 5000):
        rows, scores = top_k(vectors, queries, k, chunk_rows=97)
        for q in range(3):
            want_rows, want_scores = _brute(vectors, queries[q], k)
            np.testing.assert_array_equal(rows[q], want_rows)
            np.testing.assert_allclose(scores[q], want_scores, rtol=1e-5, atol=1e-5)


def test_top_k_breaks_ties_by_lower_row():
    vectors = np.array([[0.0], [1.0], [1.0], [0.5], [1.0], [1.0]], dtype=np.float32)
    rows, _ = top_k(vectors, np.array([[1.0]]), 3, chunk_rows=2)  # ties straddle chunk boundaries
    assert rows[0].tolist() == [1, 2, 4]


def test_index_search_returns_the_exact_top_k_with_urls(models, catalogue, tmp_path):
    enc = DualEncoder.load(models["clip"], "cpu")
    summary = build_index(enc, catalogue, tmp_path / "idx", batch_size=16)
    assert summary["items"] == 150 and summary["bad_rows"] == 0
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["count"] == 150 and meta["dim"] == enc.dim and meta["normalised"] == "l2"
    assert len(meta["fingerprint"]["config_sha256"]) == 64
    idx = CatalogueIndex(tmp_path / "idx")
    assert isinstance(idx.vectors, np.memmap)  # mapped, not loaded
    truth = enc.embed_images(sorted((catalogue.parent / "img").iterdir()))  # rows are in TSV order
    np.testing.assert_allclose(np.asarray(idx.vectors), truth, atol=1e-6)
    for text in QUERIES:
        query = enc.embed_texts([text])
        hits = idx.search(query, k=10)
        want_rows, want_scores = _brute(truth, query[0], 10)
        assert [h["row"] for h in hits] == want_rows.tolist()
        np.testing.assert_allclose([h["score"] for h in hits], want_scores, atol=1e-5)
        for h in hits:
            assert h["item_url"] == f"https://shop.example/item/{h['row']:04d}"
            assert h["image"].endswith(f"img/{h['row']:04d}.png") and h["source"].endswith(f":{h['row'] + 2}")
    image_hits = search(tmp_path / "idx", image=catalogue.parent / "img" / "0042.png", k=3)["results"]
    assert image_hits[0]["row"] == 42 and image_hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_interrupted_build_resumes_from_the_rows_done(models, catalogue, tmp_path, monkeypatch):
    enc = DualEncoder.load(models["clip"], "cpu")
    build_index(enc, catalogue, tmp_path / "whole", batch_size=32)
    real = enc.embed_images
    calls = []

    def crash_on_third_batch(images, batch_size=64):  # the first call embeds the fingerprint's probe image
        calls.append(len(images))
        if len(calls) == 4:
            raise KeyboardInterrupt  # the process is killed mid-build
        return real(images, batch_size)

    monkeypatch.setattr(enc, "embed_images", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        build_index(enc, catalogue, tmp_path / "cut", batch_size=32)
    progress = json.loads((tmp_path / "cut" / "progress.json").read_text())
    assert progress["rows_done"] == progress["items"] == 64 and not (tmp_path / "cut" / "index.json").exists()
    with open(tmp_path / "cut" / "vectors.partial", "ab") as f:
        f.write(b"\0" * 100)  # bytes of a batch written after the last progress record
    with pytest.raises(FileNotFoundError, match="interrupted build"):
        CatalogueIndex(tmp_path / "cut")
    calls.clear()
    monkeypatch.setattr(enc, "embed_images", lambda images, batch_size=64: (calls.append(len(images)),
                                                                              real(images, batch_size))[1])
    assert build_index(enc, catalogue, tmp_path / "cut", batch_size=32)["items"] == 150
    assert calls[0] == 1 and sum(calls[1:]) == 150 - 64  # the probe, then only the rows not done
    np.testing.assert_array_equal(np.load(tmp_path / "cut" / "vectors.npy"), np.load(tmp_path / "whole" /
                                                                                     "vectors.npy"))
    assert (tmp_path / "cut" / "items.jsonl").read_text() == (tmp_path / "whole" / "items.jsonl").read_text()
    assert not (tmp_path / "cut" / "progress.json").exists()
    with pytest.raises(FileExistsError):
        build_index(enc, catalogue, tmp_path / "cut")


def test_bad_rows_are_reported_with_their_line_and_skipped(models, catalogue, tmp_path, capsys):
    shutil.copytree(catalogue.parent, tmp_path / "cat")
    tsv = tmp_path / "cat" / "catalogue.tsv"
    lines = tsv.read_text().splitlines()[:11]  # header + 10 rows
    (tmp_path / "cat" / "img" / "0003.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # corrupt, line 5
    lines[7] = "a person wearing a hat\timg/missing.png\thttps://shop.example/item/x"  # line 8: no such file
    lines[9] = "only one column"  # line 10: malformed
    tsv.write_text("\n".join(lines) + "\n")
    summary = build_index(DualEncoder.load(models["clip"], "cpu"), tsv, tmp_path / "idx", batch_size=4)
    assert summary["items"] == 7 and summary["bad_rows"] == 3
    err = capsys.readouterr().err
    assert f"{tsv}:5: " in err and "0003.png: cannot decode image" in err
    assert f"{tsv}:8: " in err and "missing.png: image file not found" in err
    assert f"{tsv}:10: " in err and "expected 3 tab-separated fields" in err
    assert "3 bad row(s) skipped" in err
    rejected = [json.loads(x) for x in (tmp_path / "idx" / "rejected.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rejected] == [f"{tsv}:5", f"{tsv}:8", f"{tsv}:10"]
    items = [json.loads(x) for x in (tmp_path / "idx" / "items.jsonl").read_text().splitlines()]
    assert [i["id"] for i in items] == ["0000", "0001", "0002", "0004", "0005", "0007", "0009"]


def test_a_different_query_model_is_refused(models, catalogue, tmp_path, monkeypatch):
    build_index(DualEncoder.load(models["clip"], "cpu"), catalogue, tmp_path / "idx")
    for other, why in (("clip_other", "different weights"), ("clip_dim32", "dim differs"),
                       ("siglip", "model_type differs")):
        with pytest.raises(IndexModelMismatch, match=why):
            search(tmp_path / "idx", "red top", model=str(models[other]))
    monkeypatch.setattr(index_mod, "CHUNK_ROWS", 7)  # several chunks through the public search as well
    assert len(search(tmp_path / "idx", "red top", k=20)["results"]) == 20


def test_siglip_index_from_a_dataset_directory(models, caption_data, tmp_path):
    enc = DualEncoder.load(models["siglip"], "cpu")
    summary = build_index(enc, caption_data, tmp_path / "idx", dtype="float16")
    assert summary["items"] == 320 and summary["dtype"] == "float16"
    idx = CatalogueIndex(tmp_path / "idx")
    assert idx.vectors.dtype == np.float16
    query = enc.embed_texts(QUERIES[:1])
    want, _ = _brute(np.asarray(idx.vectors), query[0], 5)
    assert [h["row"] for h in idx.search(query, 5)] == want.tolist()
    assert idx.item(0)["image"].startswith(str(caption_data))
