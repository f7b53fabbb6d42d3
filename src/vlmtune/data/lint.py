"""Pre-flight checks of a dataset (and its fit to a model), before any training step is spent.

    vlmtune data check data/vizwiz --model runs/base_llava --max-length 1024     # exit status 1 when errors are found
    vlmtune data check --model runs/my_run --image-size 336x336 --image-size 1280x960

Training runs the per-record checks (`record_issues`: text, placeholders, images per sample) and the length check
on every sample before step 0 (train/loop.py `check_samples`), so what this rejects never reaches a training step.

`check_dataset` streams the manifest once (one sample and its images in memory at a time) and reports:

errors (each names the manifest line and sample; exit status 1)
  bad records: malformed or too deeply nested JSON, records that do not fit the schema (`sample.SampleRecord`:
  unknown fields, wrong types, e.g. a message that is not an object or a list as `split`), placeholder/image count
  mismatch, empty or whitespace answers, paths escaping the dataset root or not text (NUL, undecodable bytes),
  missing images, image paths that are not regular files (FIFO, directory, device); images that do not decode
  (corrupt, truncated), exceed the pixel limit (decompression bombs) or the aspect-ratio limit, or that the model's
  processor would resize to more than MAX_RESIZED_PIXELS (see data/images.py); literal image placeholders inside message
  text (`<image>`, or the model's own placeholder text: the processor would expand them into image tokens that match
  no image) or inside answers; texts over `max_text_chars` characters or not valid Unicode (a lone surrogate);
  duplicate sample ids; the same image (by content) in two splits; samples the model's family cannot take (several
  images, no image, a task it lacks); samples longer than `max_length` tokens, image tokens included.
warnings (handled, but worth knowing)
  images in modes converted on load (CMYK, 16-bit, palette with transparency, alpha: composited on white), images
  with an EXIF orientation (rotated on load), the same images and prompt twice in a split.
statistics
  samples per split and task, answer distribution (overall and per question type), image sizes, and with a model
  the token length of every sample (histogram, percentiles, the samples that do not fit).

The report is JSON (written to `DIR/check_report.json` or `--out`); `vlmtune.runs.image_token_report` answers how many
positions one image of a given size takes in a model's family, to budget `max_length`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from tqdm import tqdm

from vlmtune.config import DataCfg, VideoCfg
from vlmtune.data.images import (
    MAX_IMAGE_PIXELS,
    Decoded,
    ImageError,
    check_image_shape,
    decode_image,
    load_images,
    resolve_inside,
)
from vlmtune.data.sample import Sample, message_text
from vlmtune.data.store import MANIFEST, BadRecord, iter_lines, load_json, read_samples
from vlmtune.data.video import encode_with_videos, load_video, video_refusal

MAX_LISTED = 200
"""Issues listed per kind in the report (all are counted)."""
CONVERTED_MODES = {"CMYK": "CMYK converted to RGB", "I;16": "16-bit scaled to 8-bit", "I;16B": "16-bit scaled to 8-bit",
                   "I;16L": "16-bit scaled to 8-bit", "I": "32-bit integer scaled to 8-bit",
                   "RGBA": "alpha composited on white", "LA": "alpha composited on white",
                   "PA": "alpha composited on white"}
PLACEHOLDERS = re.compile(
    r"<image>|<\|image_pad\|>|<start_of_image>|<image_soft_token>|<\|image\|>|<fake_token_around_image>")
"""Image placeholder strings of the common chat templates; literal text like this is never an image slot."""
PLACEHOLDER_ATTRS = ("image_token", "boi_token", "eoi_token", "fake_image_token", "global_image_token", "video_token")
"""Attributes of a processor, or of its tokenizer, that hold an image (or video) placeholder text."""
MAX_TEXT_CHARS = DataCfg.max_text_chars
"""Characters in one text (a message, an answer, a reference); data.max_text_chars in training, --max-text-chars
here."""


def parse_size(text: str) -> tuple[int, int]:
    """"640x480" -> (640, 480)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"image size {text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"image size {text!r}: width and height must be positive")
    return w, h


