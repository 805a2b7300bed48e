"""Writing videos and contact sheets of the pyramid levels."""

from __future__ import annotations

import errno
import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image

from .io_atomic import atomic_path, write_bytes_atomic


def to_uint8(video: np.ndarray) -> np.ndarray:
    """``(F, H, W, 3)`` floats in ``[0, 1]`` -> uint8."""
    return (np.clip(video, 0, 1) * 255 + 0.5).astype(np.uint8)


def check_fps(fps: int | float) -> int | float:
    """``fps`` unchanged; a `ValueError` naming it unless it is a finite number > 0."""
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"`fps` must be a finite number > 0 (frames per second, e.g. 8), got {fps!r}.")
    return fps


def _check_frames(expected: int) -> Callable[[Path], None]:
    """A check for `atomic_path`: the written file decodes to ``expected`` frames."""

    def check(tmp: Path) -> None:
        from .data.video_dataset import read_frames

        try:
            found = read_frames(tmp).shape[0]
        except Exception as error:  # any decoder failure: the file is broken
            raise OSError(errno.EIO, f"the written video does not decode ({type(error).__name__}: {error})") from None
        if found != expected:
            raise OSError(errno.EIO, f"the written video has {found} of {expected} frames (disk full?)")

    return check


def _check_gif_duration(expected_ms: int) -> Callable[[Path], None]:
    """A check for `atomic_path`: the written GIF decodes and its frames last ``expected_ms`` in all. (Pillow
    merges identical consecutive frames into one of their summed duration, so a still video has fewer frames than
    it was given; the total duration is what a complete file keeps.)"""

    def check(tmp: Path) -> None:
        try:
            with PIL.Image.open(tmp) as gif:
                total = 0
                for index in range(gif.n_frames):
                    gif.seek(index)
                    total += int(gif.info.get("duration", 0))
        except Exception as error:  # any decoder failure: the file is broken
            raise OSError(errno.EIO, f"the written GIF does not decode ({type(error).__name__}: {error})") from None
        if total != expected_ms:
            raise OSError(errno.EIO, f"the written GIF lasts {total} of {expected_ms} ms (disk full?)")

    return check


def save_video(video: np.ndarray, path: str | Path, fps: int | float = 8) -> Path:
    """Write ``(F, H, W, 3)`` floats in ``[0, 1]`` as ``.mp4`` (H.264) or ``.gif``, by extension.

    The file is written atomically (`io_atomic.atomic_path`) and read back before it replaces ``path``: a failed
    or truncated write raises an `OSError` and leaves an earlier file at ``path`` intact.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"Unsupported video extension {path.suffix!r}: use .mp4 or .gif.")
    fps = check_fps(fps)
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or not video.shape[0]:
        raise ValueError(f"`video` must be (frames, height, width, 3) with at least one frame, got {video.shape}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = to_uint8(video)
    if suffix == ".gif":
        images = [PIL.Image.fromarray(f) for f in frames]
        buffer = io.BytesIO()
        duration = max(10, 10 * round(100 / fps))  # ms per frame; GIF stores centiseconds
        images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
        write_bytes_atomic(path, buffer.getvalue(), _check_gif_duration(duration * len(frames)))
    else:
        from diffusers.utils import export_to_video

        with atomic_path(path, _check_frames(len(frames))) as tmp:
            export_to_video(list(video), str(tmp), fps=fps)
    return path


def save_image(image: PIL.Image.Image, path: str | Path) -> Path:
    """Write a PIL image (format from the extension) atomically; an earlier file at ``path`` survives a failure."""
    path = Path(path)
    buffer = io.BytesIO()
    image.save(buffer, format=PIL.Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return write_bytes_atomic(path, buffer.getvalue())


def contact_sheet(levels: list[np.ndarray], max_frames: int = 8, cell: int | None = None) -> PIL.Image.Image:
    """One row per pyramid level (coarse at the top), ``max_frames`` evenly spaced frames per row, every frame
    scaled (nearest) to the finest level's size so that the gain in detail is visible.

    Args:
        levels: per level, ``(F_l, H_l, W_l, 3)`` floats in ``[0, 1]``.
    """
    H, W = levels[-1].shape[1:3]
    if cell is not None:
        H, W = cell * H // max(H, W), cell * W // max(H, W)
    pad = 2
    F = max(v.shape[0] for v in levels)
    n = min(max_frames, F)
    sheet = PIL.Image.new("RGB", (n * (W + pad) + pad, len(levels) * (H + pad) + pad), (255, 255, 255))
    for row, video in enumerate(levels):
        # Sample the same moments in time at every level (levels may have fewer frames).
        times = np.linspace(0, 1, n, endpoint=False) + 0.5 / n
        for col, t in enumerate(times):
            frame = to_uint8(video[min(int(t * video.shape[0]), video.shape[0] - 1)])
            img = PIL.Image.fromarray(frame).resize((W, H), PIL.Image.NEAREST)
            sheet.paste(img, (pad + col * (W + pad), pad + row * (H + pad)))
    return sheet
