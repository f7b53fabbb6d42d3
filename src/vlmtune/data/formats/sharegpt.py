"""ShareGPT-style multimodal JSONL, as LLaMA-Factory (`formatting: sharegpt`, data/mllm_demo.json) and ms-swift read
it: one conversation a line, either "conversations" (from/value) or "messages" (role/content), with `<image>`
placeholders in the user text and the images, in placeholder order, in "images".

    train.jsonl
        {"conversations": [{"from": "human", "value": "<image>Who are they?"},
                           {"from": "gpt", "value": "They're Kane and Gretzka from Bayern Munich."}],
         "system": "You are a helpful assistant.", "images": ["mllm_demo_data/1.jpg"]}
        {"messages": [{"role": "user", "content": "<image><image>What is the difference between the two images?"},
                      {"role": "assistant", "content": "..."}],
         "images": ["mllm_demo_data/2.jpg", "mllm_demo_data/3.jpg"]}
        {"messages": [...], "images": ["data:image/png;base64,iVBORw0KGgo..."]}
        {"id": "chat-7", "messages": [{"role": "user", "content": "Say hello."}, ...]}      text-only: no "images"
    mllm_demo_data/1.jpg

Preference pairs (`train.method: dpo`), in the two layouts their trainers read:
    {"conversations": [{"from": "human", "value": "<image>What is in the picture?"}],      LLaMA-Factory, ranking: true
     "chosen": {"from": "gpt", "value": "A red bus."}, "rejected": {"from": "gpt", "value": "A blue car."},
     "images": ["rlhf_v/1.jpg"]}                       (its data/dataset_info.json maps these columns, e.g. rlhf_v)
    {"messages": [{"role": "user", "content": "<image>What is in the picture?"},            ms-swift (RLHF/DPO)
                  {"role": "assistant", "content": "A red bus."}],
     "rejected_response": "A blue car.", "images": ["rlhf_v/1.jpg"]}
LLaMA-Factory's conversation ends with the user's turn and `chosen` / `rejected` are assistant turns (or plain
strings); ms-swift's ends with the chosen answer and `rejected_response` is the other. Either becomes a Sample whose
messages are the prompt with `chosen` / `rejected` set (data/sample.py); a record with only one of the two, equal
answers or an empty one is a bad record, and so is one with ms-swift's `rejected_messages` / `rejected_images` (a
rejected answer to another conversation or image: not read). Export writes pairs in the ms-swift form.

`src` is one such file (images relative to `--images`, default the file's directory) or a directory of *.jsonl files,
read line by line. Each line becomes one Sample, the conversation mapped as in the llava format (each `<image>` an
image part where it stands; placeholders and images must match in number; user/assistant alternate, an optional
system turn first, the final assistant answer is the target; task "vqa"). A top-level "system" is that system turn.
Images are paths (-> images/<path>, sub-folders kept) or base64 data URIs (-> images/<sha256 prefix>.<ext>); http(s)
URLs are never fetched. The id is the line's "id" (a repeat gets "-2", ...; none: "<file stem>-<line number>"), the
split the file's stem, and other fields go to `meta`. Export writes `<split>.jsonl` in the "messages" form with an "id"
on every line and the images copied under images/.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from vlmtune.data.formats.base import (
    BadRecord,
    Format,
    ImageRef,
    Imported,
    Record,
    SplitLines,
    content_name,
    copy_image,
    decode_data_uri,
    image_ref,
)
from vlmtune.data.formats.llava import (
    PLACEHOLDER,
    dataset_image,
    jsonl_rows,
    placeholder_text,
    source_files,
    to_messages,
    unique_id,
)
from vlmtune.data.sample import Sample, message_text

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
FORMS = {"conversations": ("from", "value", {"user": "human", "assistant": "gpt", "system": "system"}),
         "messages": ("role", "content", {"user": "user", "assistant": "assistant", "system": "system"})}
"""Each form's list key -> (role key, text key, how it names each role)."""
_FIELDS = ("id", "conversations", "messages", "images", "system", "chosen", "rejected", "rejected_response")


