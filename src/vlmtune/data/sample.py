"""`Sample`: the one internal format. Every outside format becomes Samples; every family encodes Samples.

A Sample is one example: its images (paths relative to the dataset directory) and a conversation in the
Hugging Face chat format, which every processor's chat template understands:

    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the top?"}]}
    {"role": "assistant", "content": [{"type": "text", "text": "red"}]}

The last assistant turn is the training target; for evaluation it is removed and generated instead.
`answers` holds every acceptable answer (VQA: the human answers, up to 10) and `references` every reference
caption; when absent the last assistant turn is the only answer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

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


def count_image_slots(messages: list[dict]) -> int:
    return sum(
        1 for m in messages if not isinstance(m["content"], str) for part in m["content"] if part.get("type") == "image"
    )


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

    def __post_init__(self) -> None:
        if not self.messages:
            raise ValueError(f"sample {self.id!r}: no messages")
        for m in self.messages:
            if m.get("role") not in ROLES:
                raise ValueError(f"sample {self.id!r}: unknown role {m.get('role')!r}")
        slots = count_image_slots(self.messages)
        if slots != len(self.images):
            raise ValueError(f"sample {self.id!r}: {slots} image slot(s) in messages but {len(self.images)} image(s)")

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

    def gold(self) -> list[str]:
        """Every acceptable answer: `answers` or `references` when given, else the target."""
        return self.answers or self.references or [self.target]

    def to_json(self) -> dict:
        row = {k: v for k, v in asdict(self).items() if v not in (None, {}, "")}
        return row

    @classmethod
    def from_json(cls, row: dict) -> Sample:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(row) - known
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}")
        if "id" not in row or "messages" not in row:
            raise ValueError("a sample needs 'id' and 'messages'")
        return cls(**row)
