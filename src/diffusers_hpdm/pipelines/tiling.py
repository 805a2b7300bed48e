"""Tiled canvases for MultiDiffusion-style sampling (paper §4.4, DESIGN §6).

A ``TiledCanvas`` holds what is fixed for one level during sampling: the tile plan, the slices, the blending
weights and their per-voxel sum. Each step cuts tiles out of the canvas, and fuses the tiles' denoised estimates
back into one canvas estimate (a weighted average), on which the scheduler takes a single step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..geometry import AXES, TilePlan, axis_stride, context_chain, tile_plan

BLENDINGS = ("uniform", "smooth")


def window_weights(patch_size: Sequence[int], weighted_axes: Sequence[bool]) -> torch.Tensor:
    """Separable blending weights ``(f, h, w)``: a Hann window at the voxel centres on ``weighted_axes`` (positive
    everywhere, so a voxel covered by one tile keeps that tile's value), constant on the others."""
    w = torch.ones(1, 1, 1, dtype=torch.float64)
    for a, (n, on) in enumerate(zip(patch_size, weighted_axes)):
        i = torch.arange(n, dtype=torch.float64)
        axis = torch.sin(math.pi * (i + 0.5) / n) ** 2 if on else torch.ones(n, dtype=torch.float64)
        shape = [1, 1, 1]
        shape[a] = n
        w = w * axis.reshape(shape)
    return w


class TiledCanvas:
    """Tiles of one level's canvas and the blending needed to fuse per-tile estimates.

    Args:
        canvas: ``(F, H, W)`` of the level.
        patch_size: window size (the model's patch size).
        overlap_axes: axes with 50% overlap.
        blending: ``"smooth"`` (Hann-window weights) or ``"uniform"`` (average, as the paper).
        shift: voxels by which the window grid is moved per axis (``geometry.tile_plan``).
    """

    def __init__(
        self,
        canvas: Sequence[int],
        patch_size: Sequence[int],
        overlap_axes: Sequence[str] = AXES,
        blending: str = "smooth",
        shift: Sequence[int] = (0, 0, 0),
    ):
        if blending not in BLENDINGS:
            raise ValueError(f"`blending` must be one of {BLENDINGS}, got {blending!r}.")
        self.plan: TilePlan = tile_plan(canvas, patch_size, overlap_axes, shift)
        self.slices = [self.plan.slices(i) for i in range(len(self.plan))]
        multi = [len({o[a] for o in self.plan.offsets}) > 1 for a in range(3)]
        self.weight = (
            window_weights(patch_size, multi) if blending == "smooth" else torch.ones(*patch_size, dtype=torch.float64)
        )
        den = torch.zeros(*self.plan.canvas, dtype=torch.float64)
        for sl in self.slices:
            den[sl] += self.weight
        self.inv_den = 1.0 / den  # every voxel is covered (tile plans snap the last window to the edge)

    @classmethod
    def shifted_pair(cls, canvas, patch_size, overlap_axes=AXES, blending="smooth") -> list[TiledCanvas]:
        """The plan, and the plan moved by half a stride on every axis with more than one window (on a single-window
        canvas, the plan alone). The windows snapped to the canvas edges are in both, so their borders stay."""
        base = cls(canvas, patch_size, overlap_axes, blending)
        shift = [
            axis_stride(r, a in overlap_axes) // 2 if c > r else 0
            for c, r, a in zip(base.plan.canvas, patch_size, AXES)
        ]
        return [base] if not any(shift) else [base, cls(canvas, patch_size, overlap_axes, blending, shift)]

    def __len__(self) -> int:
        return len(self.plan)

    def boxes(self) -> torch.Tensor:
        return self.plan.boxes()

    def extract(self, canvas: torch.Tensor, video_idx: Sequence[int], tile_idx: Sequence[int]) -> torch.Tensor:
        """Tiles ``(n, C, f, h, w)`` of ``canvas`` ``(B, C, F, H, W)`` for the (video, tile) pairs."""
        return torch.stack([canvas[(v, slice(None), *self.slices[j])] for v, j in zip(video_idx, tile_idx)])

    def new_accumulator(self, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(like)

    def accumulate(self, acc: torch.Tensor, tiles: torch.Tensor, video_idx: Sequence[int], tile_idx: Sequence[int]):
        """``acc[v][tile j] += weight * tiles[i]`` (in place)."""
        w = self.weight.to(tiles)
        for i, (v, j) in enumerate(zip(video_idx, tile_idx)):
            acc[(v, slice(None), *self.slices[j])] += w * tiles[i]

    def normalize(self, acc: torch.Tensor) -> torch.Tensor:
        """The weighted average: ``acc / sum of weights`` per voxel."""
        return acc * self.inv_den.to(acc)


def level_plans(
    sizes: Sequence[Sequence[int]], patch_size: Sequence[int], overlap_axes, blending: str, shift_tiles: bool
) -> tuple[list[list[TiledCanvas]], list[list[list[torch.Tensor]]]]:
    """Every level's tile plans and context chains, fixed for the whole call.

    Returns:
        per level, its plans (``shift_tiles``: the plan and the plan moved by half a stride, which evaluations
        alternate between; else the plan alone), and per level, per plan, per coarser level ``k``, ``(n_tiles,)``
        the cached tile of ``k`` each tile reads (``geometry.context_chain``; the coarser levels' first plans are
        the cached ones).
    """
    tilers = [
        TiledCanvas.shifted_pair(size, patch_size, overlap_axes, blending)
        if shift_tiles
        else [TiledCanvas(size, patch_size, overlap_axes, blending)]
        for size in sizes
    ]
    cached = [t[0].boxes() for t in tilers]
    chains = [[context_chain([*cached[:level], t.boxes()], level) if level else [] for t in plans]
              for level, plans in enumerate(tilers)]  # fmt: skip
    return tilers, chains
