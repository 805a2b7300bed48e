"""Sizes, boxes and token coordinates of the patch pyramid (DESIGN §2, paper eq. 8); conventions in the package
docstring."""

from __future__ import annotations

from collections.abc import Sequence

import torch

Size3 = tuple[int, int, int]
FULL_BOX: tuple[float, ...] = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0)
AXES = ("f", "h", "w")


def _as_size3(x: int | Sequence[int], name: str) -> Size3:
    if isinstance(x, int):
        x = (x, x, x)
    x = tuple(int(v) for v in x)
    if len(x) != 3 or any(v < 1 for v in x):
        raise ValueError(f"`{name}` must be three positive ints (frames, height, width), got {x}.")
    return x  # type: ignore[return-value]


def level_sizes(patch_size: Sequence[int], num_levels: int, level_growth: Sequence[int] = (2, 2, 2)) -> list[Size3]:
    """Canvas size ``R_l = r * growth**l`` of every level, coarse to fine."""
    r = _as_size3(patch_size, "patch_size")
    g = _as_size3(level_growth, "level_growth")
    if any(v not in (1, 2) for v in g):
        raise ValueError(f"`level_growth` must be 1 or 2 per axis, got {g}.")
    if num_levels < 1:
        raise ValueError(f"`num_levels` must be >= 1, got {num_levels}.")
    return [tuple(ri * gi**lvl for ri, gi in zip(r, g)) for lvl in range(num_levels)]  # type: ignore[misc]


def level_of_size(size: Sequence[int], patch_size: Sequence[int], num_levels: int, level_growth: Sequence[int]) -> int:
    """The level whose canvas is ``size``; ``ValueError`` listing the valid sizes otherwise."""
    sizes = level_sizes(patch_size, num_levels, level_growth)
    size = tuple(int(v) for v in size)
    if size not in sizes:
        valid = ", ".join("x".join(map(str, s)) for s in sizes)
        raise ValueError(
            f"Video size {'x'.join(map(str, size))} (frames x height x width) is not a level of this pyramid; "
            f"choose one of: {valid}."
        )
    return sizes.index(size)


def pixel_box(offset: Sequence[int], patch_size: Sequence[int], canvas: Sequence[int]) -> tuple[float, ...]:
    """Box of a patch of size ``patch_size`` at integer ``offset`` on ``canvas`` (all in pixels of that canvas)."""
    return tuple(o / c for o, c in zip(offset, canvas)) + tuple(r / c for r, c in zip(patch_size, canvas))


def relative_box(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """Box of ``fine`` in the normalized coordinates of ``coarse`` (paper eq. 8): ``[(d_l - d_k)/s_k, s_l/s_k]``.

    Args:
        fine, coarse: ``(..., 6)`` boxes (broadcastable).
    Returns:
        ``(..., 6)`` relative boxes; inside ``[0, 1]`` whenever ``fine`` lies inside ``coarse``.
    """
    s_k = coarse[..., 3:]
    return torch.cat([(fine[..., :3] - coarse[..., :3]) / s_k, fine[..., 3:] / s_k], dim=-1)


def box_contains(outer: torch.Tensor, inner: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Whether ``inner`` lies inside ``outer`` (``(..., 6)`` boxes, broadcastable) -> bool ``(...)``."""
    lo = inner[..., :3] >= outer[..., :3] - eps
    hi = inner[..., :3] + inner[..., 3:] <= outer[..., :3] + outer[..., 3:] + eps
    return (lo & hi).all(dim=-1)


def token_coordinates(boxes: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Normalized global ``(f, h, w)`` coordinates of every token centre of each box's token grid.

    Args:
        boxes: ``(N, 6)``; grid: token grid ``(f, h, w)`` of one patch.
    Returns:
        ``(N, 3, f, h, w)``.
    """
    axes = []
    for a in range(3):
        n = grid[a]
        centres = (torch.arange(n, dtype=boxes.dtype, device=boxes.device) + 0.5) / n
        axes.append(boxes[:, a : a + 1] + boxes[:, 3 + a : 4 + a] * centres)  # (N, n)
    N = boxes.shape[0]
    f, h, w = grid
    return torch.stack(
        [
            axes[0][:, :, None, None].expand(N, f, h, w),
            axes[1][:, None, :, None].expand(N, f, h, w),
            axes[2][:, None, None, :].expand(N, f, h, w),
        ],
        dim=1,
    )


def check_divisible(patch_size: Sequence[int], tokenizer_patch: Sequence[int]) -> Size3:
    """Token grid of one patch; ``ValueError`` when the tokenizer does not divide the patch."""
    grid = []
    for r, t, a in zip(patch_size, tokenizer_patch, AXES):
        if r % t:
            raise ValueError(f"Patch size {r} along '{a}' is not divisible by the tokenizer size {t}.")
        grid.append(r // t)
    return tuple(grid)  # type: ignore[return-value]
