"""Writing videos and contact sheets of the pyramid levels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image


def to_uint8(video: np.ndarray) -> np.ndarray:
    """``(F, H, W, 3)`` floats in ``[0, 1]`` -> uint8."""
    return (np.clip(video, 0, 1) * 255 + 0.5).astype(np.uint8)


def save_video(video: np.ndarray, path: str | Path, fps: int = 8) -> Path:
    """Write ``(F, H, W, 3)`` floats in ``[0, 1]`` as ``.mp4`` (H.264) or ``.gif``, by extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = to_uint8(video)
    if path.suffix.lower() == ".gif":
        images = [PIL.Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    elif path.suffix.lower() == ".mp4":
        from diffusers.utils import export_to_video

        export_to_video(list(video), str(path), fps=fps)
    else:
        raise ValueError(f"Unsupported video extension {path.suffix!r}: use .mp4 or .gif.")
    return path


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
