"""On-policy preference pairs from a model's own right and wrong answers: `vlmtune data pairs`.

    vlmtune data pairs data/charts --model runs/chart-sft --samples 8 --temperature 1.0 --metric relaxed_accuracy \
        --out data/charts-pairs --split train
    torchrun --nproc_per_node 4 -m vlmtune.cli data pairs data/charts --model runs/chart-sft --out data/charts-pairs

For every sample of SRC (of `--split` when given) the model (the Predictor, as `vlmtune predict --model` builds it)
samples k answers to the sample's prompt (its conversation up to the answer) at `--temperature` / `--top-p` /
`--top-k`, the k copies of one prompt in one batch, seeded by (seed, sample id): a re-run, a resumed run and a run
sharded over several processes make the same answers. Each answer is scored against `Sample.gold()` by a per-answer
metric of `vlmtune.eval.metrics.METRICS` (the functions GRPO's metric rewards use). Then:

* chosen = the most frequent sampled answer scoring >= `threshold`; rejected = the most frequent one scoring below
  it (ties: the one sampled first; empty answers are never a rejected answer);
* no right answer (all wrong): `fallback="gold"` (default) takes the sample's own target as chosen (its first gold
  answer when it has no target); `fallback="skip"` leaves the sample out;
* no wrong answer (all right): no pair, the model already answers it (counted as all_right).

A sample without a gold answer is bad input (named with its file); so is an unknown metric or a `--model` that is
not a model directory.

Resumable like autolabel: each sample's k answers go to OUT/.pairs/answers.jsonl as they are made (with the sample's
`input_hash`: prompt, task and image bytes); a re-run keeps the rows whose sample is unchanged, and refuses to mix in
rows made with another model or setting (OUT/.pairs/params.json). Under several processes (torchrun / accelerate
launch) each process samples its share of the prompts, rank 0 writes OUT; the result is the one one process gives.

Output: a vlmtune dataset in OUT (default SRC-pairs beside SRC): manifest.jsonl of preference pairs (the prompt, the
`chosen` / `rejected` answers, the gold answers kept in `answers` / `references`) + their images, copied at their
dataset paths (videos too); `vlmtune train` with `train.method: dpo` takes it as it is. Each pair records

    meta["pairs"] = {"model": "runs/x", "model_dir": "/abs/runs/x/best", "config_hash": "...", "metric":
                     "relaxed_accuracy", "k": 8, "temperature": 1.0, "top_p": 1.0, "top_k": null, "threshold": 1.0,
                     "seed": 0, "max_new_tokens": 32, "chosen_from": "sampled" | "gold",
                     "answers": [{"text": "...", "score": 1.0}, ...]}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from vlmtune.data.formats.base import copy_image, copy_video
from vlmtune.data.images import load_images
from vlmtune.data.sample import Sample
from vlmtune.data.store import MANIFEST, read_samples
from vlmtune.data.store import write_jsonl as write_rows
from vlmtune.eval.autolabel import _check_state, config_hash
from vlmtune.eval.metrics import METRICS
from vlmtune.eval.runner import _all_gather, _broadcast, _done, dist_info, sample_keys
from vlmtune.io import atomic_write_text

STATE_DIR = ".pairs"
FALLBACKS = ("gold", "skip")


def sample_seed(seed: int, sample_id: str) -> int:
    """The sampling seed of one sample's k answers: fixed by (seed, sample id) alone, whatever else is sampled."""
    return int.from_bytes(hashlib.sha256(f"pairs/{seed}/{sample_id}".encode()).digest()[:8], "little") >> 1


def prompt_of(sample: Sample) -> Sample:
    """The sample as a prompt: its conversation up to its answer, no pair fields."""
    return dataclasses.replace(sample, messages=sample.prompt_messages, chosen=None, rejected=None)


def _reference(sample: Sample) -> str:
    """The fallback chosen answer: the sample's own target, else its first gold answer."""
    return sample.target if sample.has_target else sample.gold()[0]


def choose(answers: list[str], scores: list[float], threshold: float) -> tuple[str | None, str | None]:
    """(the most frequent right answer, the most frequent non-empty wrong one); None where there is none. Ties: the
    answer sampled first."""
    right = Counter(a for a, s in zip(answers, scores, strict=True) if s >= threshold)
    wrong = Counter(a for a, s in zip(answers, scores, strict=True) if s < threshold and a.strip())
    return (right.most_common(1)[0][0] if right else None, wrong.most_common(1)[0][0] if wrong else None)


