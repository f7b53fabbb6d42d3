"""LLaVA-Video-178K / ShareGPT-video conversations: one JSON list (or JSONL) of records, each about one video.

    0_30_s_academic_v0_1/0_30_s_academic_mc_v0_1_qa_processed.json
        [{"id": "v_-3sEA3Ywgqc", "video": "academic_source/activitynet/v_-3sEA3Ywgqc.mp4", "data_source": "...",
          "conversations": [{"from": "human", "value": "<video>\\nWhat does the man do after he sits down?"},
                            {"from": "gpt", "value": "He ties his shoes."}]},
         ...]

`video` is a video file or a directory of frames, relative to `--images` (default: the JSON file's directory); each
`<video>` placeholder becomes a video part where it stands (whitespace next to it dropped, as LLaVA does with
`<image>`), and the record has exactly one. Turns alternate human/gpt, start with human (a leading system turn is kept)
and end with gpt (the target; task "vqa"). The sample id is the record's "id" (a repeat gets "-2", ...), the split the
file's stem, the video is stored at videos/<path as given>, and the other fields (data_source, ...) go to `meta`.
Export writes `<split>.json` in this layout with the videos at their paths next to it. The conversation rules are the
llava format's (data/formats/llava.py), with `<video>` for `<image>`.
"""

from __future__ import annotations

import json
import posixpath
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from vlmtune.data.formats.base import BadRecord, Format, Imported, Record, SplitArrays, image_ref
from vlmtune.data.formats.llava import NAMES, PLACEHOLDER, ROLES, _records, source_files, to_messages, unique_id
from vlmtune.data.sample import Sample, message_text

VIDEO = "<video>"
_FIELDS = ("id", "video", "conversations")


def _messages(turns: list[tuple[str, object]]) -> list[dict]:
    """Turns with one `<video>` placeholder -> messages with one video part (through llava's `to_messages`)."""
    for k, (_, text) in enumerate(turns):
        if isinstance(text, str) and PLACEHOLDER in text:
            raise ValueError(f"turn {k}: a literal {PLACEHOLDER} in a video conversation")
    turns = [(role, text.replace(VIDEO, PLACEHOLDER) if isinstance(text, str) else text) for role, text in turns]
    try:
        messages = to_messages(turns, NAMES, 1)
    except ValueError as e:
        raise ValueError(str(e).replace(PLACEHOLDER, VIDEO).replace("1 image", "1 video")) from None
    return [{**m, "content": [{"type": "video"} if p["type"] == "image" else p for p in m["content"]]}
            for m in messages]


def _sample(row: object, file: Path, n: int, base: Path, seen: set[str]) -> Imported:
    if not isinstance(row, dict):
        raise ValueError("a record must be a JSON object")
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError("missing or empty 'conversations'")
    rel = row.get("video")
    if not isinstance(rel, str) or not rel.strip():
        raise ValueError(f"'video' must be a path, got {json.dumps(rel, ensure_ascii=False)[:80]}")
    rel = posixpath.normpath(rel)
    pairs = []
    for k, turn in enumerate(turns):
        who = turn.get("from") if isinstance(turn, dict) else None
        if not isinstance(who, str) or who not in ROLES:
            raise ValueError(f"turn {k}: expected {{'from': 'human' | 'gpt' | 'system', 'value': ...}}, got "
                             f"{json.dumps(turn, ensure_ascii=False)[:80]}")
        pairs.append((ROLES[who], turn.get("value")))
    source = image_ref(base, rel, "video").path  # inside --images, or a ValueError naming the path
    sample = Sample(id=unique_id(row.get("id"), seen, f"{file.stem}-{n}"), messages=_messages(pairs),
                    videos=[f"videos/{rel}"], task="vqa", source="llava_video", split=file.stem,
                    meta={k: v for k, v in row.items() if k not in _FIELDS})
    return Imported(sample, [], file, n, videos=[source])


def read(src: Path, images: Path | None) -> Iterator[Record]:
    seen: set[str] = set()
    for file, base in source_files(Path(src), images, (".json", ".jsonl"), "LLaVA-Video JSON"):
        for n, row, raw in _records(file):
            if isinstance(row, BadRecord):
                yield row
                continue
            try:
                yield _sample(row, file, n, base, seen)
            except ValueError as e:
                rid = row.get("id") if isinstance(row, dict) else None
                name = f"record {n}" + (f" (id {rid!r})" if rid is not None else "")
                yield BadRecord(file, n, f"{name}: {e}", raw[:500] or json.dumps(row, ensure_ascii=False)[:500])


def write(items: Iterable[tuple[Sample, list[Path]]], dest: Path) -> dict:
    """<split>.json (split "" -> "all"), one record a line, each video at its path next to it."""
    with SplitArrays(dest) as out:
        for sample, paths in items:
            if len(sample.videos) != 1 or sample.images or not isinstance(sample.videos[0], str):
                raise ValueError(f"sample {sample.id!r}: a LLaVA-Video record has one video (a path) and no image")
            if sample.messages[-1]["role"] != "assistant":
                raise ValueError(f"sample {sample.id!r}: a LLaVA-Video conversation ends with a gpt answer")
            rel = sample.videos[0].removeprefix("videos/")
            turns = [{"from": NAMES[m["role"]], "value": "\n".join(VIDEO if p.get("type") == "video" else p["text"]
                                                                   for p in m["content"])
                      if m["role"] == "user" else message_text(m)} for m in sample.messages]
            row = {"id": sample.id, "video": rel, "conversations": turns,
                   **{k: v for k, v in sample.meta.items() if k not in _FIELDS}}
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if paths[-1].is_dir():
                shutil.copytree(paths[-1], target, dirs_exist_ok=True)
            elif not target.exists():
                shutil.copyfile(paths[-1], target)
            out.add(sample.split, row)
    return {"splits": out.counts}


FORMAT = Format(
    name="llava_video",
    description="LLaVA-Video-178K / ShareGPT-video JSON (conversations with a <video> placeholder, one video each)",
    layout="<name>.json (a list of {id, video, conversations}) with videos relative to it or to --images",
    read=read,
    write=write,
    videos=True,
)
