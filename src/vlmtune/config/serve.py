"""The serving section: `ServeCfg` (`vlmtune serve`: host, limits, keys, the page, the catalogue)."""

from __future__ import annotations

from dataclasses import dataclass

from vlmtune.config.data import MAX_PROMPT_LENGTH


@dataclass
class ServeCfg:
    """`vlmtune serve`: the OpenAI-compatible server's batching and limits."""

    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None
    """The id reported by /v1/models and in responses (default: the model directory's name)."""
    api_key: str | None = None
    """Require `Authorization: Bearer <key>` (compared in constant time) everywhere but `/` and `/health`."""
    allowed_hosts: list[str] | None = None
    """Host header values served (`*`: any; `*.example.com`); None: `host` and the localhost names (any IP address
    too when `host` is 0.0.0.0 or ::). A web page whose own name resolves to this server (DNS rebinding) is refused."""
    allowed_origins: list[str] | None = None
    """Web origins (`https://app.example.com`, `*`) whose pages may call the API (CORS); None: the server's own page."""
    max_batch_size: int = 8
    """Requests grouped into one generate call."""
    max_wait_ms: float = 10.0
    """How long the first request of a batch waits for others to join."""
    max_body_bytes: int = 20 * 1024 * 1024
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_aspect_ratio: float = 50.0
    """Longest side / shortest side of an image: processors scale the short side up, so a thin image costs far more
    than its pixels."""
    max_resized_pixels: int = 40_000_000
    """Pixels of an image after the model's processor resizes (or pads) it, computed before the processor runs."""
    max_images: int = 4
    """Images per request."""
    max_tokens: int = 512
    """The largest `max_tokens` a request may ask for (and the default when it asks for none: 64)."""
    max_prompt_tokens: int = MAX_PROMPT_LENGTH
    """Prompt length limit, image tokens included."""
    timeout_s: float = 120.0
    """Per-request limit, queueing included (504 after it)."""
    body_timeout_s: float = 30.0
    """A request body must have arrived this long after the request began (408 and the connection closed after it)."""
    allow_remote_images: bool = False
    """Fetch http(s) image URLs (never from private, loopback or link-local addresses)."""
    max_new_tokens_default: int = 64
    retrieve_k: int = 4
    """With `--index`: catalogue items attached to each chat answer (a request may ask for others with
    `"vlmtune": {"k": N}`, 0 for none)."""
    max_retrieve_k: int = 50
    """The largest k a chat request or `POST /v1/retrieve` may ask for."""
    device: str = "auto"
    """Where the model runs: auto (the GPU when there is one), cuda, cuda:N, mps or cpu (models/device.py)."""
    dtype: str | None = None
    """float32, bfloat16 or float16; None: the dtype the run trained in."""

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise ValueError("serve: max_batch_size must be >= 1")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("serve: the API key is empty, which would serve without one; give a key, or leave "
                             "--api-key out to serve without a key")
        if self.max_aspect_ratio < 1:
            raise ValueError(f"serve: max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}")
        if self.body_timeout_s <= 0:
            raise ValueError(f"serve: body_timeout_s must be > 0, got {self.body_timeout_s}")
        if not 0 <= self.retrieve_k <= self.max_retrieve_k:
            raise ValueError(f"serve: the items per answer (--k {self.retrieve_k}) must be between 0 and "
                             f"max_retrieve_k ({self.max_retrieve_k})")
