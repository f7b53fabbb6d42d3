"""The data section of a run: `DataCfg`, with its weighted sources (`SourceCfg`), synthetic worlds (`SynthCfg`)
and OCR enrichment (`OcrCfg`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class SynthCfg:
    """Generate the dataset with a synthetic world instead of reading one (self-contained recipes)."""

    world: str = "fashion"
    n: int = 3000
    seed: int = 0
    size: int = 64
    caption_fraction: float = 0.0
    questions: list[str] | None = None
    """Question types to ask (e.g. [top_colour, bottom_colour]); None: all of the world's."""
    caption_turn: bool = False
    """Follow every train-split question with a caption turn (val/test keep the single question)."""
    val: float = 0.1
    test: float = 0.1

    def default_path(self) -> str:
        qs = "-" + "+".join(self.questions) if self.questions else ""
        cap = f"-cap{self.caption_fraction:g}" if self.caption_fraction else ""
        turn = "-capturn" if self.caption_turn else ""
        return f"data/{self.world}-n{self.n}-seed{self.seed}-size{self.size}{cap}{turn}{qs}"


@dataclass
class SourceCfg:
    """One weighted source of training data (domain or replay); see `data.sources`."""

    name: str
    path: str | None = None
    synth: SynthCfg | None = None
    split: str | None = "train"
    weight: float = 1.0

    def __post_init__(self):
        if self.path is None and self.synth is None:
            raise ValueError(f"data.sources[{self.name}]: set `path` or `synth`")
        if not self.weight > 0:
            raise ValueError(f"data.sources[{self.name}]: weight must be > 0, got {self.weight}")


PSM_MODES = (1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13)
"""Tesseract page segmentation modes that produce text (0 is orientation detection only; 2 is not implemented)."""
_LANGS = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\+[A-Za-z][A-Za-z0-9_]*)*")


