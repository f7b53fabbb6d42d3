"""The checks every sample passes before step 0 (`check_samples`, called by the loop's setup): a sample that fails
one would otherwise stop the run at the step that first draws it, and every resume at the same step, often with an
error that names nothing ("Found total 9 <image> tokens and 8 images").

A training sample must end with its answer, and a validation or probe sample must have one to be scored against
(a hidden-label split, whose conversations end with the question, is for `predict` and `eval`). Each training,
validation and probe sample gets the record checks of `vlmtune data check` (data/lint.py
`record_issues`: literal image placeholders, the processor's own included; texts over data.max_text_chars or not
valid Unicode; images the family cannot take), then its exact length, through the family's encode with its images,
against data.max_length (under data.answer_targets sampled or weighted, with each answer it may be trained on).
Image files were checked when the data was read (data/images.py). With data.skip_bad a sample that fails is
dropped and listed in rejected.jsonl with its file:line (a resumed run drops the same ones); without, the run stops
here naming them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Protocol

from vlmtune.config import RunCfg
from vlmtune.data.images import ImageError, check_image_shape
from vlmtune.data.lint import manifest_lines, placeholder_pattern, record_issues
from vlmtune.data.mix import Mixture
from vlmtune.data.sample import Sample
from vlmtune.data.store import MANIFEST, BadRecord, read_jsonl, write_jsonl
from vlmtune.data.video import VideoLoader, encode_with_videos, sample_inputs
from vlmtune.eval.forgetting import Probe
from vlmtune.models import ModelFamily
from vlmtune.models.family import Loaded, SampleTooLong
from vlmtune.train.targets import variants


class CheckState(Protocol):
    """What the checks read of the loop's `State` (train/loop.py), which has these and more. They replace the
    samples of the sources, of `val` and of the probes with those that pass."""

    cfg: RunCfg
    run_dir: Path
    accelerator: Any
    family: ModelFamily
    loaded: Loaded
    data_root: Path
    """Where the val split's images are."""
    mixture: Mixture
    roots: list[Path]
    """Image root of each source of the mixture."""
    val: list[Sample]
    probes: list[Probe]
    images: Any
    """DecodedImages: what reads the images (and keeps them decoded while they fit)."""


WHAT = {"record": "that `vlmtune data check` rejects", "long": "longer than data.max_length={max_length}",
        "unanswered": "without an answer to train on or score against (a hidden-label split such as VizWiz's test "
                      "questions is for `vlmtune predict` and `eval`: set data.train_split / val_split to labelled "
                      "splits)",
        "method": "that train.method={method} cannot train (dpo: samples with 'chosen' and 'rejected' answers; sft: "
                  "samples whose conversation ends with the answer)"}
"""The kinds of failure, as the stop message and the log line count them."""


def check_samples(state: CheckState, chunk: int = 32) -> None:
    """Check every sample of the mixture's sources ("train": with its answer), of the val split and of the probes
    ("generate": the prompt they generate from); drop and list, or stop (see the module docstring)."""
    found: list[tuple[Path, str, Sample, str]] = []  # (dataset root, kind, sample, why)
    for src, root in zip(state.mixture.sources, state.roots, strict=True):
        src.samples, failed = _check(state, src.samples, root, "train", chunk)
        found += [(root, *f) for f in failed]
    state.val, failed = _check(state, state.val, state.data_root, "generate", chunk)
    found += [(state.data_root, *f) for f in failed]
    for probe in state.probes:
        probe.samples, failed = _check(state, probe.samples, probe.root, "generate", chunk)
        found += [(probe.root, *f) for f in failed]
    if not found:
        return
    d = state.cfg.data
    roots = {Path(root) for root, *_ in found}
    lines = {root: manifest_lines(root, {s.id for r, _, s, _ in found if Path(r) == root}) for root in roots}
    by_kind: dict[str, list[BadRecord]] = {kind: [] for kind in WHAT}
    for root, kind, s, why in found:  # the raw record as ASCII JSON: a lone surrogate stays an escape
        by_kind[kind].append(BadRecord(Path(root) / MANIFEST, lines[Path(root)].get(s.id, 0), why,
                                       json.dumps(s.to_json())))
    counted = [f"{len(records)} sample(s) {WHAT[kind].format(max_length=d.max_length, method=state.cfg.train.method)}"
               for kind, records in by_kind.items() if records]
    if not d.skip_bad:
        named = [f"{n}: {'; '.join(map(str, records[:5]))}{' ...' if len(records) > 5 else ''}"
                 for n, records in zip(counted, (r for r in by_kind.values() if r), strict=True)]
        raise ValueError(f"found before training: {' | '.join(named)}. Fix them (`vlmtune data check` lists them), "
                         "raise data.max_length or data.max_text_chars, or set data.skip_bad: true to skip them "
                         "(listed in rejected.jsonl)")
    rejected = state.run_dir / "rejected.jsonl"
    rows = read_jsonl(rejected) if rejected.is_file() else []
    seen = {(r.get("file"), r.get("error")) for r in rows}
    rows += [b.to_json() for records in by_kind.values() for b in records if (b.file, b.reason) not in seen]
    if state.accelerator.is_main_process:
        write_jsonl(rejected, rows)
    state.accelerator.print(f"skipped before training: {', '.join(counted)}; listed in {rejected}", file=sys.stderr)
    for src in state.mixture.sources:
        if not src.samples:
            raise ValueError(f"data source {src.name!r}: every sample was skipped before training (listed in "
                             f"{rejected})")


