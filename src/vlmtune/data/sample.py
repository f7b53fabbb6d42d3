"""`Sample`: the one internal format. Every outside format becomes Samples; every family encodes Samples.

A Sample is one example: its images (paths relative to the dataset directory) and a conversation in the
Hugging Face chat format, which every processor's chat template understands:

    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the top?"}]}
    {"role": "assistant", "content": [{"type": "text", "text": "red"}]}

The last assistant turn is the training target; for evaluation it is removed and generated instead.
`answers` holds every acceptable answer (VQA: the human answers, up to 10) and `references` every reference
caption; when absent the last assistant turn is the only answer. A sample may have no answer at all: a conversation
that ends with the user's question (a hidden-label test split, such as VizWiz's). Prediction, evaluation (which
writes its predictions and scores nothing), serving and autolabelling take such samples; training refuses them.

`SampleRecord` is the same thing as a JSON schema (pydantic, strict types): a manifest line is checked against it
before it becomes a Sample, so a message that is not an object, `"answers": "red"` or a list as `split` is named
("messages[1].content[0]: must be an object, got string 'red'") instead of failing later, somewhere else.
"""

from __future__ import annotations

import reprlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Role = Literal["system", "user", "assistant"]
ROLES = ("system", "user", "assistant")


def user(text: str, n_images: int = 1) -> dict:
    """A user turn: `n_images` image slots followed by the text (the order LLaVA-style templates expect)."""
    return {"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def message_text(message: dict) -> str:
    """The text of one message (its text parts joined by a space)."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return " ".join(part["text"] for part in content if part.get("type") == "text")


def count_image_slots(messages: list[dict], kind: str = "image") -> int:
    """The `{"type": kind}` parts of `messages` (kind "image" or "video")."""
    return sum(
        1 for m in messages if not isinstance(m["content"], str) for part in m["content"] if part.get("type") == kind
    )


def visual_slots(messages: list[dict]) -> list[str]:
    """"image" / "video" per image or video part of `messages`, in order (the order their pixels, and features, take
    in a batch)."""
    return [part["type"] for m in messages if not isinstance(m["content"], str) for part in m["content"]
            if part.get("type") in ("image", "video")]


@dataclass
class Sample:
    id: str
    messages: list[dict]
    images: list[str] = field(default_factory=list)
    """Image paths relative to the dataset directory, in the order of the image slots in `messages`."""
    task: str = "vqa"
    answers: list[str] | None = None
    """VQA: every human answer (the official metric uses up to 10). None: the target is the only answer."""
    references: list[str] | None = None
    """Captioning: every reference caption."""
    source: str = ""
    """Where the sample came from (dataset name); mixing and per-source accounting use it."""
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form facts used for breakdowns, e.g. question_type, answer_type."""
    videos: list[str | dict] = field(default_factory=list)
    """Videos, in the order of the `{"type": "video"}` slots in `messages`, each a path relative to the dataset
    directory (a video file, or a directory of frame images) or an object {"path": ..., "fps": F} /
    {"frames": [paths...], "fps": F}; data/video.py reads and samples them (`data.video`)."""
    chosen: str | None = None
    """Preference data (`train.method: dpo`): the preferred answer to the conversation, which then ends with the
    user's turn; `rejected` is the dispreferred one. Both or neither."""
    rejected: str | None = None

    def __post_init__(self) -> None:
        if not self.messages:
            raise ValueError(f"sample {self.id!r}: no messages")
        for m in self.messages:
            if m.get("role") not in ROLES:
                raise ValueError(f"sample {self.id!r}: unknown role {m.get('role')!r}")
        slots = count_image_slots(self.messages)
        if slots != len(self.images):
            raise ValueError(f"sample {self.id!r}: {slots} image slot(s) in messages but {len(self.images)} image(s)")
        slots = count_image_slots(self.messages, "video")
        if slots != len(self.videos):
            raise ValueError(f"sample {self.id!r}: {slots} video slot(s) in messages but {len(self.videos)} video(s)")
        if (self.chosen is None) != (self.rejected is None):
            raise ValueError(f"sample {self.id!r}: a preference pair needs both 'chosen' and 'rejected'")
        if self.chosen is not None:
            if self.messages[-1]["role"] != "user":
                raise ValueError(f"sample {self.id!r}: with 'chosen'/'rejected' the messages are the prompt and end "
                                 f"with the user's turn, not a {self.messages[-1]['role']} turn")
            if not self.chosen.strip() or not self.rejected.strip():
                raise ValueError(f"sample {self.id!r}: an empty {'chosen' if not self.chosen.strip() else 'rejected'}"
                                 " answer")
            if self.chosen.strip() == self.rejected.strip():
                raise ValueError(f"sample {self.id!r}: 'chosen' and 'rejected' are the same answer (the pair "
                                 "teaches nothing)")

    @property
    def target(self) -> str:
        """The text of the last assistant turn (what the model is trained to say)."""
        if self.messages[-1]["role"] != "assistant":
            raise ValueError(f"sample {self.id!r}: the last message is not an assistant turn")
        return message_text(self.messages[-1])

    @property
    def prompt_messages(self) -> list[dict]:
        """The conversation up to (not including) the final assistant turn: what generation starts from."""
        if self.messages[-1]["role"] == "assistant":
            return self.messages[:-1]
        return self.messages

    @property
    def question(self) -> str:
        """The text of the last user turn."""
        return message_text([m for m in self.prompt_messages if m["role"] == "user"][-1])

    @property
    def has_target(self) -> bool:
        """Whether the conversation ends with an answer (what training needs)."""
        return self.messages[-1]["role"] == "assistant"

    @property
    def is_pair(self) -> bool:
        """Whether the sample is a preference pair (`chosen` and `rejected` answers to its prompt)."""
        return self.chosen is not None

    def pair(self) -> tuple[Sample, Sample]:
        """A preference pair -> (the conversation answered with `chosen`, the same answered with `rejected`): two
        ordinary samples, which every family encodes with its own extras (grid sizes, token types, pixel masks)."""
        if not self.is_pair:
            raise ValueError(f"sample {self.id!r}: not a preference pair (no 'chosen'/'rejected' answers)")
        common = {k: v for k, v in asdict(self).items() if k not in ("messages", "chosen", "rejected")}
        return (Sample(**common | {"messages": [*self.messages, assistant(self.chosen)]}),
                Sample(**common | {"messages": [*self.messages, assistant(self.rejected)]}))

    def gold(self) -> list[str]:
        """Every acceptable answer: `answers` or `references` when given, else the target (a preference pair's
        chosen answer); [] for a sample with no answer (a hidden-label question: there is nothing to score its
        prediction against)."""
        if self.answers or self.references:
            return self.answers or self.references
        return [self.target] if self.has_target else [self.chosen] if self.is_pair else []

    def to_json(self) -> dict:
        row = {k: v for k, v in asdict(self).items() if v not in (None, {}, "") and not (k == "videos" and not v)}
        return row

    @classmethod
    def from_json(cls, row: dict) -> Sample:
        """A manifest record -> Sample. Its structure and types are checked against `SampleRecord` first: a
        ValueError lists what is wrong, field by field."""
        try:
            SampleRecord.model_validate(row)
        except ValidationError as e:
            raise ValueError(describe_errors(e)) from None
        return cls(**row)


# ---------------------------------------------------------------- the record schema


class _Strict(BaseModel):
    # strict: no coercion ("1" is not 1, 5 is not "5"); forbid: a misspelt key is an error, not a silent default
    model_config = ConfigDict(strict=True, extra="forbid")


class Part(_Strict):
    """One content part: {"type": "image"} (an image slot), {"type": "video"} (a video slot) or
    {"type": "text", "text": "..."}."""

    type: Literal["text", "image", "video"]
    text: str | None = None

    @model_validator(mode="after")
    def _text_in_text_parts(self) -> Part:
        if self.type == "text" and self.text is None:
            raise ValueError("a text part needs 'text' (a string)")
        if self.type != "text" and self.text is not None:
            raise ValueError(f"an {self.type} part has no 'text' (put the text in a part of its own)")
        return self


class VideoEntry(_Strict):
    """A video given as an object: {"path": "clip.mp4" or a frame directory, "fps": F} or {"frames": [...], "fps": F}
    (`fps`: the rate the frames were taken at; for a video file it replaces the container's)."""

    path: str | None = Field(default=None, min_length=1)
    frames: list[str] | None = Field(default=None, min_length=1)
    fps: float | None = Field(default=None, gt=0)

    @field_validator("fps", mode="before")
    @classmethod
    def _int_is_a_rate(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _one_source(self) -> VideoEntry:
        if (self.path is None) == (self.frames is None):
            raise ValueError("a video object needs exactly one of 'path' or 'frames'")
        return self


class Message(_Strict):
    role: Role
    content: list[Part]
    """A list of parts; a plain string is read as one text part."""

    @field_validator("content", mode="before")
    @classmethod
    def _string_is_one_text_part(cls, value: Any) -> Any:
        return [{"type": "text", "text": value}] if isinstance(value, str) else value


class SampleRecord(_Strict):
    """A manifest line, field for field the `Sample` dataclass (a test keeps the two in step)."""

    id: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    images: list[str] = []
    task: str = "vqa"
    answers: list[str] | None = None
    references: list[str] | None = None
    source: str = ""
    split: str | None = None
    meta: dict[str, Any] = {}
    videos: list[str | VideoEntry] = []
    chosen: str | None = Field(default=None, min_length=1)
    rejected: str | None = Field(default=None, min_length=1)


_JSON_TYPES = {dict: "object", list: "list", str: "string", int: "integer", float: "number", bool: "boolean",
               type(None): "null"}
_EXPECTED = {"model_type": "must be an object", "dict_type": "must be an object", "list_type": "must be a list",
             "string_type": "must be a string", "too_short": "must not be empty",
             "string_too_short": "must not be empty"}
MAX_ERRORS = 5
"""Errors named per record (the rest are counted)."""


def describe_errors(error: ValidationError) -> str:
    """A pydantic ValidationError as 'path: what is wrong, got ...' items, e.g.
    "answers: must be a list, got string 'red'; messages[0].content[1].text: missing"."""
    items = []
    for err in error.errors(include_url=False):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".") or "record"
        kind = err["type"]
        if kind == "extra_forbidden":
            items.append(f"{path}: unknown field")
        elif kind == "missing":
            items.append(f"{path}: missing")
        elif kind == "value_error":
            items.append(f"{path}: {err['ctx']['error']}")
        else:
            what = _EXPECTED.get(kind) or (f"must be one of {err['ctx']['expected']}" if kind == "literal_error"
                                           else err["msg"])
            value = err.get("input")  # reprlib: a 10 MB string or a deep object is shown in a few dozen characters
            items.append(f"{path}: {what}, got {_JSON_TYPES.get(type(value), type(value).__name__)} "
                         f"{reprlib.repr(value)}")
    more = len(items) - MAX_ERRORS
    return "; ".join(items[:MAX_ERRORS]) + (f"; and {more} more" if more > 0 else "")