@dataclass
class OcrCfg:
    """`data.ocr`: read the text in each image with tesseract (`make ocr` installs it) and give it to the model, when
    the data is loaded for training and for `vlmtune eval/predict/serve --model RUN` (from the run's config), cached
    per image in DATASET/.cache/ocr (data/ocr.py, docs/ocr.md). `vlmtune data ocr` takes the same settings as flags.

        data: {path: data/memes, ocr: {langs: rus+eng, min_conf: 30}}     # or --data.ocr.langs rus+eng
    """

    engine: Literal["tesseract"] = "tesseract"
    langs: str = "eng"
    """Tesseract languages joined by "+", the data's main language first (e.g. "rus+eng", "por+eng+rus")."""
    psm: int = 3
    """Tesseract page segmentation mode (3: automatic; 6: one block of text; 11: sparse text, e.g. memes)."""
    into: Literal["prompt", "meta"] = "prompt"
    """prompt: the text is put into the first user turn with `template` (train and eval see the same prompt), and
    kept in sample.meta["ocr"]; meta: it is only stored in sample.meta["ocr"] (the model never sees it)."""
    template: str = "Text in the image: {text}\n{prompt}"
    """How the first user turn is rewritten: {text} is the OCR text, {prompt} the turn's own text. Images with no
    text found leave the prompt unchanged."""
    max_chars: int = 300
    """The OCR text is cut at a word boundary to at most this many characters (it costs prompt tokens)."""
    min_conf: float = 0.0
    """Words tesseract is less confident about (0-100) are dropped: noise from textures and borders."""
    timeout_s: float = 60.0
    """Per image; an image that takes longer is a bad record."""

    def __post_init__(self):
        if not _LANGS.fullmatch(self.langs):
            raise ValueError(f"data.ocr.langs: {self.langs!r} is not tesseract languages joined by '+' (e.g. "
                             "'rus+eng')")
        if self.psm not in PSM_MODES:
            raise ValueError(f"data.ocr.psm: {self.psm} is not a tesseract page segmentation mode that reads text "
                             f"{list(PSM_MODES)}")
        if self.into not in ("prompt", "meta"):
            raise ValueError(f"data.ocr.into: {self.into!r} is not one of ['prompt', 'meta']")
        for name in ("{text}", "{prompt}"):
            if name not in self.template:
                raise ValueError(f"data.ocr.template: {self.template!r} must contain {name}")
        try:
            self.template.format(text="", prompt="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"data.ocr.template: {self.template!r} may only use {{text}} and {{prompt}} (write a "
                             f"literal brace as {{{{ or }}}}): {type(e).__name__}: {e}") from None
        if self.max_chars < 1:
            raise ValueError(f"data.ocr.max_chars: must be >= 1, got {self.max_chars}")
        if not 0 <= self.min_conf <= 100:
            raise ValueError(f"data.ocr.min_conf: a tesseract confidence is 0-100, got {self.min_conf}")
        if not self.timeout_s > 0:
            raise ValueError(f"data.ocr.timeout_s: must be > 0, got {self.timeout_s}")


@dataclass
class VideoCfg:
    """`data.video`: how a sample's videos become frames (data/video.py `sample_frames`), the same in training,
    evaluation, prediction and serving (a run's config carries it to `--model RUN`):

        data: {path: data/clips, video: {fps: 2, max_frames: 8, max_pixels: 50176}}

    Frames are taken at `fps` (the first frame at or after each k/fps seconds); if that gives more than
    `max_frames`, `max_frames` of them evenly spaced over the clip are kept; each frame is then scaled down (aspect
    kept) to at most `max_pixels` pixels. Deterministic: a sample gets the same frames every epoch."""

    fps: float | None = 2.0
    """Frames per second of video time to sample; None: every frame of the video."""
    max_frames: int = 8
    """At most this many frames per video (evenly spaced over the sampled ones when there are more)."""
    max_pixels: int | None = 200_704
    """Each frame is scaled down (aspect kept) to at most this many pixels (448x448); None: frames kept as decoded."""
    frame_fps: float = 1.0
    """The rate of a video given as frame images (a directory or a `frames` list) with no `fps` of its own."""

    def __post_init__(self):
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"data.video.fps: must be > 0 (or null: every frame), got {self.fps}")
        if self.max_frames < 1:
            raise ValueError(f"data.video.max_frames: must be >= 1, got {self.max_frames}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError(f"data.video.max_pixels: must be >= 1 (or null), got {self.max_pixels}")
        if not self.frame_fps > 0:
            raise ValueError(f"data.video.frame_fps: must be > 0, got {self.frame_fps}")


MAX_PROMPT_LENGTH = 4096
"""The default prompt budget at inference, image tokens included: `Predictor.max_length` and
`serve.max_prompt_tokens` (training's is `data.max_length`)."""


@dataclass
class DataCfg:
    path: str | None = None
    """Dataset directory (manifest.jsonl + images/). With `synth` set and no manifest there yet, it is generated."""
    synth: SynthCfg | None = None
    train_split: str | None = "train"
    """Split used for training; None: every sample."""
    val_split: str | None = "val"
    max_length: int = 512
    """Samples longer than this (image tokens included) are rejected, never truncated."""
    max_text_chars: int = 100_000
    """Characters in one text (a message, an answer, a reference); a longer one is a bad record (found before step
    0, like every check of `vlmtune data check`): megabytes of text are a mistake, and would be tokenized whole."""
    skip_bad: bool = False
    """Skip malformed records (written to rejected.jsonl) instead of stopping."""
    answer_targets: Literal["single", "sampled", "weighted"] = "single"
    """What a training sample with several human answers (`answers`: VQAv2, VizWiz) is trained to say. single: its
    last assistant turn (the importer's most common answer); sampled: one answer drawn by agreement each time the
    sample is drawn; weighted: every distinct answer, each row's loss weighted by agreement / number of answers.
    See train/targets.py."""
    sources: list[SourceCfg] | None = None
    """Weighted training mix, e.g. the domain plus replay of general data (text-only samples allowed). Each
    optimizer step takes from source i a share weight_i / sum(weights) of the global batch, exactly (see
    `data/mix.py`); loss and sample counts are logged per source. Validation still uses `path`/`synth`."""
    ocr: OcrCfg | None = None
    """Read the text in each image with tesseract (see OcrCfg); None: off."""
    video: VideoCfg = field(default_factory=VideoCfg)
    """How videos are sampled into frames (see VideoCfg): fps 2, at most 8 frames, at most 448x448 pixels each."""

    def __post_init__(self):
        if self.path is None and self.synth is None:
            raise ValueError("data: set `path` (a dataset directory) or `synth` (a synthetic world)")
        if self.max_text_chars < 1:
            raise ValueError(f"data.max_text_chars must be at least 1, got {self.max_text_chars}")
        if self.sources is not None:
            names = [s.name for s in self.sources]
            if not names:
                raise ValueError("data.sources: empty list (leave it out to train on `path`)")
            if len(set(names)) != len(names):
                raise ValueError(f"data.sources: names must be unique, got {names}")