class Report:
    """Issues by kind (counted, the first MAX_LISTED listed) and statistics."""

    def __init__(self):
        self.errors: dict[str, list[dict]] = defaultdict(list)
        self.warnings: dict[str, list[dict]] = defaultdict(list)
        self.counts: Counter = Counter()

    def add(self, level: str, kind: str, line: int | None, sample: str | None, message: str) -> None:
        self.counts[f"{level}:{kind}"] += 1
        bucket = (self.errors if level == "error" else self.warnings)[kind]
        if len(bucket) < MAX_LISTED:
            bucket.append({"line": line, "sample": sample, "message": message})

    def n(self, level: str) -> int:
        return sum(v for k, v in self.counts.items() if k.startswith(level + ":"))


def _image_warnings(d: Decoded, path: Path) -> list[tuple[str, str]]:
    warnings = []
    if d.mode in CONVERTED_MODES:
        warnings.append(("image_mode", f"{path.name}: mode {d.mode} ({CONVERTED_MODES[d.mode]} on load)"))
    if d.transparent_palette:
        warnings.append(("image_mode", f"{path.name}: palette with transparency (composited on white on load)"))
    if d.orientation != 1:
        warnings.append(("exif_orientation", f"{path.name}: EXIF orientation {d.orientation} (rotated on load to "
                                             f"{d.image.width}x{d.image.height})"))
    return warnings


def placeholder_texts(processor) -> frozenset[str]:
    """The image placeholder texts of `processor` and its tokenizer (`PLACEHOLDER_ATTRS`): a model's own
    placeholder, when it is not one of the common `PLACEHOLDERS`, is refused in text as well."""
    texts = set()
    for obj in (processor, getattr(processor, "tokenizer", None)):
        for attr in PLACEHOLDER_ATTRS:
            value = getattr(obj, attr, None)
            if value is not None and str(value).strip():  # a str, or a tokenizers AddedToken
                texts.add(str(value))
    return frozenset(texts)


def placeholder_pattern(processor=None) -> re.Pattern:
    """`PLACEHOLDERS`, and with a processor its own placeholder texts as well."""
    if processor is None:
        return PLACEHOLDERS
    return re.compile("|".join([PLACEHOLDERS.pattern, *(re.escape(t) for t in sorted(placeholder_texts(processor)))]))


