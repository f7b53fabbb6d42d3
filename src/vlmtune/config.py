"""Typed configuration of a run: every section is a dataclass, loaded from YAML plus dotted overrides.

    cfg = RunCfg.from_file("configs/builtin/tiny_fashion_vqa.yaml", ["--train.lr", "1e-3", "--name", "x"])
    cfg.save("runs/x/run_config.yaml")            # the resolved config, reloadable with RunCfg.from_file

Unknown keys fail loudly (a typo never silently falls back to a default); values are converted to the
declared field type; cross-field checks run at load time, not at step 5000. This module imports nothing of vlmtune
(docs/architecture.md): the checks that need the family or task registries (a metric of the task, packing by the
family) are `train.checks.check_run`, run wherever a RunCfg is built for use.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


@dataclass
class BuiltinCfg:
    """The built-in model: an HF LLaVA-architecture model (CLIP vision tower + Llama decoder) built from a config."""

    image_size: int = 64
    patch_size: int = 8
    vision_dim: int = 128
    vision_layers: int = 4
    text_dim: int = 128
    text_layers: int = 2
    heads: int = 4
    vocab_size: int = 640
    """Size of the byte-level BPE vocabulary trained at build time (special tokens included)."""


@dataclass
class QuantCfg:
    """A 4- or 8-bit quantised base model (QLoRA, through bitsandbytes): the language model's linear layers are
    stored quantised and frozen, LoRA adapters train in `compute_dtype`. The vision tower, projector and LM head stay
    in `model.dtype` (their weights are few; quantising them costs accuracy for no memory worth having)."""

    bits: int = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type; NF4 is the QLoRA paper's."""
    double_quant: bool = True
    """Quantise the quantisation constants too (QLoRA: ~0.4 bit per parameter saved)."""
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    skip_modules: list[str] | None = None
    """Module names (prefixes) kept unquantised; None: the family's vision and projector groups and the LM head."""

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise ValueError(f"model.quantization.bits must be 4 or 8, got {self.bits}")


@dataclass
class ModelCfg:
    family: str = "llava"
    path: str = "builtin"
    """A local directory or hub id loaded with the Auto classes; "builtin" builds the built-in model from `builtin`
    with random weights (for training from scratch)."""
    builtin: BuiltinCfg = field(default_factory=BuiltinCfg)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: str | None = None
    """"sdpa", "eager", "flash_attention_2", ...; None: what transformers picks (sdpa where the model supports it)."""
    trust_remote_code: bool = False
    revision: str | None = None
    quantization: QuantCfg | None = None
    """Load the base quantised to 4 or 8 bits (QLoRA; needs `lora.enabled` and the bitsandbytes package)."""


LOCAL_PREFIXES = ("./", "../", "~", "runs/")


def check_model_path(path: str | Path) -> None:
    """Refuse a model path that looks local but does not exist, before anything asks the Hugging Face hub for it.
    Without this, `runs/shop-clip` (when the run is `runs/fashion-clip`) ends in "We couldn't connect to
    'https://huggingface.co'" offline, or a 404 for a repository nobody meant online.

    Looks local: absolute, starting with ./ ../ ~ or runs/, inside a directory that exists (`models/x` with a
    `models/` here), or holding a path separator while not being a hub id (`owner/name`: one slash, letters, digits,
    `-_.`). A hub id or a plain name (`gpt2`, `builtin`) passes, and so does any path that exists. Every command that
    loads a model calls this where it resolves the path (runs, checkpoints, `model.path`, dual encoders, compose,
    translate, chart reasoners)."""
    text = str(path)
    p = Path(text).expanduser()
    if p.exists():
        return
    local = p.is_absolute() or text.startswith(LOCAL_PREFIXES) or text.replace(os.sep, "/").startswith(LOCAL_PREFIXES)
    has_parent = len(p.parts) > 1
    local = local or (has_parent and p.parent.is_dir())
    if not local and (os.sep in text or "/" in text):
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(text)
        except HFValidationError:
            local = True
    if not local:
        return
    hint = ""
    if has_parent and p.parent.is_dir():
        names = sorted(x.name for x in p.parent.iterdir() if x.is_dir() and not x.name.startswith("."))
        shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
        hint = f" ({p.parent} holds: {shown})" if names else f" ({p.parent} is empty)"
    raise FileNotFoundError(f"no such run directory: {text}{hint}")


