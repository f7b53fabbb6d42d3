"""`Video`: one video of a sample, as the frames a family encodes (decoded and sampled by the data layer).

A sample's `videos` (paths relative to its dataset root, in the order of the `{"type": "video"}` slots of its
messages) become `Video`s before encoding; families that take video natively (Qwen2-VL's `pixel_values_videos`)
receive them through `encode(..., videos=...)`, the others see a video as its frames, one image slot each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image


@dataclass
class Video:
    frames: list[Image]
    """The sampled frames, in time order, RGB, all of one size."""
    timestamps: list[float]
    """Seconds from the start of the video of each frame in `frames`."""
    source: str = ""
    """Where it came from (a path relative to the dataset root), for messages."""
    fps: float | None = field(default=None)
    """The rate the frames were sampled at (frames per second of video time), when sampled at a fixed rate."""

    def __post_init__(self) -> None:
        if not self.frames:
            raise ValueError(f"video {self.source!r}: no frames")
        if len(self.timestamps) != len(self.frames):
            raise ValueError(f"video {self.source!r}: {len(self.frames)} frames but {len(self.timestamps)} timestamps")
        if len({f.size for f in self.frames}) != 1:
            raise ValueError(f"video {self.source!r}: frames of several sizes {sorted({f.size for f in self.frames})}")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of every frame."""
        return self.frames[0].size
