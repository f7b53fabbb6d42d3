"""OCR enrichment: the text inside each image, read by tesseract, put into the prompt or into `sample.meta["ocr"]`.

Why: a meme's joke and a product label's words live in the pixels, and a small VLM reads them badly or not at all
(the Russian-meme captioner needed the meme's own text; the fashion project the Portuguese on the labels). A
dedicated OCR engine reads them well; giving its text to the model turns "read the image" into "use the text".

    data:
      path: data/memes
      ocr:                         # the settings: OcrCfg in config/data.py. `make ocr` installs Debian's tesseract-ocr
        langs: rus+eng             # the data's main language FIRST (see below)
        into: prompt               # "Text in the image: {text}\\n{prompt}" in the first user turn; or meta
        min_conf: 30               # drop words tesseract is unsure about (texture and border noise)

    vlmtune data ocr data/memes --langs rus+eng --into meta                     # sample.meta["ocr"], in place
    vlmtune data ocr data/shop --langs por+eng --into prompt --out data/shop-ocr  # an enriched copy

Order of `langs` matters: tesseract treats the first language as the main one. On a label drawn at 28 px, with
"eng+rus+por" the lower-case Portuguese "promoção" came out as Cyrillic look-alikes ("рготосао"); with "por+eng+rus"
(and "rus+por+eng") it was read correctly. Check a few images with `vlmtune data ocr` before training.

Where it applies: `dataset.load_split(..., ocr=...)`, the one loading path of training (train split, every source,
val) and of `vlmtune eval/predict --model RUN`, which take the setting from the run's run_config.yaml
(`runs.model_ocr_options`), so the model is evaluated on the prompts it was trained on; `vlmtune serve --model RUN`
reads the uploaded images the same way (`read_images_text`, no disk cache). Forgetting probes are not enriched: they
measure the general ability on its own prompts, for the base model and every checkpoint alike.

How: each image is decoded by vlmtune (limits, EXIF orientation, any format Pillow reads), given to the `tesseract`
binary as PNG on stdin, and read back as TSV (one row per word, with its confidence). The words are cached in
DATASET/.cache/ocr/<key>.json, key = sha256 of (the image file's sha256, langs, psm, tesseract version), written
atomically; confidence filtering, normalisation (Unicode NFC, whitespace collapsed), the length cap and the
template are applied after the cache, so a re-run, or a second config on the same images with another template,
min_conf, max_chars or `into`, runs no OCR at all. Images are read in parallel, one tesseract thread each.

A corrupt image, a tesseract failure or a timeout is a bad record naming the file and the sample (skipped and
counted under skip_bad). A missing tesseract or language pack is an environment error, never skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from vlmtune.config import OcrCfg
from vlmtune.data.images import ImageError, decode_image_bytes, read_image_file, resolve_inside
from vlmtune.data.sample import Sample
from vlmtune.data.store import MANIFEST, BadRecord, read_samples, write_jsonl, write_rejected
from vlmtune.io import atomic_write_text

CACHE_DIR = ".cache/ocr"
"""Relative to the dataset directory."""
INSTALL_HINT = ("run `make ocr`, or as root: apt-get update && apt-get install -y tesseract-ocr tesseract-ocr-eng "
                "tesseract-ocr-rus tesseract-ocr-por")


class OcrUnavailable(FileNotFoundError):
    """tesseract, or the data of an asked language, is not installed: an environment problem, never skipped."""


class OcrError(ValueError):
    """One image could not be read (corrupt file, tesseract failed or timed out): a bad record."""


# ---------------------------------------------------------------- tesseract


@dataclass(frozen=True)
class Tesseract:
    exe: str
    version: str
    """The first line of `tesseract --version` (e.g. "tesseract 5.3.0"): part of the cache key."""


@functools.lru_cache(maxsize=8)
def _probe(exe: str) -> tuple[str, frozenset[str]]:
    """(version, installed languages) of the tesseract binary at `exe`, asked once per process."""
    try:
        v = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
        ls = subprocess.run([exe, "--list-langs"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise OcrUnavailable(f"{exe} does not run ({type(e).__name__}: {e}): {INSTALL_HINT}") from None
    version = (v.stdout.strip() or v.stderr.strip()).splitlines()  # tesseract 4 printed it on stderr
    if v.returncode != 0 or not version:
        raise OcrUnavailable(f"{exe} --version failed (exit {v.returncode}): {INSTALL_HINT}")
    # "List of available languages in "/usr/share/tesseract-ocr/5/tessdata/" (4):" then one code per line
    langs = frozenset(line.strip() for line in (ls.stdout or ls.stderr).splitlines()[1:] if line.strip())
    return version[0].strip(), langs


def find_tesseract(langs: str) -> Tesseract:
    """The tesseract on PATH, checked to have every language of `langs`; OcrUnavailable says how to install."""
    exe = shutil.which("tesseract")
    if exe is None:
        raise OcrUnavailable(f"tesseract is not installed (data.ocr needs it): {INSTALL_HINT}")
    version, have = _probe(exe)
    missing = [lang for lang in langs.split("+") if lang not in have]
    if missing:
        packages = " ".join(f"tesseract-ocr-{lang.lower().replace('_', '-')}" for lang in missing)
        raise OcrUnavailable(f"tesseract has no language data for {'+'.join(missing)} (installed: "
                             f"{'+'.join(sorted(have)) or 'none'}): run `make ocr` (eng, rus, por), or as root: "
                             f"apt-get install -y {packages}")
    return Tesseract(exe, version)


def run_tesseract(exe: str, png: bytes, langs: str, psm: int, timeout_s: float) -> list[dict]:
    """The words tesseract reads in a PNG image: [{"text", "conf" (0-100), "line" ("block.par.line")}] in reading
    order. OcrError when it fails or runs past `timeout_s`."""
    # one OpenMP thread per tesseract: images run in parallel instead, and its threads only slow each other down
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    try:
        proc = subprocess.run([exe, "stdin", "stdout", "-l", langs, "--psm", str(psm), "tsv"], input=png,
                              capture_output=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise OcrError(f"tesseract took longer than {timeout_s:g} s (data.ocr.timeout_s)") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", errors="replace").strip()
        raise OcrError(f"tesseract failed (exit {proc.returncode}): {err[-300:]}")
    return parse_tsv(proc.stdout.decode("utf-8", errors="replace"))


def parse_tsv(tsv: str) -> list[dict]:
    """Tesseract's TSV (level page block par line word left top width height conf text) -> its words (level 5)."""
    words = []
    for row in tsv.splitlines()[1:]:
        cols = row.split("\t")
        if len(cols) < 12 or cols[0] != "5" or not cols[11].strip():
            continue
        words.append({"text": cols[11], "conf": round(float(cols[10]), 2), "line": ".".join(cols[2:5])})
    return words