@dataclass
class LoraCfg:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: list[str] | None = None
    """Module-name suffixes; None: the family's `lora_targets`."""


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


@dataclass
class TrainCfg:
    seed: int = 0
    max_steps: int = 1000
    """Optimizer steps."""
    micro_batch_size: int = 8
    global_batch_size: int = 8
    lr: float = 2e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    hflip: bool = False
    """Mirror each training image left-right with probability 0.5 (decided by seed, step and position, so a resumed
    run flips the same images). Only for data whose answers do not depend on left/right: a training text that
    mentions left or right stops the run."""
    freeze_vision: bool = False
    freeze_projector: bool | None = None
    """The projector between the vision tower and the language model (LLaVA's MLP, Qwen's merger, BLIP-2's Q-Former
    and language projection, ...). None (the default): frozen under LoRA, trained in a full fine-tune. A pretrained
    VLM's projector is already aligned; freezing it under LoRA forgot less and scored no worse in
    bench/projector_default.py (BENCHMARKS.md), keeps the frozen-vision cache on, and is what LLaMA-Factory
    (`freeze_multi_modal_projector`) and ms-swift (`freeze_aligner`) do. `false` trains it in full beside LoRA
    (peft `modules_to_save`), as LLaVA's own second stage does: for a model composed from parts (docs/compose.md)."""
    freeze_language: bool = False
    vision_cache: Literal["auto", "off"] = "auto"
    """Compute a frozen vision tower + projector once per image and reuse its output every epoch (exact: see
    train/vision_cache.py; auto stays off, saying why, when the vision side trains or images are augmented)."""
    group_by_length: bool = True
    """Put samples of similar length in the same micro-batch within each optimizer step (less padding; the step's
    samples and loss are unchanged). `padding` in metrics.jsonl is the padded fraction of the positions."""
    image_cache_mb: int = 2048
    """Keep up to this many MiB of decoded training images in memory across epochs (0: decode every time); the
    images are not re-read or re-decoded while they fit. Used when `vision_cache` is off: when it is on, it keeps
    each seen sample's encoded rows instead, which skip the preprocessing too."""
    packing: bool = False
    """Pack each micro-batch's samples back to back into one row with no padding (families with
    `ModelFamily.packing`: llava, llava_next, idefics3, smolvlm); the loss is the same. Pays off where attention
    is varlen (flash attention on GPU); with sdpa the packed row's attention is computed densely under a mask."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (non-reentrant): less memory for ~30% more compute."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    log_every: int = 10
    eval_every: int = 0
    """Evaluate on the val split every N steps (0: only at the end)."""
    save_every: int = 0
    """Save a resumable checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """How many step-N checkpoints to keep (the best one is kept separately)."""
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    progress: bool = True

    def grad_accum_steps(self, world: int = 1) -> int:
        return self.global_batch_size // (self.micro_batch_size * world)

    def __post_init__(self):
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError("train: global_batch_size must be a multiple of micro_batch_size")
        if self.image_cache_mb < 0:
            raise ValueError(f"train.image_cache_mb must be >= 0 (0: off), got {self.image_cache_mb}")


@dataclass
class EvalCfg:
    task: str = "vqa"
    metric: str = "vqa_accuracy"
    """Metric that picks the best checkpoint (higher is better)."""
    batch_size: int = 32
    max_new_tokens: int | Literal["auto"] = "auto"
    """The most tokens generated per answer. `auto`: sized from the gold texts of the data evaluated (captions'
    references, answers, targets), counted with the model's own tokenizer: their 99th percentile + the end token,
    plus 25% (at least 8 tokens), and never below 16 (`eval.runner.auto_max_new_tokens`). A fixed cap shorter than
    the data's captions cuts them off; predictions that reach the cap are counted and reported."""
    num_beams: int = 1
    max_samples: int | None = None
    """Evaluate on at most this many samples of the val split during training (None: all)."""
    lang: str | None = None
    """Caption language of samples whose meta has no `lang` (None: English): Russian captions get the Unicode
    tokenizer and METEOR's Russian stemmer instead of English rules. `vlmtune eval --lang` is the same option."""

    def __post_init__(self):
        if self.max_new_tokens != "auto" and self.max_new_tokens < 1:
            raise ValueError(f"eval.max_new_tokens must be >= 1 or auto, got {self.max_new_tokens}")


