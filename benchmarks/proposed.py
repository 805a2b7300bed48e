"""Proposed ``src/`` speed fixes, applied by patching inside the benchmarks (``src/`` is not edited), so that each
gain is measured against the code as it is, interleaved, in one run. See docs/benchmarks.md for the evidence.

* ``separable_context`` -- ``context.sample_boxes`` as three small batched matmuls (one 2-tap interpolation matrix
  per axis and box) instead of ``F.grid_sample`` (CPU ``grid_sampler_3d`` costs ~9 ns per output value);
* ``fp32_grid_sample`` -- under bf16, run ``grid_sample`` in fp32 (the bf16 CPU kernel is ~2.5x slower);
* ``exact_gelu`` -- ``FeedForward(activation_fn="gelu")``: PyTorch's CPU tanh-GELU is ~3x slower than erf-GELU;
* ``context_once_per_level`` -- a tile's fused context depends only on (tile, stream, block), not on its noisy
  input: compute it once per level and reuse it at every step (memoised ``gather_context``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from diffusers.models.activations import GELU

import diffusers_hpdm.models.context as cmod
import diffusers_hpdm.models.transformer_hpdm as tmod


def _axis_matrix(rel_boxes: torch.Tensor, axis: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    """``(N, size, size)`` linear-interpolation matrix reading the token centres of ``rel_boxes`` along ``axis``
    (``align_corners=False``, border padding): exactly what ``grid_sample`` does along one axis."""
    centres = (torch.arange(size, dtype=torch.float64, device=rel_boxes.device) + 0.5) / size
    pos = (rel_boxes[:, axis : axis + 1].double() + rel_boxes[:, 3 + axis : 4 + axis].double() * centres) * size - 0.5
    pos = pos.clamp(0, size - 1)  # border padding clamps the sampling position
    i0 = pos.floor().long().clamp(max=size - 1)
    i1 = (i0 + 1).clamp(max=size - 1)
    w = pos - i0
    m = torch.zeros(rel_boxes.shape[0], size, size, dtype=torch.float64, device=rel_boxes.device)
    m.scatter_add_(2, i0[..., None], (1 - w)[..., None])
    m.scatter_add_(2, i1[..., None], w[..., None])
    return m.to(dtype)


def sample_boxes_separable(
    features: torch.Tensor, rel_boxes: torch.Tensor, grid: tuple[int, int, int]
) -> torch.Tensor:
    """Drop-in for ``context.sample_boxes``: ``(N, T, d)`` features on token grid ``grid`` read at the token centres
    of ``rel_boxes`` ``(N, 6)`` -> ``(N, T, d)``. Trilinear interpolation is separable, so it is three batched
    matmuls with ``(N, n, n)`` two-tap matrices; tokens are ``(f h w)``-ordered, so no transpose is needed."""
    n, _, d = features.shape
    f, h, w = grid
    mf, mh, mw = (_axis_matrix(rel_boxes, a, grid[a], features.dtype) for a in range(3))
    x = torch.bmm(mf, features.reshape(n, f, h * w * d)).reshape(n, f, h, w * d)  # f axis
    x = torch.matmul(mh[:, None], x).reshape(n, f, h, w, d)  # h axis
    x = torch.matmul(mw[:, None, None], x)  # w axis
    return x.reshape(n, f * h * w, d)


@contextmanager
def separable_context() -> Iterator[None]:
    orig = cmod.sample_boxes
    cmod.sample_boxes = sample_boxes_separable
    tmod.sample_boxes = sample_boxes_separable  # the joint (training) forward imports it by name
    try:
        yield
    finally:
        cmod.sample_boxes = orig
        tmod.sample_boxes = orig


@contextmanager
def fp32_grid_sample() -> Iterator[None]:
    orig = cmod.sample_boxes

    def sample_boxes(features, rel_boxes, grid):
        return orig(features.float(), rel_boxes, grid).to(features.dtype)

    cmod.sample_boxes = sample_boxes
    try:
        yield
    finally:
        cmod.sample_boxes = orig


@contextmanager
def exact_gelu(model: torch.nn.Module) -> Iterator[None]:
    """Changes the function by < 1e-3 (tanh approximation vs erf): a model-definition change."""
    mods = [m for m in model.modules() if isinstance(m, GELU)]
    old = [m.approximate for m in mods]
    for m in mods:
        m.approximate = "none"
    try:
        yield
    finally:
        for m, a in zip(mods, old):
            m.approximate = a


@contextmanager
def context_once_per_level() -> Iterator[None]:
    orig = tmod.gather_context
    memo: dict = {}

    def gather_context(contexts, boxes, indices, block, grid, device, dtype):
        key = (
            tuple(id(c) for c in contexts),
            block,
            boxes.cpu().numpy().tobytes(),
            tuple(i.cpu().numpy().tobytes() for i in indices),
        )
        if key not in memo:
            memo[key] = orig(contexts, boxes, indices, block, grid, device, dtype)
        return memo[key]

    tmod.gather_context = gather_context
    try:
        yield
    finally:
        tmod.gather_context = orig
        memo.clear()


FIXES = {
    "separable_context": lambda model: separable_context(),
    "fp32_grid_sample": lambda model: fp32_grid_sample(),
    "exact_gelu": exact_gelu,
    "context_once_per_level": lambda model: context_once_per_level(),
}


@contextmanager
def applied(model: torch.nn.Module, fixes: tuple[str, ...] | list[str]) -> Iterator[None]:
    with ExitStack() as stack:
        for f in fixes:
            stack.enter_context(FIXES[f](model))
        yield
