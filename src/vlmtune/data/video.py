"""`Video`: one video of a sample, as the frames a family encodes (decoded and sampled by the data layer).

A sample's `videos` (paths relative to its dataset root, in the order of the `{"type": "video"}` slots of its
messages) become `Video`s before encoding; families that take video natively (Qwen2-VL's `pixel_values_videos`)
receive them through `encode(..., videos=...)`, the others see a video as its frames, one image slot each.

A video is given as one of (each path relative to the dataset directory, kept inside it like an image's):

    "clips/a.mp4"                                  a video file, decoded with PyAV (`av`); timestamps from the file
    "clips/a/"                                     a directory of frame images (png/jpg/webp), in name order
    {"path": "clips/a.mp4", "fps": 25}             the file's frames at a stated rate (a container with broken timing)
    {"frames": ["f/0.png", "f/1.png"], "fps": 4}   frame images listed one by one

Frame images without a stated `fps` are taken at `data.video.frame_fps` (1 frame a second). `sample_frames` applies
the sampling policy (`data.video`: fps, max_frames, max_pixels; config/data.py `VideoCfg`) and is the one place
frames are chosen: training, evaluation, prediction and `data check` all read videos through `load_video`. Every
failure is a `VideoError` (an `ImageError`, so the code that reports bad images reports bad videos) naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from vlmtune.config import VideoCfg
from vlmtune.data.images import ImageError, check_image_file, load_image, resolve_inside
from vlmtune.data.sample import Sample

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
"""Files of a frame directory that are frames (others, such as a README, are ignored)."""
MAX_VIDEO_BYTES = 4 << 30
MAX_DECODED_FRAMES = 100_000
"""Frames decoded from one video file at most (a guard against an endless or mislabelled stream)."""


class VideoError(ImageError):
    pass


@dataclass
class Video:
    frames: list[Image.Image]
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


def describe(entry: str | dict) -> str:
    """A video entry as the text messages and keys name it: its path, or its first frame and count."""
    if isinstance(entry, str):
        return entry
    if entry.get("path") is not None:
        return entry["path"]
    frames = entry.get("frames") or []
    return f"{frames[0]} (+{len(frames) - 1} frames)" if frames else "frames []"


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def frame_files(root: Path, entry: str | dict) -> tuple[Path | None, list[Path]]:
    """(the video file, []) or (None, the frame image files in time order) of an entry, every path resolved inside
    `root` and checked to exist (nothing is decoded). VideoError naming the path otherwise."""
    try:
        if isinstance(entry, dict) and entry.get("frames") is not None:
            return None, [resolve_inside(root, rel) for rel in entry["frames"]]
        rel = entry if isinstance(entry, str) else entry["path"]
        path = resolve_inside(root, rel)
    except ImageError as e:
        raise VideoError(str(e).replace("image path", "video path", 1)) from None
    if path.is_dir():
        frames = sorted((p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES),
                        key=lambda p: _natural(p.name))
        if not frames:
            raise VideoError(f"{path}: a video directory with no frame images ({', '.join(FRAME_SUFFIXES)})")
        return None, frames
    if not path.exists():
        raise VideoError(f"{path}: video file not found")
    check_image_file(path)  # a FIFO or device is named as what it is, never opened
    return path, []


def _decode_file(path: Path, fps: float | None, keep: Callable[[float], bool]) -> tuple[list, list[float]]:
    """The frames of a video file (PyAV) whose timestamps `keep` accepts, as RGB images, with their timestamps."""
    try:
        import av
    except ImportError:
        raise VideoError(f"{path}: reading video files needs PyAV (pip install av)") from None
    if os.path.getsize(path) > MAX_VIDEO_BYTES:
        raise VideoError(f"{path}: {os.path.getsize(path)} bytes exceeds the limit of {MAX_VIDEO_BYTES}")
    frames, times = [], []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            for i, frame in enumerate(container.decode(video=0)):
                if i >= MAX_DECODED_FRAMES:
                    raise VideoError(f"{path}: more than {MAX_DECODED_FRAMES} frames")
                t = i / fps if fps else float(frame.time if frame.time is not None else i)
                if keep(t):
                    frames.append(frame.to_image().convert("RGB"))
                    times.append(t)
    except VideoError:
        raise
    except Exception as e:  # PyAV raises its own errors (InvalidDataError, ...) for a corrupt or foreign file
        raise VideoError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from None
    if not frames:
        raise VideoError(f"{path}: no frames decoded")
    return frames, times


def fps_picker(fps: float | None) -> Callable[[float], bool]:
    """A stateful test, fed the timestamps of a video's frames in order, that accepts the first frame at or after
    each k/fps seconds (k = 0, 1, ...); with `fps` None, every frame."""
    if fps is None:
        return lambda t: True
    state = {"next": 0.0}

    def keep(t: float) -> bool:
        if t + 1e-6 < state["next"]:
            return False
        state["next"] = (math.floor(t * fps + 1e-6) + 1) / fps
        return True

    return keep


def evenly(n: int, k: int) -> list[int]:
    """`k` of the indices 0..n-1, evenly spaced, first and last included (the middle one for k == 1)."""
    if n <= k:
        return list(range(n))
    if k == 1:
        return [(n - 1) // 2]
    return [round(j * (n - 1) / (k - 1)) for j in range(k)]


def fit_pixels(image: Image.Image, max_pixels: int | None) -> Image.Image:
    """`image` scaled down (aspect kept, bicubic) to at most `max_pixels` pixels; unchanged when it fits."""
    w, h = image.size
    if max_pixels is None or w * h <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (w * h))
    return image.resize((max(1, math.floor(w * scale)), max(1, math.floor(h * scale))), Image.Resampling.BICUBIC)


def sample_frames(frames: list[Image.Image], times: list[float], policy: VideoCfg, source: str = "") -> Video:
    """The sampling policy on decoded frames in time order: one frame per 1/fps seconds, at most max_frames of
    them evenly spaced, each scaled to max_pixels. Deterministic."""
    keep = fps_picker(policy.fps)
    picked = [i for i, t in enumerate(times) if keep(t)]
    picked = [picked[j] for j in evenly(len(picked), policy.max_frames)]
    return Video([fit_pixels(frames[i], policy.max_pixels) for i in picked], [times[i] for i in picked], source,
                 policy.fps)


def load_video(root: Path, entry: str | dict, policy: VideoCfg) -> Video:
    """One video entry of a sample -> its sampled `Video` (see the module docstring); VideoError naming the file."""
    name = describe(entry)
    file, frame_paths = frame_files(Path(root), entry)
    stated = entry.get("fps") if isinstance(entry, dict) else None
    if file is not None:
        frames, times = _decode_file(file, stated, fps_picker(policy.fps))
    else:
        rate = stated or policy.frame_fps
        frames = [load_image(p) for p in frame_paths]
        times = [i / rate for i in range(len(frames))]
        sizes = {f.size for f in frames}
        if len(sizes) > 1:
            first = frames[0].size
            odd, size = next((p, f.size) for p, f in zip(frame_paths, frames, strict=True) if f.size != first)
            raise VideoError(f"{odd}: a frame of {size[0]}x{size[1]} pixels, but the video's first frame "
                             f"{frame_paths[0].name} is {first[0]}x{first[1]}; the frames of video {name!r} must all "
                             "be of one size")
    if len({f.size for f in frames}) > 1:
        raise VideoError(f"{file}: frames of several sizes {sorted({f.size for f in frames})}")
    return sample_frames(frames, times, policy, name)


def video_key(root: Path, entry: str | dict, policy: VideoCfg) -> str:
    """What determines a video's sampled frames: its files' contents (path, size and mtime of each), its entry and
    the policy; a sha256. The frozen-vision cache keys video frames with it (with their timestamps)."""
    file, frames = frame_files(Path(root), entry)
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in ([file] if file else frames)]
    policy_fields = {k: getattr(policy, k) for k in ("fps", "max_frames", "max_pixels", "frame_fps")}
    return hashlib.sha256(json.dumps([entry, stats, policy_fields], sort_keys=True, default=str).encode()).hexdigest()


class VideoLoader:
    """`load_video` under one policy, with decoded videos kept in memory up to `budget` bytes (like `DecodedImages`:
    kept in first-seen order, never dropped), so a sample's frames are decoded once across epochs."""

    def __init__(self, policy: VideoCfg, budget: int = 0):
        self.policy, self.budget, self.used = policy, budget, 0
        self.videos: dict[str, Video] = {}
        self.timestamps: dict[str, list[float]] = {}
        """Per video loaded (kept or not), its frames' timestamps: what the frozen-vision cache keys frames by,
        without decoding the video again."""

    def load(self, root: Path, entry: str | dict) -> Video:
        key = json.dumps([str(root), entry], sort_keys=True)
        if key in self.videos:
            return self.videos[key]
        video = load_video(root, entry, self.policy)
        self.timestamps[key] = list(video.timestamps)
        size = sum(f.width * f.height * 3 for f in video.frames)
        if self.used + size <= self.budget:
            self.videos[key] = video
            self.used += size
        return video

    def frame_times(self, root: Path, entry: str | dict) -> list[float]:
        """The timestamps of a video's sampled frames: remembered from its last `load`, else loaded."""
        key = json.dumps([str(root), entry], sort_keys=True)
        if key not in self.timestamps:
            self.load(root, entry)
        return self.timestamps[key]