@dataclass
class ServeCfg:
    """`vlmtune serve`: the OpenAI-compatible server's batching and limits."""

    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None
    """The id reported by /v1/models and in responses (default: the model directory's name)."""
    api_key: str | None = None
    """Require `Authorization: Bearer <key>` (compared in constant time) everywhere but `/` and `/health`."""
    allowed_hosts: list[str] | None = None
    """Host header values served (`*`: any; `*.example.com`); None: `host` and the localhost names (any IP address
    too when `host` is 0.0.0.0 or ::). A web page whose own name resolves to this server (DNS rebinding) is refused."""
    allowed_origins: list[str] | None = None
    """Web origins (`https://app.example.com`, `*`) whose pages may call the API (CORS); None: the server's own page."""
    max_batch_size: int = 8
    """Requests grouped into one generate call."""
    max_wait_ms: float = 10.0
    """How long the first request of a batch waits for others to join."""
    max_body_bytes: int = 20 * 1024 * 1024
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_aspect_ratio: float = 50.0
    """Longest side / shortest side of an image: processors scale the short side up, so a thin image costs far more
    than its pixels."""
    max_resized_pixels: int = 40_000_000
    """Pixels of an image after the model's processor resizes (or pads) it, computed before the processor runs."""
    max_images: int = 4
    """Images per request."""
    max_tokens: int = 512
    """The largest `max_tokens` a request may ask for (and the default when it asks for none: 64)."""
    max_prompt_tokens: int = MAX_PROMPT_LENGTH
    """Prompt length limit, image tokens included."""
    timeout_s: float = 120.0
    """Per-request limit, queueing included (504 after it)."""
    body_timeout_s: float = 30.0
    """A request body must have arrived this long after the request began (408 and the connection closed after it)."""
    allow_remote_images: bool = False
    """Fetch http(s) image URLs (never from private, loopback or link-local addresses)."""
    max_new_tokens_default: int = 64
    retrieve_k: int = 4
    """With `--index`: catalogue items attached to each chat answer (a request may ask for others with
    `"vlmtune": {"k": N}`, 0 for none)."""
    max_retrieve_k: int = 50
    """The largest k a chat request or `POST /v1/retrieve` may ask for."""
    device: str = "auto"
    """Where the model runs: auto (the GPU when there is one), cuda, cuda:N, mps or cpu (models/device.py)."""
    dtype: str | None = None
    """float32, bfloat16 or float16; None: the dtype the run trained in."""

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise ValueError("serve: max_batch_size must be >= 1")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("serve: the API key is empty, which would serve without one; give a key, or leave "
                             "--api-key out to serve without a key")
        if self.max_aspect_ratio < 1:
            raise ValueError(f"serve: max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}")
        if self.body_timeout_s <= 0:
            raise ValueError(f"serve: body_timeout_s must be > 0, got {self.body_timeout_s}")
        if not 0 <= self.retrieve_k <= self.max_retrieve_k:
            raise ValueError(f"serve: the items per answer (--k {self.retrieve_k}) must be between 0 and "
                             f"max_retrieve_k ({self.max_retrieve_k})")


@dataclass
class ProbeCfg:
    """A dataset scored for the base model before step 0 and at every eval, to measure forgetting."""

    name: str
    path: str | None = None
    synth: SynthCfg | None = None
    split: str | None = "val"
    task: str = "vqa"
    metric: str = "vqa_accuracy"
    max_samples: int | None = None

    def __post_init__(self):
        if self.path is None and self.synth is None:
            raise ValueError(f"probes[{self.name}]: set `path` or `synth`")


