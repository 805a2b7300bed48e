"""Fixed position code of ``HPDMTransformer``'s tokens: the sine-cosine table of a token's position inside its
patch."""

from __future__ import annotations

import math

import torch


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
