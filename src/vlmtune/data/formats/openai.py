"""OpenAI chat fine-tuning JSONL (https://platform.openai.com/docs/guides/vision-fine-tuning): one conversation a
line, images as "image_url" parts of the user content.

    train.jsonl
        {"messages": [{"role": "system", "content": "You are an assistant that identifies and describes artworks."},
                      {"role": "user", "content": "Describe this artwork."},
                      {"role": "user", "content": [{"type": "image_url",
                                                    "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ...",
                                                                  "detail": "low"}}]},
                      {"role": "assistant", "content": "This is a painting of a lighthouse.", "weight": 1}]}
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Which is brighter?"},
                                                   {"type": "image_url", "image_url": {"url": "photos/a.jpg"}},
                                                   {"type": "image_url", "image_url": {"url": "file:///data/b.png"}}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "The second one."}]}]}

`src` is one such file or a directory of *.jsonl files, read line by line. Content is a string or a list of text and
image_url parts, kept in order: each image_url becomes an image part of the vlmtune user content. Consecutive user
messages are merged into one (their parts in order; chat templates want user and assistant to alternate); system
messages come first; the conversation ends with the assistant answer, the target (task "vqa"). Image URLs are base64
data URIs (-> images/<sha256 prefix>.<ext>), paths relative to the file's directory or `--images`, or file:// URLs
inside that directory (-> images/<path there>); http(s) URLs are never fetched. "detail" and the assistant "weight"s go
to `meta` (image_detail, weight); other top-level fields are not kept. The id is "<file stem>-<line number>" (or the
line's "id" field, not an OpenAI one; a repeat gets "-2", ...), the split the file's stem. Export writes
`<split>.jsonl` with every image inline as a base64 data URI (one self-contained file a split, what OpenAI accepts)
and an "id" field only where the line number would not give the sample's id back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from vlmtune.data.formats.base import (
    BadRecord,
    Format,
    ImageRef,
    Imported,
    Record,
    SplitLines,
    content_name,
    data_uri,
    decode_data_uri,
    image_ref,
)
from vlmtune.data.formats.llava import content_parts, dataset_image, jsonl_rows, source_files, unique_id
from vlmtune.data.sample import Sample, message_text


def _image(url: object, n: int, base: Path) -> tuple[str, ImageRef]:
    """An image_url "url" -> (its path in the dataset, where its bytes are)."""
    where = f"image {n}"
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"{where}: expected a URL string, got {json.dumps(url)[:80]}")
    if url.startswith("data:"):
        data, suffix = decode_data_uri(url, where)
        return content_name(data, suffix), ImageRef(data=data)
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https"):
        raise ValueError(f"{where}: {url[:80]} is an http(s) URL; URLs are never fetched (download the images and "
                         f"give paths or data URIs)")
    if scheme == "file":
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{where}: {url[:80]}: a file:// URL on another host")
        path = Path(unquote(parsed.path))
        if not path.is_absolute():
            raise ValueError(f"{where}: {url[:80]}: a file:// URL needs an absolute path")
        rel = os.path.relpath(path.resolve(), Path(base).resolve()).replace(os.sep, "/")
    elif scheme and len(scheme) > 1:  # "c:/..." is a Windows path, not a scheme
        raise ValueError(f"{where}: unsupported URL scheme {scheme!r}")
    else:
        rel = url
    ref = image_ref(base, rel, where)
    return dataset_image(rel), ref


class MessageError(ValueError):
    """An OpenAI chat message that `read_messages` cannot read: `problem`, found in messages[k] (its content[j] when
    the problem is one part)."""

    def __init__(self, problem: str, k: int, j: int | None = None):
        super().__init__(f"message {k}: {problem}")
        self.problem, self.k, self.j = problem, k, j

    @property
    def where(self) -> str:
        """The JSON path of what is wrong, as an API error names it: messages[2] or messages[2].content[0]."""
        return f"messages[{self.k}]" + (f".content[{self.j}]" if self.j is not None else "")


def read_messages(turns: list, image: Callable[[object, object, int, int], None],
                  blank_text: bool = False) -> Iterator[dict]:
    """OpenAI chat messages -> vlmtune messages, one for each, in order (yielded as read, so a caller's own check of
    message k runs before message k + 1 is read): the one reading of the OpenAI message shape, shared by this format
    and the server's /v1/chat/completions. A role is system, user or assistant; content is a string (one text part)
    or a non-empty list of "text" and "image_url" parts; a text is a string, blank only with `blank_text`; images are
    accepted in user messages only, and each becomes an image part after `image(url, detail, k, j)` was called on
    it (the caller loads or checks it; its errors propagate). "image_url" is {"url": ..., "detail": ...} or the URL
    itself. Which roles may follow which, and what the last one must be, are the caller's to check. Raises
    MessageError."""
    for k, m in enumerate(turns):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("system", "user", "assistant"):
            raise MessageError(f"expected a system, user or assistant message, got "
                               f"{json.dumps(m, ensure_ascii=False)[:80]}", k)
        content = m.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list) or not content:
            raise MessageError("'content' must be a string or a non-empty list of parts", k)
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text = part.get("text")
                if not isinstance(text, str) or not (blank_text or text.strip()):
                    raise MessageError("empty or missing text", k, j)
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url" and role == "user":
                spec = part.get("image_url")
                url, detail = (spec.get("url"), spec.get("detail")) if isinstance(spec, dict) else (spec, None)
                image(url, detail, k, j)
                parts.append({"type": "image"})
            elif kind == "image_url":
                raise MessageError(f"unsupported {role} content part (images are accepted in user messages only)",
                                   k, j)
            else:
                raise MessageError(f"unsupported {role} content part {json.dumps(part)[:80]}", k, j)
        yield {"role": role, "content": parts}


def _sample(row: object, file: Path, lineno: int, base: Path, seen: set[str]) -> Imported:
    if not isinstance(row, dict):
        raise ValueError("a line must be a JSON object")
    turns = row.get("messages")
    if not isinstance(turns, list) or not turns:
        raise ValueError("missing or empty 'messages'")
    images, sources, details, weights = [], [], [], []

    def image(url: object, detail: object, k: int, j: int) -> None:
        rel, ref = _image(url, len(images), base)
        images.append(rel)
        sources.append(ref)
        details.append(detail)

    messages: list[dict] = []
    for k, (m, read) in enumerate(zip(turns, read_messages(turns, image), strict=True)):
        role, parts = read["role"], read["content"]
        if role == "system":
            if any(x["role"] != "system" for x in messages):
                raise ValueError(f"message {k}: a system message after the conversation started")
            messages.append({"role": "system", "content": parts})
        elif role == "user":
            if messages and messages[-1]["role"] == "user":
                messages[-1]["content"].extend(parts)
            else:
                messages.append({"role": "user", "content": parts})
        else:
            if not messages or messages[-1]["role"] != "user":
                raise ValueError(f"message {k}: an assistant message must follow a user message")
            messages.append({"role": "assistant", "content": [{"type": "text", "text": message_text(
                {"content": parts})}]})
            weights.append(m.get("weight"))
    if messages[-1]["role"] != "assistant":
        raise ValueError("the conversation must end with an assistant message (the target)")
    meta = {}
    if any(d is not None for d in details):
        meta["image_detail"] = details
    if any(w is not None for w in weights):
        meta["weight"] = weights
    sample = Sample(id=unique_id(row.get("id"), seen, f"{file.stem}-{lineno}"), messages=messages, images=images,
                    task="vqa", source="openai", split=file.stem, meta=meta)
    return Imported(sample, sources, file, lineno)


def read(src: Path, images: Path | None) -> Iterator[Record]:
    seen: set[str] = set()
    for file, base in source_files(Path(src), images, (".jsonl",), "OpenAI JSONL"):
        for lineno, row, raw in jsonl_rows(file):
            if isinstance(row, BadRecord):
                yield row
                continue
            try:
                yield _sample(row, file, lineno, base, seen)
            except ValueError as e:
                yield BadRecord(file, lineno, f"line {lineno}: {e}", raw[:500])


def _line(sample: Sample, paths: list[Path], split: str, lineno: int) -> dict:
    details = sample.meta.get("image_detail")
    if not isinstance(details, list) or len(details) != len(paths):
        details = [None] * len(paths)
    n_answers = sum(m["role"] == "assistant" for m in sample.messages)
    weights = sample.meta.get("weight")
    if not isinstance(weights, list) or len(weights) != n_answers:
        weights = [None] * n_answers
    images, answers, messages = iter(zip(paths, details, strict=True)), iter(weights), []
    for m in sample.messages:
        if m["role"] != "user":
            out = {"role": m["role"], "content": message_text(m)}
            weight = next(answers) if m["role"] == "assistant" else None
            if weight is not None:
                out["weight"] = weight
            messages.append(out)
            continue
        parts = []
        for p in content_parts(m):
            if p.get("type") == "image":
                path, detail = next(images)
                url = {"url": data_uri(path)} | ({"detail": detail} if detail is not None else {})
                parts.append({"type": "image_url", "image_url": url})
            else:
                parts.append({"type": "text", "text": p["text"]})
        one_text = len(parts) == 1 and parts[0]["type"] == "text"
        messages.append({"role": "user", "content": parts[0]["text"] if one_text else parts})
    row: dict = {} if sample.id == f"{split}-{lineno}" else {"id": sample.id}
    return row | {"messages": messages}


def write(items: Iterable[tuple[Sample, list[Path]]], dest: Path) -> dict:
    """<split>.jsonl (split "" -> "all"), every image inline as a base64 data URI."""
    with SplitLines(dest) as out:
        for sample, paths in items:
            if sample.messages[-1]["role"] != "assistant":
                raise ValueError(f"sample {sample.id!r}: an OpenAI fine-tuning example ends with an assistant answer")
            split = sample.split or "all"
            out.add(split, _line(sample, paths, split, out.counts.get(split, 0) + 1))
    return {"splits": out.counts}


FORMAT = Format(
    name="openai",
    description="OpenAI chat messages JSONL (image_url parts: paths, file:// or base64 data URIs)",
    layout="<split>.jsonl ({messages} a line; image_url: data URIs, or paths / file:// URLs under it or --images)",
    read=read,
    write=write,
)