@dataclass
class ForgettingCfg:
    max_drop: float | None = None
    """Largest allowed drop of any probe below the base model, in points (100 x the metric: VQA accuracy 0.62 is
    62 points). A checkpoint beyond it is never chosen as best. None: no gate (drops are still measured)."""
    stop_on_violation: bool = False
    """End training at the first eval whose probes break the gate."""

    def __post_init__(self):
        if self.max_drop is not None and self.max_drop < 0:
            raise ValueError(f"forgetting.max_drop must be >= 0 points, got {self.max_drop}")
        if self.stop_on_violation and self.max_drop is None:
            raise ValueError("forgetting.stop_on_violation needs forgetting.max_drop")


@dataclass
class RunCfg:
    name: str = "run"
    out_dir: str = "runs"
    model: ModelCfg = field(default_factory=ModelCfg)
    lora: LoraCfg = field(default_factory=LoraCfg)
    data: DataCfg = field(default_factory=lambda: DataCfg(synth=SynthCfg()))
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    probes: list[ProbeCfg] = field(default_factory=list)
    forgetting: ForgettingCfg = field(default_factory=ForgettingCfg)
    report: bool = True
    """Write report.html in the run directory at the end of training."""

    def __post_init__(self):
        names = [p.name for p in self.probes]
        if len(set(names)) != len(names):
            raise ValueError(f"probes: names must be unique, got {names}")
        if self.forgetting.max_drop is not None and not self.probes:
            raise ValueError("forgetting.max_drop needs at least one entry in `probes`")
        # the checks that need the task and family registries: train.checks.check_run (config imports nothing)
        if self.model.quantization is not None:
            if not self.lora.enabled:
                raise ValueError("model.quantization: a quantised base cannot be trained itself; set lora.enabled "
                                 "(QLoRA) or remove model.quantization")
            if self.model.path == "builtin":
                raise ValueError("model.quantization: the built-in model is built with random weights; quantise a "
                                 "saved or downloaded model (model.path)")
        half = {"bfloat16": "bf16", "float16": "fp16"}.get(self.model.dtype)
        if half and self.train.mixed_precision != half:
            raise ValueError(f"model.dtype {self.model.dtype}: the trainable parameters are kept in float32 and the "
                             f"frozen {self.model.dtype} base computes under autocast; set train.mixed_precision: "
                             f"{half} (now {self.train.mixed_precision!r})")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    @classmethod
    def from_dict(cls, d: dict) -> RunCfg:
        return _build(cls, _removed_keys(_old_ocr_keys(d)), "")

    @classmethod
    def from_file(cls, path: str | Path | None, overrides: list[str] | None = None) -> RunCfg:
        d = yaml.safe_load(Path(path).read_text()) if path else {}
        d = _old_ocr_keys(d or {})  # before the overrides: `--data.ocr.langs` on a file of the old form
        for key, value in parse_overrides(overrides or []):
            _set_dotted(d, key, value)
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        tmp.replace(path)


def _removed_keys(d: Any) -> Any:
    """`train.num_workers` is gone: it never did anything (samples are loaded in the training process). Every
    run_config.yaml saved before has `num_workers: 0`, dropped silently so old runs still load; any other value
    is dropped with a FutureWarning saying so, where an unknown key would be an error."""
    train = d.get("train") if isinstance(d, dict) else None
    if not isinstance(train, dict) or "num_workers" not in train:
        return d
    value = train["num_workers"]
    if str(value) != "0":
        warnings.warn(f"train.num_workers: {value} does nothing and is ignored (vlmtune loads samples in the "
                      "training process); remove it from the config", FutureWarning, stacklevel=3)
    return {**d, "train": {k: v for k, v in train.items() if k != "num_workers"}}


OLD_OCR_KEYS = ("langs", "psm", "into", "template", "max_chars", "min_conf", "timeout_s")
"""`data.ocr_<key>`: the OCR settings before they became the `data.ocr` section (OcrCfg)."""


