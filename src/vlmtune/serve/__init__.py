"""`vlmtune serve`: the OpenAI-compatible server (app.py), its dynamic batcher (batcher.py) and web page (static/).

Importing `vlmtune` never imports FastAPI; this package does, when serving.
"""

from __future__ import annotations

from pathlib import Path

from vlmtune.config import ServeCfg


def load_predictor(model: str | Path, cfg: ServeCfg, batch_size: int):
    """The Predictor `vlmtune predict` would build for `model`, with the server's prompt limit."""
    from vlmtune.infer import Predictor

    return Predictor.from_path(model, device=cfg.device, dtype=cfg.dtype, batch_size=batch_size,
                               max_length=cfg.max_prompt_tokens)


def build_app(model: str | Path, cfg: ServeCfg, background: bool = True, on_load_error=None):
    from vlmtune.data.ocr import find_tesseract, model_ocr_options
    from vlmtune.serve.app import create_app
    from vlmtune.train.checkpoint import resolve_model_dir

    name = cfg.model_name or Path(model).resolve().name
    resolve_model_dir(model)  # a wrong path fails now, not in the loading thread
    ocr = model_ocr_options(model)  # trained with data.ocr into the prompt: requests get the same prompt
    ocr = ocr if ocr is not None and ocr.into == "prompt" else None
    if ocr is not None:
        find_tesseract(ocr.langs)  # a missing tesseract fails now, not at the first request
    return create_app(lambda: load_predictor(model, cfg, cfg.max_batch_size), cfg, name, background, ocr,
                      on_load_error)


def serve(model: str | Path, cfg: ServeCfg) -> None:
    try:
        import uvicorn
    except ImportError:
        raise ValueError("vlmtune serve needs FastAPI and uvicorn: pip install 'vlmtune[serve]'") from None
    import logging

    server: uvicorn.Server | None = None
    failed: list[str] = []

    def stop(error: str) -> None:  # from the loading thread: the model will never load, so the server stops
        logging.getLogger("vlmtune.serve").error("could not load the model from %s: %s", model, error)
        failed.append(error)
        if server is not None:
            server.should_exit = True

    app = build_app(model, cfg, on_load_error=stop)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="info"))
    if not failed:  # a load that failed before this point never binds the port
        print(f"vlmtune serve: http://{cfg.host}:{cfg.port}/ (API at /v1, health at /health)", flush=True)
        server.run()
    if failed:
        raise ValueError(f"could not load the model from {model}: {failed[0]}")