def _sample(predictor, root: Path, samples: list[Sample], k: int, options: dict, seed: int) -> list[list[str]]:
    """k sampled answers per sample: one sample's k copies in batches of the predictor's size, seeded per sample;
    the global RNG is left as it was."""
    import torch

    device = predictor.loaded.model.device if hasattr(predictor, "loaded") else None
    out = []
    for s in samples:
        q = prompt_of(s)
        if s.videos:
            q, images, videos = predictor.inputs(root, q)
        else:
            images, videos = load_images(root, q), []
        native = {"videos": [videos]} if videos else {}
        texts: list[str] = []
        with torch.random.fork_rng(devices=[device] if device is not None and device.type == "cuda" else []):
            torch.manual_seed(sample_seed(seed, s.id))
            while len(texts) < k:
                n = min(predictor.batch_size, k - len(texts))
                more = {key: v * n for key, v in native.items()}
                done = predictor.complete([q] * n, [images] * n, **options, **more)
                texts.extend(c.text.strip() for c in done)
        out.append(texts)
    return out


def _answers(predictor, root: Path, samples: list[Sample], state: Path, k: int, options: dict, seed: int,
             progress: bool) -> dict[str, list[str]]:
    """Each sample's k answers: resumed from `state`/answers.jsonl where its sample is unchanged, the rest sampled
    (rank r of `world` processes samples todo[r::world], every process makes the same number of calls, rank 0
    appends the gathered rows)."""
    rank, world = dist_info()
    path = state / "answers.jsonl"
    keys: dict[str, str] = {}
    done: dict[str, list[str]] = {}
    if rank == 0:
        keys = sample_keys(root, samples)
        done = {i: row["answers"] for i, row in _done(path).items()
                if i in keys and row.get("input_hash") == keys[i] and isinstance(row.get("answers"), list)
                and len(row["answers"]) == k}
        if done:
            print(f"{path}: resumed {len(done)} of {len(samples)} samples", file=sys.stderr)
    keys, done = _broadcast((keys, done), rank, world)
    todo = [s for s in samples if s.id not in done]
    mine = todo[rank::world]
    if rank == 0:
        state.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps({"id": s.id, "input_hash": keys[s.id], "answers": done[s.id]},
                                                   ensure_ascii=False) + "\n" for s in samples if s.id in done))
    bar = tqdm(total=len(samples), initial=len(done), desc="pairs", file=sys.stderr) if progress and rank == 0 else None
    fh = open(path, "a", encoding="utf-8") if rank == 0 else None
    try:
        for j in range(math.ceil(len(todo) / world)):
            mine_now = mine[j : j + 1]
            texts = _sample(predictor, root, mine_now or todo[:1], k, options, seed)  # an idle process keeps step
            rows = [{"id": s.id, "input_hash": keys[s.id], "answers": t}
                    for s, t in zip(mine_now, texts[: len(mine_now)], strict=True)]
            for part in _all_gather(rows, world):
                for row in part:
                    done[row["id"]] = row["answers"]
                    if fh:
                        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                if bar:
                    bar.update(len(part))
            if fh:
                fh.flush()
    finally:
        if fh:
            fh.close()
        if bar:
            bar.close()
    return done


