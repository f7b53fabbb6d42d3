"""`vlmtune serve`: the OpenAI-compatible server (app.py), its dynamic batcher (batcher.py) and web page (static/).

    vlmtune serve --model runs/shop-chat --index indexes/shop      # a shop assistant: answers + catalogue items

Importing `vlmtune` never imports FastAPI; this package does, when serving.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vlmtune.config import ServeCfg
from vlmtune.data.images import ImageError, resolve_inside
from vlmtune.data.ocr import find_tesseract
from vlmtune.data.sample import Sample
from vlmtune.data.store import MANIFEST, iter_records
from vlmtune.infer import Predictor
from vlmtune.retrieval.encoder import DualEncoder
from vlmtune.retrieval.index import CatalogueIndex, Retriever
from vlmtune.runs import model_ocr_options, resolve_model_dir, run_config_of
from vlmtune.train.checks import check_run

EXAMPLES = 6
"""Example images on the web page."""
SCAN_SAMPLES = 10_000
"""Samples of a run's dataset read, at most, to find its caption prompt and example images (a start-up cost)."""


def run_datasets(model: str | Path) -> list[Path]:
    """The datasets a run trained on (`data.path` or its synth directory, then `data.sources`) that are here."""
    cfg = run_config_of(model)
    if cfg is None:
        return []
    paths = [cfg.data.path or (cfg.data.synth.default_path() if cfg.data.synth else None)]
    paths += [s.path or (s.synth.default_path() if s.synth else None) for s in cfg.data.sources or []]
    return [Path(p) for p in paths if p and (Path(p) / MANIFEST).is_file()]


def page_for(model: str | Path, index=None):
    """The web page's extras for `model`: the Describe button's prompt, the text of the last user turn of the first
    caption sample in the run's data (what the run trained to caption with; vlmtune's default otherwise), and
    example images: catalogue photos spread over the `index` (a CatalogueIndex), else images of the run's data,
    val and test splits first."""
    from vlmtune.serve.app import Page  # lazy: FastAPI is the optional `serve` extra (see serve())

    page, found = Page(), {"val": [], "test": [], "other": []}
    for root in run_datasets(model):
        for n, rec in enumerate(iter_records(root, check_images=False)):
            if n >= SCAN_SAMPLES or (page.caption_prompt_from != "default" and len(found["val"]) >= EXAMPLES):
                break
            if not isinstance(rec, Sample):
                continue
            if rec.task == "caption" and page.caption_prompt_from == "default" and rec.question.strip():
                page.caption_prompt = rec.question.strip()
                page.caption_prompt_from = f"{root / MANIFEST} (sample {rec.id})"
            if rec.images:
                try:
                    path = resolve_inside(root, rec.images[0])
                except ImageError:
                    continue
                found[rec.split if rec.split in ("val", "test") else "other"].append(path)
    if index is not None:
        n = len(index)
        rows = sorted({i * n // EXAMPLES for i in range(min(EXAMPLES, n))})
        page.examples = [Path(index.item(r)["image"]) for r in rows]
    else:
        seen: dict[Path, None] = {}
        for path in found["val"] + found["test"] + found["other"]:
            if path.is_file():
                seen.setdefault(path)
        page.examples = list(seen)[:EXAMPLES]
    return page


def load_predictor(model: str | Path, cfg: ServeCfg, batch_size: int):
    """The Predictor `vlmtune predict` would build for `model`, with the server's prompt limit."""
    return Predictor.from_path(model, device=cfg.device, dtype=cfg.dtype, batch_size=batch_size,
                               max_length=cfg.max_prompt_tokens)


def build_app(model: str | Path, cfg: ServeCfg, background: bool = True, on_load_error=None,
              index: str | Path | None = None):
    """The app of `vlmtune serve`; with `index` (a `vlmtune retrieve index` directory) chat answers carry its items.
    Wrong paths fail here, before the loading thread starts."""
    name = cfg.model_name or Path(model).resolve().name
    resolve_model_dir(model)  # a wrong path fails now, not in the loading thread
    run = run_config_of(model)
    if run is not None:
        check_run(run)  # a run read back is refused as `vlmtune train` refuses its config
    ocr = model_ocr_options(model)  # trained with data.ocr into the prompt: requests get the same prompt
    ocr = ocr if ocr is not None and ocr.into == "prompt" else None
    if ocr is not None:
        find_tesseract(ocr.langs)  # a missing tesseract fails now, not at the first request
    retriever = catalogue = None
    if index is not None:
        catalogue = CatalogueIndex(index)  # a wrong directory fails now; its model loads with the VLM

        def retriever():
            return Retriever(catalogue, _index_encoder(catalogue, cfg.device))

    from vlmtune.serve.app import create_app  # lazy: FastAPI is the optional `serve` extra (see serve())

    return create_app(lambda: load_predictor(model, cfg, cfg.max_batch_size), cfg, name, background, ocr,
                      on_load_error, retriever, page_for(model, catalogue))


def _index_encoder(index, device: str):
    """The index's own dual encoder, checked against the index."""
    encoder = DualEncoder.load(index.meta["model"], device)
    index.check_model(encoder)
    return encoder


def serve(model: str | Path, cfg: ServeCfg, index: str | Path | None = None) -> None:
    try:
        import uvicorn
    except ImportError:
        raise ValueError("vlmtune serve needs FastAPI and uvicorn: pip install 'vlmtune[serve]'") from None

    server: uvicorn.Server | None = None
    failed: list[str] = []

    def stop(error: str) -> None:  # from the loading thread: the model will never load, so the server stops
        logging.getLogger("vlmtune.serve").error("could not load the model from %s: %s", model, error)
        failed.append(error)
        if server is not None:
            server.should_exit = True

    app = build_app(model, cfg, on_load_error=stop, index=index)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="info"))
    if not failed:  # a load that failed before this point never binds the port
        shop = f", catalogue {index} with {cfg.retrieve_k} items per answer" if index is not None else ""
        print(f"vlmtune serve: http://{cfg.host}:{cfg.port}/ (API at /v1, health at /health{shop})", flush=True)
        server.run()
    if failed:
        raise ValueError(f"could not load the model from {model}: {failed[0]}")
