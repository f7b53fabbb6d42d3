"""Training/eval datasets: a manifest's samples of one split, or a synthetic world generated on first use."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vlmtune.data.ocr import enrich_samples
from vlmtune.data.store import MANIFEST, BadRecord, add_rejected, read_samples, write_dataset
from vlmtune.data.synthetic import CAPTION_PROMPTS, WORLDS, with_caption_turn
from vlmtune.data.synthetic_video import CAPTION_PROMPT as VIDEO_PROMPT

if TYPE_CHECKING:
    from vlmtune.config import OcrCfg


def synthesize(out: str | Path, world: str, n: int, seed: int = 0, size: int = 64, caption_fraction: float = 0.0,
               val: float = 0.1, test: float = 0.1, questions: list[str] | None = None,
               caption_turn: bool = False) -> dict[str, int]:
    """Draw `n` samples of a synthetic world into `out` with train/val/test splits (different images).

    `caption_turn`: every train-split question is followed by a caption turn (see `synthetic.with_caption_turn`);
    val and test keep the single question they are scored on."""
    if world not in WORLDS:
        raise ValueError(f"unknown synthetic world {world!r}; known: {sorted(WORLDS)}")
    n_val, n_test = round(n * val), round(n * test)
    n_train = n - n_val - n_test
    counts = {"train": n_train, "val": n_val, "test": n_test}

    def items():
        for i, (sample, image) in enumerate(
            WORLDS[world](n, seed=seed, size=size, caption_fraction=caption_fraction, questions=questions)
        ):
            sample.split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            if caption_turn and sample.split == "train":
                prompt = VIDEO_PROMPT if sample.videos else CAPTION_PROMPTS[i % len(CAPTION_PROMPTS)]
                sample = with_caption_turn(sample, prompt)
            yield (sample, [], [image]) if sample.videos else (sample, [image])  # a video world: a clip's frames

    write_dataset(out, items())
    return counts


def prepare_dataset(path: str | None, synth) -> Path:
    """A dataset directory (`path`, or a name derived from the SynthCfg `synth`), generated from the synthetic
    world when it has no manifest yet."""
    root = Path(path or synth.default_path())
    if not (root / MANIFEST).is_file():
        if synth is None:
            raise FileNotFoundError(f"{root}: no {MANIFEST}")
        print(f"generating {synth.n} samples of the {synth.world!r} world into {root}", file=sys.stderr)
        synthesize(root, **dataclasses.asdict(synth))  # SynthCfg's fields are synthesize's parameters
    return root


def prepare_data_dir(data_cfg) -> Path:
    """The dataset directory of a DataCfg, generated from its synthetic world when it does not exist yet."""
    return prepare_dataset(data_cfg.path, data_cfg.synth)


MAX_NAMED = 10
"""Bad records whose lines one stopping error names after the first (all are counted)."""


def naming_all(bad: list[BadRecord]) -> BadRecord:
    """One error for a list of bad records: the first in full, then how many more and their lines."""
    first, rest = bad[0], bad[1:]
    more = ""
    if rest:
        lines = ", ".join(str(b.line) for b in rest[:MAX_NAMED]) + (" ..." if len(rest) > MAX_NAMED else "")
        more = f"; and {len(rest)} more bad record(s), on line(s) {lines} (`vlmtune data check` lists each)"
    return BadRecord(first.file, first.line, first.reason + more, first.raw)


def load_split(root: Path, split: str | None, skip_bad: bool, rejected_path: Path | None = None,
               ocr: OcrCfg | None = None, limit: int | None = None, source: str | None = None):
    """Samples of one split (the first `limit` of them); bad records stop the run (one error naming them all) unless
    `skip_bad`, then they are added to `rejected_path`, each naming `source` (the caller starts that file afresh: a
    run that loads several sources, a val split and probes lists the bad records of all of them).

    `ocr`: the text in each image is read (cached per image, see data/ocr.py) and put into the prompt or the meta.
    This is the one place it happens, for training and for eval/predict of a run trained with it."""
    try:
        samples, bad = read_samples(root, split, skip_bad=True)  # all of them, to name them all
        if bad and not skip_bad:
            raise naming_all(bad)
        samples = samples[:limit] if limit else samples  # before OCR: --limit 10 reads 10 samples' images
        if ocr is not None and samples:
            samples, ocr_bad, _ = enrich_samples(samples, root, ocr, skip_bad=skip_bad)
            bad += ocr_bad
    except BadRecord as e:
        raise BadRecord(e.file, e.line, e.reason + " (use --data.skip_bad true to skip bad records)", e.raw) from None
    if bad:
        print(f"{root}: skipped {len(bad)} bad record(s)" + (f", listed in {rejected_path}" if rejected_path else ""),
              file=sys.stderr)
        if rejected_path:
            add_rejected(rejected_path, bad, source)
    if not samples:
        raise ValueError(f"{root}: no samples in split {split!r}")
    return samples