def _named(s: Sample, why: str) -> str:
    # 'ID#answerK': the sample with its K-th distinct answer as target (train/targets.py), already named
    return why if repr(s.id) in why or f"'{s.id}#answer" in why else f"sample {s.id!r}: {why}"


def _check(state: CheckState, samples: list[Sample], root: Path, mode: str,
           chunk: int) -> tuple[list[Sample], list[tuple[str, Sample, str]]]:
    """(the samples that pass, in order; [(kind, sample, why)] for the others, kind "record" or "long")."""
    family, processor, d = state.family, state.loaded.processor, state.cfg.data
    placeholders = placeholder_pattern(processor)
    image_processor = getattr(processor, "image_processor", None)
    passed, failed = [], []
    for s in samples:  # before encoding: a placeholder breaks the encode, megabytes of text take long to tokenize
        issues = record_issues(s, family, placeholders, d.max_text_chars)
        dpo = state.cfg.train.method == "dpo"
        if mode == "train" and s.is_pair != dpo:
            failed.append(("method", s, _named(s, "not a preference pair (no 'chosen' and 'rejected' answers)" if dpo
                                               else "a preference pair ('chosen'/'rejected'): train.method dpo "
                                                    "trains on it")))
        elif not (s.has_target or s.is_pair if mode == "train" else s.gold()):
            failed.append(("unanswered", s, _named(s, "no answer: the conversation ends with the user's question")))
        elif issues:
            failed.append(("record", s, _named(s, "; ".join(message for _, message in issues))))
        else:
            passed.append(s)
    keep = []
    for i in range(0, len(passed), chunk):
        part, encoded = [], []  # the samples; (sample, images, videos) as the family's encode gets them
        for s in passed[i : i + chunk]:
            try:  # what the processor would make of each image, from its size: a thin one grows to gigabytes
                inputs = sample_inputs(root, s, family, state.images.load, _videos(state))
                for rel, im in zip(inputs[0].images, inputs[1], strict=True):
                    check_image_shape(*im.size, rel, image_processor)
            except ImageError as e:  # a video that does not decode (VideoError) too
                failed.append(("record", s, _named(s, str(e))))
                continue
            part.append(s)
            encoded.append(inputs)
        if not part:
            continue
        try:  # one encode per chunk; only a chunk that fails is encoded sample by sample
            encode_with_videos(family, processor, *_targets(state.cfg, mode, encoded), mode, d.max_length)
            keep.extend(part)
            continue
        except ValueError as e:
            error, before = e, len(failed)
        for s, inputs in zip(part, encoded, strict=True):
            try:
                encode_with_videos(family, processor, *_targets(state.cfg, mode, [inputs]), mode, d.max_length)
                keep.append(s)
            except SampleTooLong as e:
                failed.append(("long", s, _named(s, str(e))))
            except ValueError as e:  # what the family's encode refuses (data check reports it as "encode")
                failed.append(("record", s, _named(s, f"cannot be encoded: {e}")))
        if len(failed) == before:  # every sample encodes alone: the chunk's failure is no sample's fault
            raise error
    return keep, failed


def _targets(cfg: RunCfg, mode: str, encoded: list[tuple]) -> tuple[list[Sample], list[list], list[list]]:
    """What is encoded to check samples, given as (sample, images, videos): in "train" mode under data.answer_targets
    sampled or weighted, the sample with each answer it may be trained on (any of them may be drawn at any step; each
    must fit max_length); under train.method dpo, a pair's chosen and rejected samples. Returns the samples, their
    images and their videos."""
    if mode == "train" and cfg.train.method == "dpo":
        rows = [(answered, ims, vids) for s, ims, vids in encoded for answered in s.pair()]
    elif mode != "train" or cfg.data.answer_targets == "single":
        rows = encoded
    else:
        rows = [(v, ims, vids) for s, ims, vids in encoded for v, _ in variants(s)]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def _videos(state):
    """The run's VideoLoader (`data.video`); a loader without memory for a state that has none."""
    return (getattr(state, "videos", None) or VideoLoader(state.cfg.data.video)).load