# ---------------------------------------------------------------- text


def normalize(text: str) -> str:
    """NFC (one code point per accented letter, as the tokenizer saw in training text), whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def truncate(text: str, max_chars: int) -> str:
    """At most `max_chars` characters, cut at the last word boundary (mid-word only for one overlong word)."""
    if len(text) <= max_chars:
        return text
    head = text[: max_chars + 1]
    cut = head.rsplit(" ", 1)[0] if " " in head else head[:max_chars]
    return cut.rstrip()


def text_of(words: list[dict], min_conf: float = 0.0, max_chars: int = 300) -> str:
    """The normalised text of the words tesseract is at least `min_conf` sure of."""
    return truncate(normalize(" ".join(w["text"] for w in words if w["conf"] >= min_conf)), max_chars)


def with_ocr_text(sample: Sample, text: str, into: str, template: str = OcrCfg.template) -> Sample:
    """A new Sample with `text` in meta["ocr"] and, for `into="prompt"`, in its first user turn through `template`.
    No text found: the prompt is left as it is. A sample already enriched into its prompt is returned unchanged, so
    loading an enriched copy with data.ocr on again does not put the text in twice."""
    if sample.meta.get("ocr_in_prompt"):
        return sample
    meta = {**sample.meta, "ocr": text}
    users = [i for i, m in enumerate(sample.messages) if m["role"] == "user"]
    if into == "meta" or not text or not users:
        return dataclasses.replace(sample, meta=meta)
    messages = list(sample.messages)
    k = users[0]
    content = messages[k]["content"]
    if isinstance(content, str):
        messages[k] = {**messages[k], "content": template.format(text=text, prompt=content)}
    else:
        parts = [dict(part) for part in content]
        texts = [i for i, part in enumerate(parts) if part.get("type") == "text"]
        if texts:
            parts[texts[0]]["text"] = template.format(text=text, prompt=parts[texts[0]]["text"])
        else:  # an image-only turn
            parts.append({"type": "text", "text": template.format(text=text, prompt="").strip()})
        messages[k] = {**messages[k], "content": parts}
    return dataclasses.replace(sample, messages=messages, meta={**meta, "ocr_in_prompt": True})


# ---------------------------------------------------------------- cache


def cache_key(image_sha256: str, langs: str, psm: int, version: str) -> str:
    return hashlib.sha256(json.dumps([image_sha256, langs, psm, version]).encode()).hexdigest()


class OcrCache:
    """One JSON file per (image content, langs, psm, tesseract version): the words with their confidences."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)

    def get(self, key: str) -> list[dict] | None:
        try:
            words = json.loads((self.dir / f"{key}.json").read_text(encoding="utf-8"))["words"]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):  # a damaged entry (disk full, edited): read the image again
            return None
        return words if isinstance(words, list) else None

    def put(self, key: str, entry: dict) -> None:
        """Atomic: a temporary file renamed into place, so readers never see half an entry (also across threads
        and processes writing the same key)."""
        atomic_write_text(self.dir / f"{key}.json", json.dumps(entry, ensure_ascii=False))


