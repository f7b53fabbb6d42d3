"""The requests of the OpenAI-compatible server (serve/app.py), validated: the pydantic models of a chat and a
retrieve request (strict types: `true` is not a number), their errors as OpenAI-style `ApiError`s naming the field,
and `parse_body` (UTF-8 JSON, nesting limited before anything is built).
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

import pydantic_core
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_JSON_DEPTH = 32
"""Nesting of a request body (a chat request needs 6: body, messages, message, content, part, image_url)."""
MIN_TEMPERATURE = 0.01
"""Below it (and above 0, which is greedy) logits / temperature overflow to inf and sampling fails."""


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


class _Strict(BaseModel):
    """Strict types (`true` is not a number, `"1"` is not an int); fields vlmtune does not use are ignored, as
    OpenAI clients send many (model, user, seed, ...)."""

    model_config = ConfigDict(strict=True, extra="ignore")


class ImageURL(_Strict):
    url: StrictStr


class Part(_Strict):
    type: Literal["text", "image_url"]
    text: StrictStr | None = None
    image_url: Annotated[ImageURL | None, BeforeValidator(lambda v: {"url": v} if isinstance(v, str) else v)] = None

    @model_validator(mode="after")
    def _complete(self):
        if self.type == "text" and self.text is None:
            raise PydanticCustomError("part", "a text part needs a string 'text'")
        if self.type == "image_url" and self.image_url is None:
            raise PydanticCustomError("part", "an image_url part needs 'image_url': {'url': ...}")
        return self


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: Annotated[list[Part], BeforeValidator(lambda v: [{"type": "text", "text": v}] if isinstance(v, str)
                                                   else v)]


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class ChatOptions(_Strict):
    """vlmtune's own part of a chat request, `"vlmtune": {...}` (the openai client sends it with `extra_body`)."""

    k: Annotated[StrictInt, Field(ge=0)] | None = None
    """Catalogue items to attach (with --index); None: the server's --k, 0: none."""
    query: Literal["auto", "text", "image"] = "auto"
    """What of the last user message searches the catalogue: its text and its image (auto), or one of them (the
    page's Describe button searches by the image alone: its text is the caption prompt, not a wish)."""


Temperature = Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


class ChatRequest(_Strict):
    """The parts of an OpenAI chat completion request that vlmtune serves; null means the default."""

    messages: list[Message]
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: StrictInt | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    vlmtune: ChatOptions | None = None

    @field_validator("messages")
    @classmethod
    def _some(cls, v):
        if not v:
            raise PydanticCustomError("messages", "must be a non-empty list")
        return v

    @field_validator("n")
    @classmethod
    def _one(cls, v):
        if v not in (None, 1):
            raise PydanticCustomError("n", "only n=1 is supported")
        return v

    @field_validator("temperature")
    @classmethod
    def _not_tiny(cls, v):
        if v is not None and 0 < v < MIN_TEMPERATURE:
            raise PydanticCustomError("temperature", "must be 0 (greedy) or between {low} and 2",
                                      {"low": MIN_TEMPERATURE})
        return v


class RetrieveRequest(_Strict):
    """`POST /v1/retrieve`: a text, an image (a data: URI, or {"url": ...}) or both -> the top-k catalogue items."""

    text: StrictStr | None = None
    image: Annotated[ImageURL | None, BeforeValidator(lambda v: {"url": v} if isinstance(v, str) else v)] = None
    k: Annotated[StrictInt, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _something(self):
        if self.text is not None and not self.text.strip():
            raise PydanticCustomError("text", "text: must not be empty (leave it out to search by the image)")
        if self.text is None and self.image is None:
            raise PydanticCustomError("query", "give a 'text', an 'image' or both")
        return self


def _where(loc) -> str:
    """pydantic's ('messages', 0, 'content', 1, 'text') -> 'messages[0].content[1].text'."""
    out = ""
    for x in loc:
        out += f"[{x}]" if isinstance(x, int) else f".{x}" if out else str(x)
    return out


def _validation_error(e: ValidationError) -> ApiError:
    first = e.errors(include_url=False)[0]
    where = _where(first["loc"])
    # pydantic names Python types ("a valid dictionary or instance of StreamOptions"); the client sent JSON
    message = "Input should be an object" if first["type"] in ("model_type", "dict_type") else first["msg"]
    if first["type"] != "missing" and isinstance(first.get("input"), (bool, int, float, str)):
        message += f" (got {json.dumps(first['input'])[:40]})"
    return ApiError(400, f"{where}: {message}" if where else message, where or None)


def parse_body(body: bytes) -> dict:
    """The request body -> a JSON object: UTF-8, at most MAX_JSON_DEPTH deep (pydantic-core's parser stops far
    deeper structures before recursing into them), no NaN or Infinity."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the body is not UTF-8 (byte {body[e.start]:#04x} at offset {e.start})") from None
    too_deep = ApiError(400, f"the body's JSON is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = pydantic_core.from_json(text, allow_inf_nan=False)
    except ValueError as e:
        if "recursion limit" in str(e):
            raise too_deep from None
        raise ApiError(400, f"malformed JSON: {e}") from None
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise too_deep
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data
