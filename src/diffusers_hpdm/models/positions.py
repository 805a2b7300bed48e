"""Fixed position codes of ``HPDMTransformer``'s tokens: the sine-cosine table of a token's position inside its
patch, and the Fourier features of its global coordinates that the optional ``text_layout`` code is built from."""

from __future__ import annotations

import math

import torch
from einops import rearrange

from ..geometry import token_coordinates

LAYOUT_FREQUENCIES = 4  # `text_layout`: sin and cos of pi * k * coordinate, k = 1..4, per axis


def layout_features(boxes: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Fourier features of every token centre's global coordinates (in ``[0, 1]``): ``(N, T, 6 * K)``."""
    coords = rearrange(token_coordinates(boxes.float(), grid), "n c f h w -> n (f h w) c")
    k = torch.arange(1, LAYOUT_FREQUENCIES + 1, dtype=coords.dtype, device=coords.device)
    angles = (math.pi * coords[..., None] * k).flatten(-2)  # (N, T, 3K)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def sincos_position_table(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """A ``(f*h*w, dim)`` sine-cosine code of integer token positions, the channels split over the three axes (each
    axis gets an even share, the frame axis any remainder). Token grids are small (a few positions per axis), so the
    frequencies run geometrically from ``pi`` (neighbours in antiphase) down to ``pi / n`` (one half-period across
    the axis) instead of DiT's ``1 / 10000**(2k / d)``, which leaves most channels nearly constant over 4 positions."""
    share = 2 * (dim // 6)
    sizes = [dim - 2 * share, share, share]
    parts = []
    for axis, (n, d) in enumerate(zip(grid, sizes)):
        half = d // 2
        pos = torch.arange(n, dtype=torch.float64)
        freq = math.pi / float(max(n, 1)) ** (torch.arange(half, dtype=torch.float64) / max(half, 1))
        angle = pos[:, None] * freq[None]  # (n, half)
        code = torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)  # (n, 2 * half)
        code = torch.cat([code, torch.zeros(n, d - 2 * half, dtype=torch.float64)], dim=1)
        shape = [1, 1, 1, d]
        shape[axis] = n
        parts.append(code.reshape(shape).expand(*grid, d))
    return torch.cat(parts, dim=-1).reshape(-1, dim).float()