def source_image(value: object, k: int, base: Path) -> tuple[str, ImageRef]:
    """One entry of "images" -> (its path in the dataset, where its bytes are)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"image {k}: expected a path or a data URI, got {json.dumps(value)[:80]}")
    if value.startswith("data:"):
        data, suffix = decode_data_uri(value, f"image {k}")
        return content_name(data, suffix), ImageRef(data=data)
    if value.lower().startswith(("http://", "https://")):
        raise ValueError(f"image {k}: {value[:80]} is an http(s) URL; URLs are never fetched (download the images "
                         f"and give paths or data URIs)")
    return dataset_image(value), image_ref(base, value, f"image {k}")


def _sample(row: object, file: Path, lineno: int, base: Path, seen: set[str]) -> Imported:
    if not isinstance(row, dict):
        raise ValueError("a line must be a JSON object")
    forms = [key for key in FORMS if key in row]
    if len(forms) != 1:
        raise ValueError("expected either 'conversations' (from/value) or 'messages' (role/content)")
    role_key, text_key, names = FORMS[forms[0]]
    turns = row[forms[0]]
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"'{forms[0]}' must be a non-empty list")
    pairs: list[tuple[str, object]] = []
    system = row.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise ValueError("'system' must be a string")
        pairs.append(("system", system))
    for k, turn in enumerate(turns):
        role = turn.get(role_key) if isinstance(turn, dict) else None
        if not isinstance(role, str) or role not in ROLES:  # a list or object is no key of ROLES
            raise ValueError(f"turn {k}: expected {{'{role_key}': {' | '.join(map(repr, names.values()))}, "
                             f"'{text_key}': ...}}, got {json.dumps(turn, ensure_ascii=False)[:80]}")
        if ROLES[role] == "system" and system:
            raise ValueError(f"turn {k}: a system turn besides the 'system' field")
        pairs.append((ROLES[role], turn.get(text_key)))
    images = row.get("images")
    entries = [] if images is None else [images] if isinstance(images, str) else images
    if not isinstance(entries, list):
        raise ValueError("'images' must be a list of paths or data URIs")
    rejected = _rejected(row, role_key, text_key, pairs)
    messages = to_messages(pairs, names, len(entries), first=-1 if system is not None else 0)
    chosen = None
    if rejected is not None:  # the last turn is the chosen answer: the messages are the prompt before it
        chosen, messages = message_text(messages[-1]), messages[:-1]
    found = [source_image(value, k, base) for k, value in enumerate(entries)]
    sample = Sample(id=unique_id(row.get("id"), seen, f"{file.stem}-{lineno}"), messages=messages,
                    images=[rel for rel, _ in found], task="vqa", source="sharegpt", split=file.stem,
                    meta={k: v for k, v in row.items() if k not in _FIELDS}, chosen=chosen, rejected=rejected)
    return Imported(sample, [ref for _, ref in found], file, lineno)


def _answer(value: object, role_key: str, text_key: str, what: str) -> str:
    """A preference answer: a string, or an assistant turn {role_key: "gpt" | "assistant", text_key: "..."}."""
    if isinstance(value, dict):
        role = value.get(role_key)
        if not isinstance(role, str) or ROLES.get(role) != "assistant":
            raise ValueError(f"'{what}' must be an assistant turn, got {json.dumps(value, ensure_ascii=False)[:80]}")
        value = value.get(text_key)
    if not isinstance(value, str):
        raise ValueError(f"'{what}' must be a string or an assistant turn, got {type(value).__name__}")
    if PLACEHOLDER in value:
        raise ValueError(f"a literal {PLACEHOLDER} in the '{what}' answer")
    return value


def _rejected(row: dict, role_key: str, text_key: str, pairs: list[tuple[str, object]]) -> str | None:
    """A preference record's rejected answer (None: not one). LLaMA-Factory's `chosen` is appended to `pairs` as the
    final assistant turn, where ms-swift's already is."""
    for key in ("rejected_messages", "rejected_images"):  # ms-swift's variants: another conversation or image
        if key in row:
            raise ValueError(f"'{key}' is not read (a rejected answer about another conversation or image); give "
                             "the rejected answer to the same prompt as 'rejected_response'")
    if "rejected_response" in row:
        if "chosen" in row or "rejected" in row:
            raise ValueError("either 'chosen' + 'rejected' (LLaMA-Factory) or 'rejected_response' (ms-swift), not both")
        if not pairs or pairs[-1][0] != "assistant":
            raise ValueError("with 'rejected_response' the conversation ends with the chosen assistant answer")
        return _answer(row["rejected_response"], role_key, text_key, "rejected_response")
    if "chosen" not in row and "rejected" not in row:
        return None
    for key in ("chosen", "rejected"):
        if row.get(key) is None:
            raise ValueError(f"a preference pair needs both 'chosen' and 'rejected'; '{key}' is missing")
    if pairs and pairs[-1][0] == "assistant":
        raise ValueError("with 'chosen'/'rejected' the conversation ends with the user's turn (the prompt)")
    pairs.append(("assistant", _answer(row["chosen"], role_key, text_key, "chosen")))
    return _answer(row["rejected"], role_key, text_key, "rejected")


def read(src: Path, images: Path | None) -> Iterator[Record]:
    seen: set[str] = set()
    for file, base in source_files(Path(src), images, (".jsonl",), "ShareGPT JSONL"):
        for lineno, row, raw in jsonl_rows(file):
            if isinstance(row, BadRecord):
                yield row
                continue
            try:
                yield _sample(row, file, lineno, base, seen)
            except ValueError as e:
                rid = row.get("id") if isinstance(row, dict) else None
                yield BadRecord(file, lineno, f"line {lineno}" + (f" (id {rid!r})" if rid is not None else "") +
                                f": {e}", raw[:500])


def write(items: Iterable[tuple[Sample, list[Path]]], dest: Path) -> dict:
    """<split>.jsonl (split "" -> "all") in the "messages" form (a preference pair in ms-swift's: the chosen answer
    last, `rejected_response`), the images copied under images/."""
    with SplitLines(dest) as out:
        for sample, paths in items:
            if sample.messages[-1]["role"] != "assistant" and not sample.is_pair:
                raise ValueError(f"sample {sample.id!r}: a ShareGPT conversation ends with an assistant answer")
            rels = [rel if rel.startswith("images/") else f"images/{rel}" for rel in sample.images]
            row: dict = {"id": sample.id, "messages": [
                {"role": m["role"], "content": placeholder_text(m) if m["role"] == "user" else message_text(m)}
                for m in sample.messages]}
            if sample.is_pair:
                row["messages"].append({"role": "assistant", "content": sample.chosen})
                row["rejected_response"] = sample.rejected
            if rels:
                row["images"] = rels
            row.update({k: v for k, v in sample.meta.items() if k not in _FIELDS})
            for path, rel in zip(paths, rels, strict=True):
                copy_image(path, dest, rel)
            out.add(sample.split, row)
    return {"splits": out.counts}


FORMAT = Format(
    name="sharegpt",
    description="ShareGPT JSONL (conversations from/value or messages role/content, images as paths or base64)",
    layout="<name>.jsonl ({conversations | messages, images} a line) with image paths relative to it or to --images",
    read=read,
    write=write,
)