def read_image_words(path: Path, tesseract: Tesseract, langs: str, psm: int, timeout_s: float,
                     cache: OcrCache | None) -> tuple[list[dict], bool]:
    """(words, whether they came from the cache) of the image file at `path`; OcrError naming the file."""
    try:
        data = read_image_file(path)  # a regular file only: a FIFO would block here forever
    except ImageError as e:
        raise OcrError(str(e)) from None
    sha = hashlib.sha256(data).hexdigest()
    key = cache_key(sha, langs, psm, tesseract.version)
    words = cache.get(key) if cache else None
    if words is not None:
        return words, True
    try:
        image = decode_image_bytes(data, str(path)).image
    except ImageError as e:
        raise OcrError(str(e)) from None
    png = io.BytesIO()
    image.save(png, format="PNG")  # tesseract reads what vlmtune decoded (oriented, RGB), whatever the file format
    start = time.perf_counter()
    try:
        words = run_tesseract(tesseract.exe, png.getvalue(), langs, psm, timeout_s)
    except OcrError as e:
        raise OcrError(f"{path}: {e}") from None
    if cache:
        cache.put(key, {"image_sha256": sha, "langs": langs, "psm": psm, "tesseract": tesseract.version,
                        "seconds": round(time.perf_counter() - start, 3), "words": words})
    return words, False


def read_images_text(images: list, opts: OcrCfg) -> str:
    """The text of decoded images (a served request's uploads) as `enrich_samples` makes it for files, without the
    disk cache: uploads are seldom seen twice. OcrError when tesseract fails on one."""
    tesseract = find_tesseract(opts.langs)
    texts = []
    for image in images:
        png = io.BytesIO()
        image.save(png, format="PNG")
        texts.append(text_of(run_tesseract(tesseract.exe, png.getvalue(), opts.langs, opts.psm, opts.timeout_s),
                             opts.min_conf, opts.max_chars))
    return truncate(" | ".join(t for t in texts if t), opts.max_chars)


# ---------------------------------------------------------------- samples


