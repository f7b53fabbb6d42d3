"""VLFeedback (MMInstruction/VLFeedback, the Silkie paper's data): per prompt, several models' completions, each rated
by GPT-4V; preference pairs are built from the ratings, for `train.method: dpo`.

    vlfeedback_80k.jsonl
        {"id": "svit-conversation-3700", "prompt": "What is the man holding?", "models": ["idefics-9b-instruct", ...],
         "completions": [{"annotations": {"Helpfulness": {"Rating": "5", "Rationale": "..."},
                                           "Ethical Considerations": {"Rating": "5", "Rationale": "..."},
                                           "Visual Faithfulness": {"Rating": "4", "Rationale": "..."}},
                          "model": "idefics-9b-instruct", "response": "He is holding a kite."}, ...]}
    merged_images/svit-conversation-3700.jpg       merged_images.zip, unpacked (one image per prompt, named by id)

`src` is the JSONL file (or a JSON list, or parquet, or a directory of them); a row's image is `img_path` (what the
Hub's loading script adds; relative to `--images`, default the file's directory), else an `image` column (parquet
bytes {bytes, path}, a path or a data URI), else merged_images/<id>.jpg, else <id>.jpg.

How pairs are built (`vlmtune data import vlfeedback SRC --out DIR --option pairs=... --option score=...`):
  score (a completion's rating)   mean (default): the mean of its Helpfulness, Visual Faithfulness and Ethical
                                  Considerations ratings; mean-hv: of Helpfulness and Visual Faithfulness only (what
                                  the Silkie authors' pairing code averages). A completion with one of those ratings
                                  missing or not a number ("N/A") is unrated and takes part in no pair.
  pairs                           best-worst (default): one pair per prompt, chosen = the highest score (the first of
                                  a tie), rejected = the lowest score below it whose response differs from the chosen
                                  one (the first of a tie); id = the prompt's id.
                                  all: every two rated completions with different scores and different responses
                                  (after stripping whitespace), the higher-scored one chosen (the Silkie authors'
                                  pairing code); id = "<prompt id>-<i>-<j>" (i < j, the completions' positions).
A prompt that gives no pair (fewer than two rated completions, all ties, equal responses) is a bad record saying so
(`--skip-bad` lists it in rejected.jsonl). A Sample's messages are the image then the prompt, split "train" (or the
file stem when it names a split), task "vqa"; `meta` holds prompt_id, chosen_model, rejected_model, chosen_ratings and
rejected_ratings ({aspect: the rating as given}). Export writes `<split>.jsonl` with one row per pair: its id, prompt,
the two completions (ratings without rationales; chosen first) and img_path; importing it again with the same
`score` and the default `pairs` gives identical Samples (each row holds one pair, whatever rule made it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

from vlmtune.data.formats.base import BadRecord, Format, Imported, Record, SplitLines, copy_image, text_value
from vlmtune.data.formats.llava import unique_id
from vlmtune.data.formats.rlhf_v import prompt_turn, question_text, row_files, row_image, rows, scalar_meta, split_of
from vlmtune.data.sample import Sample

ASPECTS = {"mean": ("Helpfulness", "Visual Faithfulness", "Ethical Considerations"),
           "mean-hv": ("Helpfulness", "Visual Faithfulness")}
"""`score` option -> the rated aspects it averages."""
_FIELDS = ("id", "prompt", "models", "completions", "img_path", "image", "prompt_id")


def _completion(c: object, k: int, aspects: tuple[str, ...]) -> tuple[str, str, dict, float | None]:
    """(response, model, {aspect: rating as given}, score or None when unrated)."""
    if not isinstance(c, dict):
        raise ValueError(f"completions[{k}] must be an object with annotations, model and response")
    response = text_value(c.get("response"), f"completions[{k}].response")
    model = c.get("model")
    if model is not None and not isinstance(model, str):
        raise ValueError(f"completions[{k}].model must be a string")
    annotations = c.get("annotations")
    if not isinstance(annotations, dict):
        raise ValueError(f"completions[{k}].annotations must be an object {{aspect: {{Rating, Rationale}}}}")
    ratings, values = {}, []
    for aspect in ASPECTS["mean"]:
        entry = annotations.get(aspect)
        rating = entry.get("Rating") if isinstance(entry, dict) else None
        if isinstance(rating, str | int | float) and not isinstance(rating, bool):
            ratings[aspect] = rating
        if aspect in aspects:
            try:
                value = float(rating)  # "5", 5 and 5.0; "N/A" and None are no number
            except (TypeError, ValueError):
                value = math.nan
            values.append(value)
    score = sum(values) / len(values)
    return response, model or "", ratings, None if math.isnan(score) else score


def pairs_of(scored: list[tuple[str, float | None]], rule: str) -> list[tuple[int, int]]:
    """(chosen, rejected) positions in `scored` ((response, score) per completion) by `rule` (module docstring)."""
    rated = [i for i, (_, s) in enumerate(scored) if s is not None]

    def differ(i: int, j: int) -> bool:
        return scored[i][1] != scored[j][1] and scored[i][0].strip() != scored[j][0].strip()

    if rule == "all":
        out = []
        for a, i in enumerate(rated):
            for j in rated[a + 1:]:
                if differ(i, j):
                    out.append((i, j) if scored[i][1] > scored[j][1] else (j, i))
        return out
    if not rated:
        return []
    best = max(rated, key=lambda i: (scored[i][1], -i))
    lower = [j for j in rated if scored[j][1] < scored[best][1] and differ(best, j)]
    return [(best, min(lower, key=lambda j: (scored[j][1], j)))] if lower else []


def _image(row: dict, base: Path, pid: str):
    if row.get("img_path") is not None:
        path = row["img_path"]
        if isinstance(path, str) and Path(path).is_absolute():
            root = base.resolve()
            if not Path(path).resolve().is_relative_to(root):
                raise ValueError(f"img_path {path!r} is outside {base} (--images DIR reads it there)")
            path = str(Path(path).resolve().relative_to(root))
        return row_image(path, base, "img_path")
    if row.get("image") is not None:
        return row_image(row["image"], base, "column 'image'")
    for rel in (f"merged_images/{pid}.jpg", f"{pid}.jpg"):
        if (base / rel).is_file():
            return row_image(rel, base, "image")
    raise ValueError(f"no image: no img_path or image, and neither merged_images/{pid}.jpg nor {pid}.jpg in {base}")


def _samples(row: object, file: Path, n: int, base: Path, seen: set[str], rule: str, score: str) -> list[Imported]:
    if not isinstance(row, dict):
        raise ValueError("a row must be a JSON object")
    pid = row.get("id")
    if isinstance(pid, bool) or not isinstance(pid, str | int) or not str(pid).strip():
        raise ValueError(f"'id' must be a non-empty string or integer, got {json.dumps(pid)[:80]}")
    pid = str(pid)
    prompt = text_value(row.get("prompt"), "'prompt'")
    if not prompt.strip():
        raise ValueError("empty 'prompt'")
    completions = row.get("completions")
    if not isinstance(completions, list):
        raise ValueError("'completions' must be a list of {annotations, model, response}")
    parsed = [_completion(c, k, ASPECTS[score]) for k, c in enumerate(completions)]
    found = pairs_of([(p[0], p[3]) for p in parsed], rule)
    if not found:
        n_rated = sum(p[3] is not None for p in parsed)
        raise ValueError(f"no preference pair: {n_rated} rated completion(s) of {len(parsed)}" +
                         (", every two tie or give the same response" if n_rated > 1 else ""))
    rel, ref = _image(row, base, pid)
    prompt_id = row.get("prompt_id") if isinstance(row.get("prompt_id"), str) else pid
    out = []
    for i, j in found:
        (chosen, cm, cr, _), (rejected, rm, rr, _) = parsed[i], parsed[j]
        sid = pid if rule == "best-worst" else f"{pid}-{min(i, j)}-{max(i, j)}"
        meta = {**scalar_meta(row, _FIELDS), "prompt_id": prompt_id, "chosen_model": cm, "rejected_model": rm,
                "chosen_ratings": cr, "rejected_ratings": rr}
        sample = Sample(id=unique_id(sid, seen, sid), messages=[prompt_turn(prompt)], images=[rel], task="vqa",
                        source="vlfeedback", split=split_of(file), meta=meta, chosen=chosen, rejected=rejected)
        out.append(Imported(sample, [ref], file, n))
    return out


def read(src: Path, images: Path | None, pairs: str = "best-worst", score: str = "mean") -> Iterator[Record]:
    src = Path(src)
    seen: set[str] = set()
    for file in row_files(src, "VLFeedback"):
        base = Path(images) if images else file.parent
        for n, row, raw in rows(file):
            if isinstance(row, BadRecord):
                yield row
                continue
            try:
                samples = _samples(row, file, n, base, seen, pairs, score)
            except (ValueError, TypeError) as e:
                rid = row.get("id") if isinstance(row, dict) else None
                yield BadRecord(file, n, f"row {n}" + (f" (id {rid!r})" if rid is not None else "") + f": {e}",
                                raw[:500])
                continue
            yield from samples


def _annotations(ratings: dict) -> dict:
    return {aspect: {"Rating": rating} for aspect, rating in ratings.items()}


def write(items: Iterable[tuple[Sample, list[Path]]], dest: Path) -> dict:
    """<split>.jsonl (split "" -> "train"), one row per pair (chosen first), the images copied under their paths."""
    with SplitLines(dest, "train") as out:
        for sample, paths in items:
            if not sample.is_pair or len(sample.images) != 1 or len(sample.messages) != 1:
                raise ValueError(f"sample {sample.id!r}: the vlfeedback format holds preference pairs of one prompt "
                                 "about one image")
            meta = dict(sample.meta)
            cm, rm = meta.pop("chosen_model", ""), meta.pop("rejected_model", "")
            cr, rr = meta.pop("chosen_ratings", {}), meta.pop("rejected_ratings", {})
            prompt_id = meta.pop("prompt_id", sample.id)
            row = {"id": sample.id, "prompt": question_text(sample.messages[0]), "models": [cm, rm],
                   "completions": [{"annotations": _annotations(cr), "model": cm, "response": sample.chosen},
                                   {"annotations": _annotations(rr), "model": rm, "response": sample.rejected}],
                   "img_path": sample.images[0]}
            if prompt_id != sample.id:
                row["prompt_id"] = prompt_id
            row.update({k: v for k, v in meta.items() if k not in row})
            copy_image(paths[0], dest, sample.images[0])
            out.add(sample.split, row)
    return {"splits": out.counts}


FORMAT = Format(
    name="vlfeedback",
    description="VLFeedback JSONL (rated completions per prompt -> preference pairs; --option pairs=, score=)",
    layout="vlfeedback_80k.jsonl ({id, prompt, completions: [{annotations, model, response}]}) + "
           "merged_images/<id>.jpg",
    read=read,
    write=write,
    options={"pairs": ("best-worst", "all"), "score": ("mean", "mean-hv")},
)
