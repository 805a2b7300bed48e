"""The ``video=`` argument of ``HierarchicalPatchPipeline`` (DESIGN §8, "Starting from a given coarse video"): every
accepted form turned into a canvas ``(B, C, F, H, W)`` in ``[-1, 1]``, the level it stands for, and the coarser
levels under it.

Accepted forms follow diffusers' ``VideoProcessor`` where it has one (frames last for PIL and NumPy, ``[0, 1]``
values); torch tensors use this pipeline's own canvas layout, channels before frames, the layout of
``output_type="latent"`` and of ``callback_on_step_end``'s ``latents``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch

from ..geometry import area_downsample, level_of_size

VideoInput = list[PIL.Image.Image] | list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor | list


def _frames_to_numpy(frames: Sequence[PIL.Image.Image], in_channels: int) -> np.ndarray:
    """PIL frames -> float ``(F, H, W, C)`` in ``[0, 1]`` (converted to RGB, or to grayscale for 1 channel)."""
    mode = "L" if in_channels == 1 else "RGB"
    arrays = [np.asarray(f.convert(mode), dtype=np.float32) / 255.0 for f in frames]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"`video` frames differ in size: {sorted({a.shape[:2] for a in arrays})}; resize them.")
    video = np.stack(arrays)
    return video[..., None] if video.ndim == 3 else video


def _to_float(video: torch.Tensor) -> torch.Tensor:
    """uint8 -> ``[0, 1]`` float32; floats as they are; other integers -> float32 values."""
    if video.dtype == torch.uint8:
        return video.float() / 255.0
    return video if video.is_floating_point() else video.float()


def preprocess_video(video: VideoInput, in_channels: int) -> torch.Tensor:
    """Turn ``video`` into a canvas ``(B, C, F, H, W)`` in ``[-1, 1]``.

    Args:
        video: one of
            * a list of PIL frames (one video), or a list of such lists (a batch);
            * a NumPy array ``(F, H, W, C)`` or ``(B, F, H, W, C)``, float in ``[0, 1]`` (or ``[-1, 1]``) or uint8,
              or a list of ``(F, H, W, C)`` arrays;
            * a torch tensor ``(C, F, H, W)`` or ``(B, C, F, H, W)`` -- channels first, as the pipeline's canvas --
              in ``[-1, 1]`` or ``[0, 1]`` (or uint8), or a list of ``(C, F, H, W)`` tensors.
            As in diffusers' ``VaeImageProcessor``, float values with a negative minimum (over the whole input) are
            read as ``[-1, 1]`` and kept bit for bit; otherwise as ``[0, 1]`` and mapped by ``2 x - 1``.
        in_channels: the model's channel count (3 for RGB).
    Returns:
        ``(B, C, F, H, W)``.
    """
    if isinstance(video, PIL.Image.Image):
        raise ValueError("`video` is a single image; pass a list of PIL frames (a still video: `[image] * F`).")
    if isinstance(video, list) and video and isinstance(video[0], PIL.Image.Image):
        video = _frames_to_numpy(video, in_channels)
    elif isinstance(video, list) and video and isinstance(video[0], list):
        video = np.stack([_frames_to_numpy(v, in_channels) for v in video])
    elif isinstance(video, list) and video and isinstance(video[0], np.ndarray | torch.Tensor):
        video = np.stack(video) if isinstance(video[0], np.ndarray) else torch.stack(video)
    if isinstance(video, np.ndarray):
        if video.ndim not in (4, 5):
            raise ValueError(f"`video` as a NumPy array must be (F, H, W, C) or (B, F, H, W, C), got {video.shape}.")
        video = torch.from_numpy(np.ascontiguousarray(video)).movedim(-1, -4)  # (..., C, F, H, W)
    if not isinstance(video, torch.Tensor):
        raise ValueError(
            "`video` must be a list of PIL frames, a NumPy array (F, H, W, C) / (B, F, H, W, C) or a torch tensor "
            f"(C, F, H, W) / (B, C, F, H, W); got {type(video).__name__}."
        )
    if video.ndim == 4:
        video = video[None]
    if video.ndim != 5:
        raise ValueError(f"`video` as a tensor must be (C, F, H, W) or (B, C, F, H, W), got {tuple(video.shape)}.")
    if video.shape[1] != in_channels:
        frames_first = video.shape[2] == in_channels
        hint = " It looks frames-first (B, F, C, H, W): pass `video.transpose(1, 2)`." if frames_first else ""
        raise ValueError(
            f"`video` has {video.shape[1]} channels in dim 1 but the model has {in_channels}; tensors are "
            f"(B, C, F, H, W), channels before frames.{hint}"
        )
    video = _to_float(video)
    video = video.contiguous()
    return video if video.min() < 0 else 2 * video - 1


def check_video(video: torch.Tensor, config, last_level: int, batch: int) -> int:
    """The level of ``video`` ``(B_v, C, F, H, W)``: the one whose canvas is ``(F, H, W)``. ``ValueError`` when no
    level's canvas is, when that level is not coarser than the output's, or when ``B_v`` is neither 1 nor ``batch``.
    """
    size = tuple(video.shape[2:])
    try:
        level = level_of_size(size, config.patch_size, config.num_levels, config.level_growth)
    except ValueError as e:
        raise ValueError(
            f"`video`: {e} Resize the clip to one of these sizes first (for a larger clip, e.g. "
            "`diffusers_hpdm.geometry.area_downsample(video, size)` on a (B, C, F, H, W) tensor)."
        ) from None
    if level >= last_level:
        raise ValueError(
            f"`video` is level {level} ({'x'.join(map(str, size))}) but the output is level {last_level}: there is "
            "nothing finer to generate. Ask for a finer output (`num_levels`, or num_frames/height/width) or pass a "
            "coarser video."
        )
    if video.shape[0] not in (1, batch):
        raise ValueError(
            f"Got {video.shape[0]} videos for {batch} prompts; pass one video per prompt or a single one."
        )
    return level


def video_pyramid(video: torch.Tensor, sizes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """``video`` ``(B, C, F, H, W)`` (the canvas of level ``len(sizes) - 1``) and, area-downsampled, the canvas of
    every coarser level (its context comes first in every finer level), coarse to fine; the last entry is ``video``
    itself."""
    return [area_downsample(video, size) for size in sizes[:-1]] + [video]
