"""Deep context fusion (paper §4.2, eq. 7-9) and the inference-time context cache (paper §4.5, DESIGN §6).

Fusion before block ``b`` for level ``l > 0``::

    ctx_l = mean_{k<l} grid_sample_3d(a_k, relative_box(l in k))          (eq. 7, 8)
    a_l  <- W [a_l ; ctx_l ; coords_l] + bias = W_a a_l + W_c ctx_l + W_p coords_l + bias   (eq. 9)

Trilinear sampling and the mean are linear, so ``W_c ctx_l = mean_k grid_sample(W_c a_k)``. We therefore project each
coarse level's activations once (``project_context``) and only *sample* the projected features. At inference this
is what makes the cache cheap: a finished level's
projected features are stored per block and per tile, and every later step of every finer tile only interpolates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import box_sampling_grid, relative_box


class DeepContextFusion(nn.Module):
    """``Linear(2d + 3 -> d)`` over ``concat[a_l, ctx_l, coords_l]``, initialised to pass ``a_l`` through."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(2 * dim + 3, dim)
        self.reset_to_passthrough()

    @torch.no_grad()
    def reset_to_passthrough(self) -> None:
        """``W = [I, 0, 0]``, ``bias = 0``: a freshly added level starts as its own activations (DESIGN §4)."""
        self.proj.weight.zero_()
        self.proj.weight[:, : self.dim].copy_(torch.eye(self.dim))
        self.proj.bias.zero_()

    def _weight(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``proj``'s weight and bias in the compute dtype. The slices below bypass ``proj.forward``, so the hooks
        that ``enable_layerwise_casting`` puts on it (upcast a bf16/fp8-stored weight) never run: cast here, as they
        would. A no-op (the same tensors) when the weights already have that dtype."""
        return self.proj.weight.to(dtype), self.proj.bias.to(dtype)

    def project_context(self, a: torch.Tensor) -> torch.Tensor:
        """``W_c a`` for coarse activations ``a`` ``(N, T, d)`` -> ``(N, T, d)``."""
        w, _ = self._weight(a.dtype)
        return F.linear(a, w[:, self.dim : 2 * self.dim])

    def forward(self, a: torch.Tensor, ctx_proj: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """``W_a a + ctx_proj + W_p coords + bias``; ``a``, ``ctx_proj`` ``(N, T, d)``, ``coords`` ``(N, T, 3)``."""
        w, b = self._weight(a.dtype)
        return F.linear(a, w[:, : self.dim]) + ctx_proj + F.linear(coords, w[:, 2 * self.dim :], b)


def interpolation_matrix(rel_boxes: torch.Tensor, axis: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    """``(N, size, size)`` two-tap linear-interpolation matrices that read, along ``axis``, the ``size`` token centres
    of ``rel_boxes`` ``(N, 6)`` from a ``size``-long axis of the sampled patch: ``grid_sample``'s arithmetic along
    one axis (``align_corners=False``, border padding = clamped positions), built in float64."""
    centres = (torch.arange(size, dtype=torch.float64, device=rel_boxes.device) + 0.5) / size
    start, extent = rel_boxes[:, axis : axis + 1].double(), rel_boxes[:, 3 + axis : 4 + axis].double()
    pos = ((start + extent * centres) * size - 0.5).clamp(0, size - 1)  # (N, size) in source voxel units
    lo = pos.floor().long().clamp(max=size - 1)
    hi = (lo + 1).clamp(max=size - 1)
    frac = pos - lo
    m = torch.zeros(rel_boxes.shape[0], size, size, dtype=torch.float64, device=rel_boxes.device)
    m.scatter_add_(2, lo[..., None], (1 - frac)[..., None])
    m.scatter_add_(2, hi[..., None], frac[..., None])
    return m.to(dtype)


def sample_boxes(features: torch.Tensor, rel_boxes: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Trilinearly read ``features`` ``(N, T, d)`` (token grid ``grid``, tokens in ``(f h w)`` order) at the token
    centres of ``rel_boxes`` ``(N, 6)`` (relative to each feature patch) -> ``(N, T, d)``. Border padding outside
    ``[0, 1]``.

    Equal to ``F.grid_sample(..., mode="bilinear", padding_mode="border", align_corners=False)`` on the same grid
    (``geometry.box_sampling_grid``), but computed as three batched matmuls with per-axis two-tap matrices: a box's
    sampling grid is separable. On CPU this is 3-5x faster than ``grid_sampler_3d`` in fp32, far more in bf16, and
    needs no transposed copy of the features (tests/test_transformer.py checks the equality).
    """
    n, _, d = features.shape
    f, h, w = grid
    mf, mh, mw = (interpolation_matrix(rel_boxes, a, grid[a], features.dtype) for a in range(3))
    x = torch.bmm(mf, features.reshape(n, f, h * w * d)).reshape(n, f, h, w * d)  # along f
    x = torch.matmul(mh[:, None], x).reshape(n, f, h, w, d)  # along h
    x = torch.matmul(mw[:, None, None], x)  # along w
    return x.reshape(n, f * h * w, d)


def sample_boxes_grid_sample(
    features: torch.Tensor, rel_boxes: torch.Tensor, grid: tuple[int, int, int]
) -> torch.Tensor:
    """Reference implementation of [`sample_boxes`] with ``F.grid_sample`` (kept for tests and benchmarks)."""
    f, h, w = grid
    n, _, d = features.shape
    vol = features.transpose(1, 2).reshape(n, d, f, h, w)  # (N, d, f, h, w)
    g = box_sampling_grid(rel_boxes, grid).to(features.dtype)  # (N, f, h, w, 3)
    out = F.grid_sample(vol, g, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(n, d, f * h * w).transpose(1, 2)


@dataclass
class LevelContext:
    """What a finished level leaves for finer ones: its tiles' boxes and, per block, their projected input
    activations ``W_c a`` (deep fusion) or their model-input pixels (shallow fusion).

    Attributes:
        level: pyramid level of these tiles.
        boxes: ``(n, 6)`` global tile boxes.
        features: per block, ``(n, T, d)`` projected activations, or ``None`` for blocks no finer level runs.
        pixels: ``(n, C, f, h, w)`` scaled noisy inputs (shallow fusion only).
    """

    level: int
    boxes: torch.Tensor
    features: list[torch.Tensor | None] = field(default_factory=list)
    pixels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> LevelContext:
        feats = [None if t is None else t.to(device) for t in self.features]
        pix = None if self.pixels is None else self.pixels.to(device)
        return LevelContext(self.level, self.boxes.to(device), feats, pix)

    def select(self, index: torch.Tensor) -> LevelContext:
        """The tiles ``index`` (e.g. one video's tiles)."""
        feats = [None if t is None else t[index.to(t.device)] for t in self.features]
        pix = None if self.pixels is None else self.pixels[index.to(self.pixels.device)]
        return LevelContext(self.level, self.boxes[index.to(self.boxes.device)], feats, pix)

    @staticmethod
    def concat(parts: list[LevelContext]) -> LevelContext:
        """Join the tiles of several context passes of one level (e.g. tile batches)."""
        feats = [
            None if parts[0].features[b] is None else torch.cat([p.features[b] for p in parts])
            for b in range(len(parts[0].features))
        ]
        pix = None if parts[0].pixels is None else torch.cat([p.pixels for p in parts])
        return LevelContext(parts[0].level, torch.cat([p.boxes for p in parts]), feats, pix)

    @property
    def nbytes(self) -> int:
        tensors = [t for t in self.features if t is not None] + ([self.pixels] if self.pixels is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


def gather_context(
    contexts: list[LevelContext],
    boxes: torch.Tensor,
    indices: list[torch.Tensor],
    block: int,
    grid: tuple[int, int, int],
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Mean over coarser levels of their cached, projected features of block ``block``, read at ``boxes``.

    Args:
        contexts: one ``LevelContext`` per coarser level ``k = 0 .. l-1``.
        boxes: ``(N, 6)`` global boxes of the fine tiles.
        indices: per coarser level, ``(N,)`` index of the cached tile each fine tile reads.
    Returns:
        ``(N, T, d)``.
    """
    total = None
    for ctx, idx in zip(contexts, indices):
        feats = ctx.features[block]
        idx_dev = idx.to(feats.device)
        src = feats[idx_dev].to(device=device, dtype=dtype)  # (N, T_c, d)
        rel = relative_box(boxes.to(device), ctx.boxes[idx_dev].to(device))
        sampled = sample_boxes(src, rel, grid)
        total = sampled if total is None else total + sampled
    return total / len(contexts)