def _old_ocr_keys(d: Any) -> Any:
    """A config of the form before `data.ocr` was a section, read until 0.2: older recipes and the run_config.yaml
    of every older run (which saves `ocr: null` and all seven `ocr_<key>`s). `ocr: tesseract` with `ocr_langs: rus`
    -> `ocr: {engine: tesseract, langs: rus}` (a FutureWarning names the new keys); with `ocr` off, the flat keys
    are checked and dropped, as they did nothing. A flat key beside a `data.ocr` section joins it (an old override
    on a new file); the same setting twice is an error."""
    data = d.get("data") if isinstance(d, dict) else None
    flat = {key: data[f"ocr_{key}"] for key in OLD_OCR_KEYS if f"ocr_{key}" in data} if isinstance(data, dict) else {}
    ocr = data.get("ocr") if isinstance(data, dict) else None
    if isinstance(ocr, str) and ocr.lower() in ("null", "none"):  # `--data.ocr null`
        ocr = None
    if not flat and not isinstance(ocr, str):
        return d
    data = {k: v for k, v in data.items() if not (k.startswith("ocr_") and k[4:] in OLD_OCR_KEYS)}
    if ocr is None:
        _build(OcrCfg, flat, "data.ocr.")  # a value that never worked still fails
        return {**d, "data": {**data, "ocr": None}}
    if isinstance(ocr, str):
        new = ", ".join(f"{k}: {v!r}" for k, v in flat.items())
        warnings.warn(f"data.ocr: {ocr} with data.ocr_<key> settings is the old form, read until vlmtune 0.2; write "
                      f"data: {{ocr: {{engine: {ocr}{', ' + new if new else ''}}}}} (data.ocr.langs, data.ocr.psm, "
                      "...: docs/ocr.md)", FutureWarning, stacklevel=3)
        ocr = {"engine": ocr}
    if isinstance(ocr, dict):
        twice = sorted(set(flat) & set(ocr))
        if twice:
            raise ValueError(f"data: {', '.join(f'ocr_{k} and ocr.{k}' for k in twice)} set the same thing; keep "
                             f"data.ocr.{twice[0]}")
        ocr = {**ocr, **flat}
    return {**d, "data": {**data, "ocr": ocr}}


def parse_overrides(args: list[str]) -> list[tuple[str, str]]:
    """`--train.lr 1e-3` or `--train.lr=1e-3` -> [("train.lr", "1e-3")]."""
    out = []
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise ValueError(f"expected --section.key VALUE, got {a!r}")
        if "=" in a:
            key, value = a[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ValueError(f"{a} needs a value")
            key, value = a[2:], args[i + 1]
            i += 2
        out.append((key.replace("-", "_"), value))
    return out


def _set_dotted(d: dict, key: str, value: str) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        if d.get(p) is None:
            d[p] = {}
        d = d[p]
    d[parts[-1]] = _RawOverride(value)


class _RawOverride(str):
    """A string from the command line, converted to the field's type when the config is built."""


def build_section(cls, d: Any, where: str = ""):
    """The dataclass `cls` from a mapping (a YAML file's, with flag values), typed and checked as every section of a
    run config is: unknown keys are an error naming the known ones, "1e-5" becomes a float, a Literal's value is
    checked. For configs that are not a RunCfg (`retrieve train`'s RetrievalTrainCfg)."""
    return _build(cls, d, where)


def _build(cls, d: Any, where: str):
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise ValueError(f"{where.rstrip('.') or 'config'}: expected a mapping, got {d!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ValueError(f"{where.rstrip('.') or 'config'}: unknown key(s) {sorted(unknown)}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(hints[name], value, f"{where}{name}") for name, value in d.items()}
    return cls(**kwargs)


def _convert(tp, value: Any, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, _RawOverride) and value.lower() in ("null", "none")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        for tp_ in inner[:-1]:  # `int | Literal["auto"]`: the first type the value converts to
            try:
                return _convert(tp_, value, where)
            except ValueError:
                pass
        return _convert(inner[-1], value, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, _RawOverride):
            raise ValueError(f"{where}: is a section; set its keys (--{where}.KEY VALUE)")
        return _build(tp, value, where + ".")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where}: {value!r} is not one of {list(args)}")
        return str(value)
    if isinstance(value, _RawOverride):
        if tp is str:
            return str(value)
        value = yaml.safe_load(value)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        try:
            out = tp(value)
        except ValueError:
            raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and float(value) != out:
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value