def frame_label(t: float) -> str:
    """The text put before a frame shown as an image: its timestamp, e.g. "1.5s:"."""
    return f"{t:.1f}s:"


def frames_as_images(sample: Sample, images: list, videos: list[Video]) -> tuple[Sample, list]:
    """For a family without native video: `sample` with each video slot replaced by its frames, each one image slot
    preceded by its timestamp as text ("0.0s:"), and the images interleaved to match (the sample's own images and the
    frames, in slot order). The frames' `images` entries are "SOURCE@Ts" (no file: they are never read by path)."""
    if not videos:
        return sample, images
    imgs, vids = iter(zip(sample.images, images, strict=True)), iter(videos)
    out_images, out_paths, messages = [], [], []
    for m in sample.messages:
        if isinstance(m["content"], str):
            messages.append(m)
            continue
        content = []
        for part in m["content"]:
            if part.get("type") == "image":
                rel, im = next(imgs)
                out_paths.append(rel)
                out_images.append(im)
                content.append(part)
            elif part.get("type") == "video":
                v = next(vids)
                for frame, t in zip(v.frames, v.timestamps, strict=True):
                    content += [{"type": "text", "text": frame_label(t)}, {"type": "image"}]
                    out_paths.append(f"{v.source}@{t:.3f}s")
                    out_images.append(frame)
            else:
                content.append(part)
        messages.append({**m, "content": content})
    return replace(sample, messages=messages, images=out_paths, videos=[]), out_images


