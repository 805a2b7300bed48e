"""Decoding videos and images to uint8 RGB frames: whole files (`read_frames`) or only the frames one training clip
needs (`count_frames` + `read_clip`: a seek to the keyframe before the clip, then decoding up to its last frame).

A 240-frame 640x360 clip decoded whole holds 166 MB of frames to keep 16 of them; `read_clip` decodes at most the
clip plus the rest of the keyframe interval before it (``benchmarks/bench_video_reader.py``). The seek needs PyAV;
without it (imageio-ffmpeg only), or when a container does not say how many frames it holds, the whole file is
decoded and sliced, which gives the same frames.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _video_plugin() -> str:
    """PyAV when installed (seekable, in-process), else imageio-ffmpeg's ``FFMPEG`` plugin (ships its binary)."""
    try:
        import av  # noqa: F401
    except ImportError:
        return "FFMPEG"
    return "pyav"


def _open(source: str | os.PathLike | bytes):
    import av

    return av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source))


def _read_pyav(source: str | os.PathLike | bytes) -> np.ndarray:
    """PyAV directly: imageio's pyav plugin runs ``gc.collect()`` on every close (~0.5 s a file under load)."""
    with _open(source) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if not frames:
        raise ValueError("no video frames decoded")
    return np.stack(frames)


def _to_rgb(frames: np.ndarray) -> np.ndarray:
    """``[T, H, W, C]`` with C in (1, 3, 4) -> uint8 ``[T, H, W, 3]``; a ValueError for anything else."""
    if frames.ndim == 3:  # grayscale
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
        raise ValueError(f"decoded array has shape {frames.shape}, expected [T, H, W, C] with C in (1, 3, 4)")
    frames = np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames[..., :3]
    if frames.dtype != np.uint8:
        raise ValueError(f"decoded dtype {frames.dtype}, expected uint8")
    return frames


def read_frames(source: str | os.PathLike | bytes, extension: str = ".mp4") -> np.ndarray:
    """Decode a video or image (a path or the file's bytes) to uint8 RGB ``[T, H, W, 3]``; an image gives T = 1."""
    import imageio.v3 as iio

    extension = (Path(source).suffix if not isinstance(source, bytes) else extension).lower()
    if extension in IMAGE_EXTENSIONS:
        frames = np.asarray(iio.imread(source, extension=extension))[None]
    elif _video_plugin() == "pyav":
        frames = _read_pyav(source)
    else:
        frames = np.asarray(iio.imread(source, plugin="FFMPEG", index=None, extension=extension))
    return _to_rgb(frames)


def count_frames(source: str | os.PathLike | bytes, extension: str = ".mp4") -> int | None:
    """Frames in a video according to its container (no decoding), or ``None`` when it cannot say (no PyAV, a
    container without a frame count, an image) — then use `read_frames`."""
    extension = (Path(source).suffix if not isinstance(source, bytes) else extension).lower()
    if extension in IMAGE_EXTENSIONS or _video_plugin() != "pyav":
        return None
    with _open(source) as container:
        stream = container.streams.video[0]
        return int(stream.frames) if stream.frames and stream.average_rate else None


def read_clip(
    source: str | os.PathLike | bytes, start: int, num_frames: int, stride: int = 1, extension: str = ".mp4"
) -> np.ndarray:
    """Frames ``start, start + stride, ...`` (``num_frames`` of them) of a video as uint8 RGB ``[num_frames, H, W, 3]``:
    equal to ``read_frames(source)[start : start + (num_frames - 1) * stride + 1 : stride]``, decoding only from the
    keyframe at or before ``start`` to the clip's last frame.

    Frame ``i`` is the one whose presentation time is ``i / average_rate`` after the stream's start (constant frame
    rate). If the decoded frames do not line up with that (a variable frame rate, a seek that lands past ``start``),
    the whole file is decoded and sliced instead, so the result never depends on the container's index.
    """
    if start < 0 or num_frames < 1 or stride < 1:
        raise ValueError(f"`start` must be >= 0, `num_frames` and `stride` >= 1; got {start}, {num_frames}, {stride}.")
    span = (num_frames - 1) * stride + 1
    clip = _seek_clip(source, start, span, stride) if count_frames(source, extension) is not None else None
    if clip is None:
        clip = read_frames(source, extension)[start : start + span : stride]
    if clip.shape[0] != num_frames:
        raise ValueError(f"the video has fewer than {start + span} frames (clip from {start}, {num_frames} frames)")
    return clip


def _seek_clip(source, start: int, span: int, stride: int) -> np.ndarray | None:
    """`read_clip` through a PyAV seek, or ``None`` when the frames do not line up with their indices."""
    with _open(source) as container:
        stream = container.streams.video[0]
        rate, time_base = stream.average_rate, stream.time_base
        origin = stream.start_time or 0

        def index(frame) -> int:  # frame number from its presentation time
            return round(float((frame.pts - origin) * time_base * rate))

        container.seek(origin + int(start / (rate * time_base)), stream=stream, backward=True, any_frame=False)
        frames, expected = [], start
        for frame in container.decode(stream):
            if frame.pts is None:
                return None
            i = index(frame)
            if i < start:
                continue
            if i != expected:  # landed past `start`, or a frame is missing: not a constant-rate index
                return None
            if (i - start) % stride == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
            expected += 1
            if expected == start + span:
                break
    if expected != start + span:
        return None
    return _to_rgb(np.stack(frames))
