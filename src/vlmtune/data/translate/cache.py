"""The translation cache of `vlmtune data translate`: DIR/.cache/translate/<key>.jsonl, appended batch by batch, so an
interrupted run continues and a finished one re-runs without the model (`translate_missing`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from vlmtune.data.translate.model import Translator

CACHE_DIR = Path(".cache") / "translate"


class TranslationCache:
    """Translations of one model + language pair: DIR/.cache/translate/<key>.jsonl, one {"text", "translation",
    "finish"} row per distinct source text, appended batch by batch (a torn last line is ignored); <key>.json beside
    it says which model and languages the key stands for."""

    def __init__(self, directory: Path, key: str, stamp: dict):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{key}.jsonl"
        info = directory / f"{key}.json"
        if not info.exists():
            info.write_text(json.dumps(stamp, indent=1, default=str) + "\n", encoding="utf-8")
        self.rows: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.rows[row["text"]] = row
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        if self.path.exists() and not self.path.read_bytes().endswith(b"\n"):
            with open(self.path, "a", encoding="utf-8") as f:  # end a torn line so the next rows stand alone
                f.write("\n")

    def __contains__(self, text: str) -> bool:
        return text in self.rows

    def __getitem__(self, text: str) -> dict:
        return self.rows[text]

    def add(self, rows: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.rows[row["text"]] = row
            f.flush()
            os.fsync(f.fileno())


def translate_missing(translator: Translator, texts: list[str], cache: TranslationCache,
                      progress: bool = False) -> int:
    """Translate the texts not yet in `cache`, longest first in batches, appending each batch to the cache as it
    completes; returns how many were translated."""
    todo = sorted({t for t in texts if t.strip() and t not in cache})
    lengths = dict(zip(todo, translator.n_tokens(todo), strict=True))
    todo.sort(key=lambda t: -lengths[t])  # similar lengths share a batch: little padding
    bar = None
    if progress and todo:
        bar = tqdm(total=len(todo), desc="translate", file=sys.stderr)
    try:
        for i in range(0, len(todo), translator.batch_size):
            batch = todo[i : i + translator.batch_size]
            done = translator.generate(batch)
            cache.add([{"text": t, "translation": tr, "finish": finish}
                       for t, (tr, finish) in zip(batch, done, strict=True)])
            if bar:
                bar.update(len(batch))
    finally:
        if bar:
            bar.close()
    return len(todo)