def _text_problems(text: str, where: str, max_chars: int) -> list[tuple[str, str]]:
    issues = []
    if len(text) > max_chars:  # before any tokenizer sees it: megabytes of text are tokenized whole
        issues.append(("text_too_long", f"{len(text)} characters in the {where} text, over data.max_text_chars="
                                        f"{max_chars}"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        issues.append(("invalid_text", f"the {where} text is not valid Unicode ({text[e.start]!r} at character "
                                       f"{e.start + 1}: a lone surrogate, which no tokenizer can encode)"))
    return issues


def _text_issues(sample: Sample, placeholders: re.Pattern = PLACEHOLDERS,
                 max_chars: int = MAX_TEXT_CHARS) -> list[tuple[str, str]]:
    issues = []
    for k, m in enumerate(sample.messages):
        text = message_text(m)
        where = "answer" if m["role"] == "assistant" else f"{m['role']} turn {k}"
        found = placeholders.search(text)
        if found:
            kind = "placeholder_in_answer" if m["role"] == "assistant" else "placeholder_in_text"
            issues.append((kind, f"literal {found.group()!r} in the {where} text (images are slots in `content`, "
                                 f"never text)"))
        issues += _text_problems(text, where, max_chars)
    for name in ("answers", "references"):
        for j, text in enumerate(getattr(sample, name) or []):
            issues += _text_problems(str(text), f"{name}[{j}]", max_chars)
    return issues


def _family_issues(family, sample: Sample) -> list[str]:
    """What the family cannot take at all (encode would fail on it)."""
    issues = []
    if len(sample.images) > 1 and not family.multi_image:
        issues.append(f"{len(sample.images)} images; the {family.name} family takes one per sample")
    if not sample.images and not sample.videos and not family.text_only:
        issues.append(f"no image; the {family.name} family needs one")
    if sample.videos and video_refusal(family):
        issues.append(video_refusal(family))
    return issues


def record_issues(sample: Sample, family=None, placeholders: re.Pattern = PLACEHOLDERS,
                  max_text_chars: int = MAX_TEXT_CHARS) -> list[tuple[str, str]]:
    """(kind, message) for each problem of one parsed record that `data check` and training both refuse: literal
    image placeholders in text (`placeholder_pattern(processor)` adds the model's own), texts too long or not valid
    Unicode, and with `family` the images it cannot take. Images themselves are checked where they are read
    (data/images.py)."""
    issues = _text_issues(sample, placeholders, max_text_chars)
    if family is not None:
        issues += [("family", message) for message in _family_issues(family, sample)]
    return issues


def manifest_lines(root: Path, ids: set[str]) -> dict[str, int]:
    """The manifest line of each sample id in `ids`: a second pass over the manifest, made only to name file:line
    for samples found bad after they were read (the Samples themselves do not keep their line)."""
    lines: dict[str, int] = {}
    with open(Path(root) / MANIFEST, encoding="utf-8", errors="surrogateescape") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                row = load_json(raw) if raw.strip() else None
            except ValueError:  # malformed, or nested too deeply (a RecursionError from json.loads)
                continue
            if isinstance(row, dict) and isinstance(row.get("id"), str) and row["id"] in ids:
                lines.setdefault(row["id"], lineno)
    return lines


def _histogram(values: list[int], bins: int = 10) -> list[list[int]]:
    if not values:
        return []
    lo, hi = min(values), max(values)
    width = max(1, -(-(hi - lo + 1) // bins))
    counts = Counter((v - lo) // width for v in values)
    return [[lo + b * width, lo + (b + 1) * width - 1, counts.get(b, 0)] for b in range((hi - lo) // width + 1)]


def _percentile(sorted_values: list[int], q: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def check_dataset(root: str | Path, family=None, processor=None, max_length: int | None = None,
                  max_pixels: int = MAX_IMAGE_PIXELS, progress: bool = True,
                  max_text_chars: int = MAX_TEXT_CHARS, model_name: str | None = None,
                  video: VideoCfg | None = None) -> dict:
    """Check the dataset at `root` (see the module docstring); returns the report (`report["ok"]`: no errors).
    With a model family (a ModelFamily), also what the family can take; with its processor too, the token lengths,
    reported under `model_name`. `vlmtune.runs.resolve_model` gives both for a `--model` (data sits below models).
    Videos are decoded and sampled under `video` (`data.video`; default VideoCfg()), as training will."""
    root = Path(root)
    if max_text_chars < 1:
        raise ValueError(f"max_text_chars must be at least 1, got {max_text_chars}")
    placeholders = placeholder_pattern(processor)
    report = Report()
    ids: dict[str, int] = {}
    image_splits: dict[str, dict[str, str]] = {}  # content hash -> split -> first sample id
    hash_of: dict[str, str] = {}  # relative path -> content hash (images shared by several samples)
    prompts: dict[bytes, str] = {}  # digest of (split, images, prompt) -> first sample id
    broken: dict[str, str] = {}  # relative path -> why it cannot be used
    splits, tasks = Counter(), Counter()
    answers, by_type = Counter(), defaultdict(Counter)
    sizes, modes, frames = Counter(), Counter(), Counter()
    lengths: list[int] = []
    too_long: list[dict] = []
    bar = tqdm(desc=f"check {root}", unit=" samples", disable=not progress)
    for lineno, rec in iter_lines(root, check_images=False):  # images are checked below, each once
        bar.update()
        if isinstance(rec, BadRecord):
            report.add("error", "bad_record", rec.line, None, rec.reason)
            continue
        s = rec
        if s.id in ids:
            report.add("error", "duplicate_id", lineno, s.id, f"sample id {s.id!r} also on line {ids[s.id]}")
            continue
        ids[s.id] = lineno
        splits[s.split or ""] += 1
        tasks[s.task] += 1
        issues = record_issues(s, family, placeholders, max_text_chars)
        for kind, message in issues:
            report.add("error", kind, lineno, s.id, message)
        if family is not None and s.task not in family.tasks and s.task not in ("vqa", "caption"):
            report.add("error", "family", lineno, s.id,
                       f"task {s.task!r} is not one of the {family.name} family's {list(family.tasks)}")
        if s.messages[-1]["role"] == "assistant":
            answer = s.target.encode("utf-8", "backslashreplace").decode()  # a lone surrogate printed as its escape
            answers[answer] += 1
            qtype = s.meta.get("question_type")  # meta is free-form: a list here must not stop the check
            by_type[qtype if isinstance(qtype, str) else s.task][answer] += 1
        images, ok = [], not issues  # a sample already refused is not encoded (megabytes of text, a placeholder)
        for rel in s.images:
            if rel in broken:  # an image shared by several samples is decoded and judged once
                report.add("error", "image", lineno, s.id, broken[rel])
                ok = False
                continue
            if rel not in hash_of or processor is not None:
                try:
                    path = resolve_inside(root, rel)
                    decoded = decode_image(path, max_pixels)
                    if processor is not None:  # what the model's processor would make of it, from its size
                        check_image_shape(*decoded.image.size, str(path), getattr(processor, "image_processor", None))
                except ImageError as e:
                    broken[rel] = str(e)
                    report.add("error", "image", lineno, s.id, str(e))
                    ok = False
                    continue
                if rel not in hash_of:
                    for kind, message in _image_warnings(decoded, path):
                        report.add("warning", kind, lineno, s.id, message)
                    modes[decoded.mode] += 1
                    sizes[f"{decoded.image.width}x{decoded.image.height}"] += 1
                    hash_of[rel] = decoded.sha256
            seen = image_splits.setdefault(hash_of[rel], {})
            split = s.split or ""
            if split not in seen:
                for other, first in seen.items():
                    report.add("error", "split_leak", lineno, s.id,
                               f"{rel}: the same image as sample {first!r} of split {other!r} (in split {split!r})")
                seen[split] = s.id
            if processor is not None:
                images.append(decoded.image)
        videos = []
        for entry in s.videos:  # decoded and sampled as training will; frames counted
            try:
                videos.append(load_video(root, entry, video or VideoCfg()))
                frames[len(videos[-1].frames)] += 1
            except ImageError as e:
                report.add("error", "video", lineno, s.id, str(e))
                ok = False
        key = hashlib.sha1(json.dumps([s.split, [hash_of.get(r, r) for r in s.images], s.videos, s.prompt_messages],
                                      sort_keys=True).encode()).digest()
        if key in prompts:  # several questions per image are normal; the same question twice is a duplicate
            report.add("warning", "duplicate_sample", lineno, s.id, f"same images and prompt as {prompts[key]!r}")
        prompts.setdefault(key, s.id)
        if processor is not None and ok:
            try:
                mode = "train" if s.messages[-1]["role"] == "assistant" else "generate"
                batch = encode_with_videos(family, processor, [s], [images], [videos], mode, 10**9)
            except ValueError as e:
                report.add("error", "encode", lineno, s.id, str(e))
                continue
            n = int(batch.inputs["attention_mask"][0].sum()) if "attention_mask" in batch.inputs else int(
                batch.inputs["input_ids"].shape[1])
            lengths.append(n)
            if max_length is not None and n > max_length:
                too_long.append({"line": lineno, "sample": s.id, "tokens": n})
                report.add("error", "too_long", lineno, s.id,
                           f"{n} tokens (images included) > max_length {max_length}; vlmtune never truncates")
    bar.close()
    stats = {
        "samples": len(ids), "splits": dict(splits), "tasks": dict(tasks), "image_modes": dict(modes),
        "image_sizes": dict(sizes.most_common(20)), "distinct_images": len(image_splits),
        **({"video_frames": dict(sorted(frames.items()))} if frames else {}),
        "answers": {"distinct": len(answers), "top": answers.most_common(20),
                    "by_question_type": {t: c.most_common(10) for t, c in sorted(by_type.items())}},
    }
    if lengths:
        ordered = sorted(lengths)
        stats["tokens"] = {"model": str(model_name), "family": family.name, "max_length": max_length,
                           "min": ordered[0], "p50": _percentile(ordered, 0.5), "p95": _percentile(ordered, 0.95),
                           "max": ordered[-1], "histogram": _histogram(lengths), "too_long": too_long[:MAX_LISTED],
                           "n_too_long": len(too_long)}
    return {"dataset": str(root), "ok": report.n("error") == 0, "n_errors": report.n("error"),
            "n_warnings": report.n("warning"), "counts": dict(sorted(report.counts.items())),
            "errors": dict(report.errors), "warnings": dict(report.warnings), **stats}


def _runs(ids: list[int], marks: list[str]):
    """Consecutive runs of equal marks: [(mark, [ids...]), ...]."""
    runs: list[tuple[str, list[int]]] = []
    for tok, mark in zip(ids, marks, strict=True):
        if runs and runs[-1][0] == mark:
            runs[-1][1].append(tok)
        else:
            runs.append((mark, [tok]))
    return runs


def show_mask(root: str | Path, family, processor=None, n: int = 3, split: str | None = None) -> list[dict]:
    """The first `n` samples as a model of `family` with `processor` will be trained on them: the encoded text with
    the trained tokens in [[double brackets]] and each image's tokens shown as <image xN>. `processor` None: the
    family's tiny test processor, which has the family's chat template but a toy vocabulary (`--model` a family name;
    `vlmtune.runs.resolve_model` gives both)."""
    if processor is None:
        processor = family.tiny().processor
    tok = getattr(processor, "tokenizer", processor)
    image_ids = set(getattr(processor, "image_token_ids", None) or [getattr(processor, "image_token_id", None)])
    samples = read_samples(root, split)[0][:n]
    shown = []
    for s in samples:
        images = load_images(Path(root), s)
        batch = family.encode(processor, [s], [images], "train", 10**9)
        labels = batch.inputs["labels"][0].tolist()
        ids = batch.inputs["input_ids"][0].tolist() if "input_ids" in batch.inputs else []  # Pix2Struct: none
        if ids and "attention_mask" in batch.inputs:
            keep = batch.inputs["attention_mask"][0].tolist()
            ids = [t for t, k in zip(ids, keep, strict=True) if k]
        trained = [t for t in labels if t != -100]
        if family.shift_labels:  # labels line up with the input ids
            labels = labels[-len(ids):] if len(labels) > len(ids) else labels
            marks = ["image" if t in image_ids else "train" if lab != -100 else "prompt"
                     for t, lab in zip(ids, labels, strict=True)]
        else:  # encoder-decoder: the input is all prompt, the decoder targets are all trained
            marks = ["image" if t in image_ids else "prompt" for t in ids]
        parts = []
        for mark, run in _runs(ids, marks):
            if mark == "image":
                parts.append(f"<image x{len(run)}>")
            else:
                text = tok.decode(run, skip_special_tokens=False)
                parts.append(f"[[{text}]]" if mark == "train" else text)
        text = "".join(parts) or "(no text input: the prompt is rendered into the image)"
        if not family.shift_labels:
            text += "\n  decoder target: [[" + tok.decode(trained, skip_special_tokens=False) + "]]"
        shown.append({"id": s.id, "split": s.split, "tokens": len(ids), "trained_tokens": len(trained),
                      "text": text, "trained_text": tok.decode(trained, skip_special_tokens=False)})
    return shown


def write_report(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # backslashreplace: a lone surrogate (a sample id read from a JSON escape) is written back as that escape
    out.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8", errors="backslashreplace")


def summary(report: dict) -> str:
    """A few lines for the terminal."""
    lines = [f"{report['dataset']}: {report['samples']} samples {report['splits']}, "
             f"{report['n_errors']} error(s), {report['n_warnings']} warning(s)"]
    for level in ("errors", "warnings"):
        for kind, items in report[level].items():
            n = report["counts"][f"{level[:-1]}:{kind}"]
            first = items[0]
            lines.append(f"  {level[:-1]} {kind} x{n}: line {first['line']} {first['sample'] or ''}: "
                         f"{first['message']}")
    if "tokens" in report:
        t = report["tokens"]
        lines.append(f"  tokens ({t['family']}): min {t['min']} p50 {t['p50']} p95 {t['p95']} max {t['max']}; "
                     f"{t['n_too_long']} over max_length {t['max_length']}")
    return "\n".join(lines)


__all__ = ["MANIFEST", "check_dataset", "manifest_lines", "parse_size", "placeholder_pattern",
           "record_issues", "show_mask", "summary", "write_report"]