def sample_inputs(root: Path, sample: Sample, family, image: Callable[[Path], Image.Image] = load_image,
                  video: Callable[[Path, str | dict], Video] | None = None, policy: VideoCfg | None = None
                  ) -> tuple[Sample, list, list[Video]]:
    """What `family.encode` is given for one sample of the dataset at `root`: (the sample, its images, its videos).
    Images are read with `image` (a path -> RGB image; `DecodedImages.load` in training), videos with `video` (a
    `VideoLoader.load`) or `load_video` under `policy`. A family with native video (`video_tokens`) gets the
    `Video`s; any other sees each video as its frames (`frames_as_images`), and the videos list is empty."""
    images = [image(resolve_inside(root, rel)) for rel in sample.images]
    if not sample.videos:
        return sample, images, []
    refusal = video_refusal(family)
    if refusal:
        raise VideoError(f"sample {sample.id!r}: {refusal}")
    if video is None:
        policy = policy or VideoCfg()
        video = lambda r, e: load_video(r, e, policy)  # noqa: E731
    videos = [video(root, e) for e in sample.videos]
    if getattr(family, "video_tokens", None) is not None:
        return sample, images, videos
    s, ims = frames_as_images(sample, images, videos)
    return s, ims, []


def video_refusal(family) -> str | None:
    """Why `family` (a ModelFamily) cannot take a video sample, or None: it has native video (`video_tokens`) or
    takes several images (a video becomes its frames)."""
    if family is None or getattr(family, "video_tokens", None) is not None or family.multi_image:
        return None
    return (f"has a video; the {family.name} family takes no video (no native video input, and one image per "
            "sample, so not a video's frames)")


def encode_with_videos(family, processor, samples: list[Sample], images: list[list], videos: list[list[Video]] | None,
                       mode: str, max_length: int):
    """`family.encode` for samples that may hold videos (per sample, its `Video`s in slot order): a native-video
    family gets them as `videos=`; any other, each sample with its videos as frames (`frames_as_images`)."""
    if not videos or not any(videos):
        return family.encode(processor, samples, images, mode, max_length)
    if getattr(family, "video_tokens", None) is not None:
        return family.encode(processor, samples, images, mode, max_length, videos=videos)
    pairs = [frames_as_images(s, ims, vs) for s, ims, vs in zip(samples, images, videos, strict=True)]
    return family.encode(processor, [s for s, _ in pairs], [ims for _, ims in pairs], mode, max_length)


def write_video(root: Path, entry: str | dict, frames: list[Image.Image]) -> None:
    """Write `frames` as the video `entry` names under `root`: a video file (by its suffix, e.g. .mp4: H.264 with
    PyAV at the entry's `fps`, or `frame_fps` 1) or a directory of PNG frames ("00.png", "01.png", ...)."""
    rel = entry if isinstance(entry, str) else entry["path"]
    path = resolve_inside(Path(root), rel)
    fps = entry.get("fps") if isinstance(entry, dict) else None
    if path.suffix.lower() in (".mp4", ".mkv", ".webm", ".avi", ".mov"):
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264" if path.suffix.lower() in (".mp4", ".mkv", ".mov") else "mpeg4",
                                    rate=round(fps or 1))
            stream.width, stream.height = frames[0].size
            stream.pix_fmt = "yuv420p"
            for f in frames:
                out.mux(stream.encode(av.VideoFrame.from_image(f.convert("RGB"))))
            out.mux(stream.encode())
        return
    path.mkdir(parents=True, exist_ok=True)
    for k, f in enumerate(frames):
        f.save(path / f"{k:02d}.png")