@dataclass
class OcrReport:
    images: int = 0
    """Distinct image files looked at."""
    cached: int = 0
    """Of them, read from the cache (no OCR run)."""
    ran: int = 0
    """Of them, read by tesseract now."""
    failed: int = 0
    skipped_samples: int = 0
    """Samples dropped because an image failed (only under skip_bad)."""
    seconds: float = 0.0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def enrich_samples(samples: list[Sample], root: str | Path, opts: OcrCfg, skip_bad: bool = False,
                   cache_dir: str | Path | None = None, workers: int | None = None,
                   progress: bool = True) -> tuple[list[Sample], list[BadRecord], OcrReport]:
    """Every sample with the text of its images (joined by " | " when it has several) added as `opts` says.

    Returns (enriched samples, bad records, report). An image that cannot be read makes its sample a BadRecord
    naming the manifest, the sample and the file: raised (after every other image was read and cached) unless
    `skip_bad`, then the sample is left out and the record returned. Text-only samples pass unchanged."""
    root = Path(root)
    started = time.perf_counter()
    report = OcrReport()
    todo = [s for s in samples if s.images and not (opts.into == "prompt" and s.meta.get("ocr_in_prompt"))]
    paths: dict[str, Path | ImageError] = {}
    for s in todo:
        for rel in s.images:
            if rel not in paths:
                try:
                    paths[rel] = resolve_inside(root, rel)
                except ImageError as e:
                    paths[rel] = e
    results: dict[str, list[dict] | Exception] = {rel: p for rel, p in paths.items() if isinstance(p, Exception)}
    readable = {rel: p for rel, p in paths.items() if not isinstance(p, Exception)}
    if readable:
        tesseract = find_tesseract(opts.langs)  # even when all is cached: its version is part of the key
        cache = OcrCache(Path(cache_dir) if cache_dir else root / CACHE_DIR)

        def read(rel: str) -> tuple[str, list[dict] | OcrError, bool]:
            try:
                words, hit = read_image_words(readable[rel], tesseract, opts.langs, opts.psm, opts.timeout_s, cache)
            except OcrError as e:
                return rel, e, False
            return rel, words, hit

        bar = None
        if progress and len(readable) > 50:
            bar = tqdm(total=len(readable), desc="ocr", file=sys.stderr)
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            for rel, out, hit in pool.map(read, readable):
                results[rel] = out
                if not isinstance(out, Exception):
                    report.cached += hit
                    report.ran += not hit
                if bar:
                    bar.update(1)
        if bar:
            bar.close()
    report.images = len(paths)
    report.failed = sum(isinstance(r, Exception) for r in results.values())

    out: list[Sample] = []
    bad: list[BadRecord] = []
    redo = {id(s) for s in todo}
    for s in samples:
        if id(s) not in redo:
            out.append(s)
            continue
        errors = [(rel, results[rel]) for rel in s.images if isinstance(results[rel], Exception)]
        if errors:
            rel, err = errors[0]
            bad.append(BadRecord(root / MANIFEST, -1, f"sample {s.id!r}: OCR of image {rel!r}: {err}",
                                 json.dumps(s.to_json(), ensure_ascii=False)))
            continue
        texts = [text_of(results[rel], opts.min_conf, opts.max_chars) for rel in s.images]
        text = truncate(" | ".join(t for t in texts if t), opts.max_chars)
        out.append(with_ocr_text(s, text, opts.into, opts.template))
    report.seconds = round(time.perf_counter() - started, 3)
    if bad and not skip_bad:
        raise bad[0]
    report.skipped_samples = len(bad)
    if progress and report.images:
        print(f"{root}: ocr ({opts.langs}, psm {opts.psm}) of {report.images} image(s): {report.cached} cached, "
              f"{report.ran} read by tesseract, {report.failed} failed, {report.seconds:g} s", file=sys.stderr)
    return out, bad, report


def enrich_dataset(root: str | Path, opts: OcrCfg, out: str | Path | None = None,
                   skip_bad: bool = False) -> dict:
    """`vlmtune data ocr`: every sample of the dataset at `root` enriched, written to a new dataset `out` (images
    and OCR cache copied, bad samples left out and listed in OUT/rejected.jsonl) or, with `out` None, in place
    (only `into="meta"`: the questions stay as the data's author wrote them; every record must be readable, and a
    sample whose image OCR fails under `skip_bad` is kept without meta["ocr"])."""
    root = Path(root)
    if out is None and opts.into != "prompt":
        samples, bad = read_samples(root, None, skip_bad=False)
    elif out is None:
        raise ValueError(f"data ocr {root}: --into prompt (the default, as data.ocr.into) rewrites the questions; "
                         "write an enriched copy with --out DIR2, or add meta['ocr'] in place with --into meta")
    else:
        out = Path(out)
        if (out / MANIFEST).exists():
            raise FileExistsError(f"{out}: already a dataset (never overwritten); choose a new --out directory")
        samples, bad = read_samples(root, None, skip_bad=skip_bad)
    enriched, ocr_bad, report = enrich_samples(samples, root, opts, skip_bad=skip_bad)
    if out is None:
        done = {s.id: s for s in enriched}
        enriched = [done.get(s.id, s) for s in samples]  # a failed sample stays as it was
        write_jsonl(root / MANIFEST, (s.to_json() for s in enriched))
        target, bad = root, ocr_bad
    else:
        for s in enriched:
            for rel in s.images:
                dest = resolve_inside(out, rel)
                if not dest.exists():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(resolve_inside(root, rel), dest)
        if (root / CACHE_DIR).is_dir():  # the copy's images are the same bytes: its OCR is cached already
            shutil.copytree(root / CACHE_DIR, out / CACHE_DIR, dirs_exist_ok=True)
        write_jsonl(out / MANIFEST, (s.to_json() for s in enriched))
        target = out
        bad = bad + ocr_bad
    if bad:
        write_rejected(target / "rejected.jsonl", bad)
    for s in enriched[:3]:
        print(f"{s.id}: {s.meta.get('ocr', '')!r}", file=sys.stderr)
    return {"dir": str(root), "out": str(target), "langs": opts.langs, "into": opts.into, "samples": len(enriched),
            "with_text": sum(bool(s.meta.get("ocr")) for s in enriched), "rejected": len(bad),
            "ocr": report.to_json()}
