"""Inference geometry: tile plans of a level's canvas and the coarser tiles a fine tile reads its context from
(paper §4.4, DESIGN §6)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .boxes import AXES, Size3, _as_size3, box_contains, pixel_box


def axis_stride(patch: int, overlap: bool) -> int:
    """Window stride along one axis: ``patch // 2`` with 50% overlap, else ``patch``."""
    return max(1, patch // 2) if overlap else patch


def axis_offsets(canvas: int, patch: int, overlap: bool, shift: int = 0) -> list[int]:
    """Window offsets along one axis: every stride (``axis_stride``) from ``shift``, plus a first window at 0 when
    ``shift > 0`` and a last one snapped to the edge, so the windows cover ``[0, canvas)`` exactly."""
    if canvas < patch:
        raise ValueError(f"Canvas length {canvas} is smaller than the patch length {patch}.")
    stride = axis_stride(patch, overlap)
    if not 0 <= shift < stride:
        raise ValueError(f"A window shift must lie in [0, stride={stride}), got {shift}.")
    return sorted({0, *range(shift, canvas - patch + 1, stride), canvas - patch})


@dataclass(frozen=True)
class TilePlan:
    """Windows that tile one level's canvas. ``offsets`` are integer pixel offsets ``(n, 3)`` on that canvas."""

    canvas: Size3
    patch_size: Size3
    offsets: tuple[Size3, ...]

    def __len__(self) -> int:
        return len(self.offsets)

    def boxes(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(n, 6)`` global boxes of the tiles."""
        return torch.tensor([pixel_box(o, self.patch_size, self.canvas) for o in self.offsets], dtype=dtype)

    def slices(self, i: int) -> tuple[slice, slice, slice]:
        return tuple(slice(o, o + r) for o, r in zip(self.offsets[i], self.patch_size))  # type: ignore[return-value]


def tile_plan(
    canvas: Sequence[int],
    patch_size: Sequence[int],
    overlap_axes: Sequence[str] = AXES,
    shift: Sequence[int] = (0, 0, 0),
) -> TilePlan:
    """Tiles of a level (paper §4.4): window = patch size; 50% overlap along ``overlap_axes`` (subset of f, h, w);
    ``shift`` moves the window grid by that many voxels per axis (see `axis_offsets`)."""
    bad = [a for a in overlap_axes if a not in AXES]
    if bad:
        raise ValueError(f"Unknown overlap axis {bad}; use a subset of {list(AXES)} (e.g. overlap_axes=('h', 'w')).")
    c, r = _as_size3(canvas, "canvas"), _as_size3(patch_size, "patch_size")
    per_axis = [axis_offsets(ci, ri, a in overlap_axes, si) for ci, ri, a, si in zip(c, r, AXES, shift)]
    offsets = tuple((f, h, w) for f in per_axis[0] for h in per_axis[1] for w in per_axis[2])
    return TilePlan(canvas=c, patch_size=r, offsets=offsets)


def containing_tiles(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """For every fine box, the index of the coarse box that contains it, the most centred one when several do
    (DESIGN §6). If none contains it (possible only without overlap on a growing axis), the one whose centre is
    nearest is returned, and the relative box then leaves ``[0, 1]`` (context is read with border padding).

    Args:
        fine: ``(n, 6)``, coarse: ``(m, 6)``.
    Returns:
        ``(n,)`` long indices into ``coarse``.
    """
    inside = box_contains(coarse[None, :, :], fine[:, None, :])  # (n, m)
    c_f = fine[:, :3] + fine[:, 3:] / 2
    c_c = coarse[:, :3] + coarse[:, 3:] / 2
    dist = ((c_f[:, None, :] - c_c[None, :, :]) / coarse[None, :, 3:]).pow(2).sum(-1)  # (n, m), in coarse units
    dist = torch.where(inside, dist, dist + 1e6)
    return dist.argmin(dim=1)


def context_chain(tile_boxes: Sequence[torch.Tensor], level: int) -> list[torch.Tensor]:
    """Nested chain of cached tiles for every tile of ``level``: at level ``level-1`` the most centred container,
    at each coarser level the container of that tile, and so on. Every chain is a nested sequence of boxes, exactly
    as in training (where level ``l`` lies inside level ``l-1``).

    Args:
        tile_boxes: per level, ``(n_k, 6)`` tile boxes (at least ``level + 1`` levels).
    Returns:
        ``[idx_0, ..., idx_{level-1}]``, each ``(n_level,)`` indices into that level's tiles.
    """
    idx: list[torch.Tensor] = [torch.empty(0, dtype=torch.long)] * level
    current = tile_boxes[level]
    for k in range(level - 1, -1, -1):
        sel = containing_tiles(current, tile_boxes[k])
        idx[k] = sel
        current = tile_boxes[k][sel]
    return idx