def make_pairs(predictor, model: str | Path, src: str | Path, metric: str, out: str | Path | None = None,
               k: int = 8, temperature: float = 1.0, top_p: float = 1.0, top_k: int | None = None,
               split: str | None = None, threshold: float = 1.0, fallback: str = "gold", seed: int = 0,
               progress: bool = False, model_dir: str | Path | None = None) -> dict:
    """Preference pairs from `predictor`'s sampled answers to the samples of dataset `src`; see the module docstring.
    `model_dir`: the model directory `model` names (a run's best checkpoint), default `model` itself. Returns the
    summary the CLI prints."""
    if metric not in METRICS:
        raise ValueError(f"pairs --metric {metric!r}: not one of vlmtune's per-answer metrics {sorted(METRICS)}")
    if fallback not in FALLBACKS:
        raise ValueError(f"pairs --fallback {fallback!r}: choose gold or skip")
    if k < 2:
        raise ValueError(f"pairs --samples {k}: at least 2 answers a sample are needed to find a right and a wrong one")
    if temperature <= 0:
        raise ValueError(f"pairs --temperature {temperature}: must be > 0 (greedy decoding gives one answer k times)")
    src = Path(src)
    if not (src / MANIFEST).is_file():
        raise FileNotFoundError(f"{src}: not a vlmtune dataset (no {MANIFEST})")
    out = Path(out) if out else src.parent / f"{src.name}-pairs"
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise ValueError(f"{out}: the output must be a new directory outside {src}")
    model_dir = Path(model_dir if model_dir is not None else model)
    if not any((model_dir / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise ValueError(f"pairs: {model_dir} is not a model directory (no config.json or adapter_config.json); "
                         "for a run, pass model_dir=vlmtune.runs.resolve_model_dir(model)")
    samples, _ = read_samples(src, check_images=False)
    if split is not None:
        samples = [s for s in samples if s.split == split]
        if not samples:
            raise ValueError(f"{src / MANIFEST}: no samples of split {split!r}")
    for s in samples:
        if not s.gold():
            raise ValueError(f"{src / MANIFEST}: sample {s.id!r} has no gold answer (no target, answers or "
                             "references) to score the model's answers against")

    record = {"model": str(model), "model_dir": str(model_dir.resolve()), "config_hash": config_hash(model_dir),
              "metric": metric, "k": k, "temperature": temperature, "top_p": top_p, "top_k": top_k,
              "threshold": threshold, "seed": seed, "max_new_tokens": predictor.max_new_tokens}
    rank, _ = dist_info()
    state = out / STATE_DIR
    # the answers depend on the model and sampling settings; threshold and fallback only pick among them
    _check_state(state, {key: v for key, v in record.items() if key not in ("threshold", "model")}, write=rank == 0,
                 verb="pairs")
    options = {"temperature": temperature, "top_p": top_p, "top_k": top_k}
    answers = _answers(predictor, src, samples, state, k, options, seed, progress)

    score = METRICS[metric]
    written, counts = [], Counter()
    for s in samples:
        texts = answers[s.id]
        scores = [float(score(t, s.gold())) for t in texts]
        right, wrong = choose(texts, scores, threshold)
        counts["all_right" if wrong is None and right else "all_wrong" if right is None else "mixed"] += 1
        chosen, origin = right, "sampled"
        if right is None and fallback == "gold":
            chosen, origin = _reference(s), "gold"
        if wrong is None or chosen is None or chosen.strip() == wrong.strip():
            counts["skipped"] += right is None or wrong is not None  # all right: counted as that
            continue
        counts[f"from_{origin}"] += 1
        gold = {"answers": None, "references": s.gold()} if s.task == "caption" else \
            {"answers": s.gold(), "references": None}
        meta = {**record, "chosen_from": origin, "answers": [{"text": t, "score": v} for t, v in zip(texts, scores,
                                                                                                     strict=True)]}
        written.append(dataclasses.replace(prompt_of(s), **gold, chosen=chosen,
                                           rejected=wrong, meta={**s.meta, "pairs": meta}))
    result = {"out": str(out), "model": str(model), "metric": metric, "samples": len(samples),
              "pairs": len(written), "pairs_from_gold": counts["from_gold"], "all_right": counts["all_right"],
              "all_wrong": counts["all_wrong"], "skipped": counts["skipped"]}
    if rank != 0:
        return result
    if not written:
        print(f"warning: no pairs made from {len(samples)} samples ({counts['all_right']} all right, "
              f"{counts['skipped']} skipped)", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    for s in written:
        for rel in s.images:
            copy_image(src / rel, out, rel)
        for v in s.videos:  # a video file or frame folder, or {"path": ...} / {"frames": [...]}
            if isinstance(v, str) or "path" in v:
                rel = v if isinstance(v, str) else v["path"]
                copy_video(src / rel, out, rel)
            else:
                for rel in v["frames"]:
                    copy_image(src / rel, out, rel)
    write_rows(out / MANIFEST, (s.to_json() for s in written))
    return result
