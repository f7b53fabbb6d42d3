"""The training and evaluation sections of a run: `TrainCfg`, `EvalCfg`, the forgetting probes (`ProbeCfg`) and
their gate (`ForgettingCfg`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from vlmtune.config.data import SynthCfg


@dataclass
class RewardCfg:
    """One term of GRPO's reward (`train.rewards`): exactly one of `metric`, `format`, `function`, times `weight`."""

    metric: str | None = None
    """A per-answer metric of vlmtune's (eval/metrics: vqa_accuracy, relaxed_accuracy, anls, exact_match) of the
    completion against the sample's gold answers (`Sample.gold()`)."""
    format: str | None = None
    """A regular expression the whole stripped completion must match (1, else 0); an empty completion scores 0."""
    function: str | None = None
    """"module:function", a Python function `reward(sample, completion) -> float`, imported at start-up."""
    weight: float = 1.0

    def __post_init__(self):
        given = [k for k in ("metric", "format", "function") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"train.rewards: each reward is one of metric / format / function, got {given or 'none'}")
        if self.format is not None:
            try:
                re.compile(self.format)
            except re.error as e:
                raise ValueError(f"train.rewards format {self.format!r}: not a regular expression ({e})") from None
        if self.function is not None and not re.fullmatch(r"[\w.]+:\w+", self.function):
            raise ValueError(f"train.rewards function {self.function!r}: expected 'module:function'")

    @property
    def name(self) -> str:
        """The reward's name in the log (`reward/NAME`)."""
        return self.metric or (f"format:{self.format}" if self.format is not None else self.function)


@dataclass
class TrainCfg:
    method: Literal["sft", "dpo", "grpo"] = "sft"
    """sft: learn the answers (cross-entropy on the answer tokens). dpo: learn from preference pairs, samples with
    `chosen` and `rejected` answers to their prompt (Direct Preference Optimisation against the model as it was
    before training, whose answer log-probabilities are computed once and kept in the run: train/preference.py)."""
    dpo_beta: float = 0.1
    """DPO's beta: how far the policy may move from the reference (larger: closer to it)."""
    dpo_label_smoothing: float = 0.0
    """The assumed share of pairs whose preference is wrong (conservative DPO); 0: plain DPO."""
    grpo_generations: int = 8
    """GRPO: completions sampled per prompt (a group; its advantages are relative to its own rewards)."""
    grpo_temperature: float = 1.0
    """GRPO rollouts' sampling temperature (> 0)."""
    grpo_top_p: float = 1.0
    grpo_top_k: int = 0
    """GRPO rollouts' top-k filter; 0: off (transformers' `generate` would otherwise apply its default of 50)."""
    grpo_max_new_tokens: int = 32
    """GRPO: the longest completion sampled (a longer one is cut there and trained on as it is)."""
    grpo_epsilon: float = 0.2
    """GRPO's clip range: the policy ratio to the rollout's is clipped to [1 - eps, 1 + eps]."""
    grpo_beta: float = 0.0
    """GRPO's KL penalty to the reference model (the adapter-disabled model under LoRA); 0: none (TRL's default)."""
    rewards: list[RewardCfg] = field(default_factory=list)
    """GRPO's rewards, summed with their weights (train/grpo.py)."""
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
    `ModelFamily.packing`: `vlmtune models`' packing column); the loss is the same. Pays off where attention
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
        if self.dpo_beta <= 0:
            raise ValueError(f"train.dpo_beta must be > 0, got {self.dpo_beta}")
        if not 0 <= self.dpo_label_smoothing < 0.5:
            raise ValueError(f"train.dpo_label_smoothing must be in [0, 0.5), got {self.dpo_label_smoothing}")
        if self.method == "grpo":
            self._check_grpo()
        if self.method == "dpo" and self.packing:
            raise ValueError("train.packing: DPO compares a pair's two answers row by row; pairs are not packed")
        if self.method == "dpo" and self.hflip:
            raise ValueError("train.hflip: DPO's reference log-probabilities are computed once, on the images as "
                             "they are; mirroring would compare the policy on another image")


    def _check_grpo(self):
        if self.grpo_generations < 2:
            raise ValueError(f"train.grpo_generations must be >= 2 (a group's advantages compare its completions), "
                             f"got {self.grpo_generations}")
        if self.grpo_temperature <= 0 or not 0 < self.grpo_top_p <= 1:
            raise ValueError(f"train.grpo_temperature must be > 0 and train.grpo_top_p in (0, 1], got "
                             f"{self.grpo_temperature}, {self.grpo_top_p}")
        if self.grpo_max_new_tokens < 1 or self.grpo_epsilon <= 0 or self.grpo_beta < 0 or self.grpo_top_k < 0:
            raise ValueError("train.grpo_max_new_tokens must be >= 1, train.grpo_epsilon > 0, train.grpo_beta >= 0, "
                             "train.grpo_top_k >= 0")
        if not self.rewards:
            raise ValueError("train.rewards: train.method grpo needs at least one reward "
                             "(e.g. [{metric: vqa_accuracy}])")
        for option in ("packing", "hflip"):
            if getattr(self, option):
                raise ValueError(f"train.{option}: GRPO trains on its own sampled completions, one row each; "
                                 f"turn {option} off")


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
