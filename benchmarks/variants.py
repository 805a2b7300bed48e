"""Implementation variants, switched inside the benchmarks (``src/`` is not edited), so that the code as it is can be
timed against its *previous* implementation and against a still-*proposed* change, interleaved, in one run.

Previous implementations (the baselines of the speed fixes applied in commit 2f62647):

* ``grid_sample_context`` -- the context lookup with ``F.grid_sample`` (``context.sample_boxes_grid_sample``) instead
  of the separable-matmul ``sample_boxes``;
* ``fp32_grid_sample`` -- the same, run in fp32 when the features are bf16 (the bf16 CPU ``grid_sampler_3d`` is ~2.5x
  slower than fp32): the minimal fix that was proposed as an alternative;
* ``tanh_gelu`` -- the tanh-approximate GELU (the previous hard-coded ``"gelu-approximate"``) in every MLP instead of
  the exact (erf) one. It changes the function by < 1e-3.

Still proposed:

* ``context_once_per_level`` -- a tile's fused context depends only on (tile, stream, block), not on its noisy input:
  compute it once per level and reuse it at every step and in the level's context pass (memoised ``gather_context``;
  the memo holds one level at a time).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from diffusers.models.activations import GELU

import diffusers_hpdm.models.context as cmod
import diffusers_hpdm.models.transformer_hpdm as tmod

PREVIOUS = ("grid_sample_context", "tanh_gelu")


@contextmanager
def _sample_boxes(fn: Callable) -> Iterator[None]:
    orig = cmod.sample_boxes
    cmod.sample_boxes = tmod.sample_boxes = fn  # the joint (training) forward imports it by name
    try:
        yield
    finally:
        cmod.sample_boxes = tmod.sample_boxes = orig


def _grid_sample_fp32(features: torch.Tensor, rel_boxes: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    return cmod.sample_boxes_grid_sample(features.float(), rel_boxes, grid).to(features.dtype)


@contextmanager
def tanh_gelu(model: torch.nn.Module) -> Iterator[None]:
    mods = [m for m in model.modules() if isinstance(m, GELU)]
    old = [m.approximate for m in mods]
    for m in mods:
        m.approximate = "tanh"
    try:
        yield
    finally:
        for m, a in zip(mods, old):
            m.approximate = a


@contextmanager
def context_once_per_level() -> Iterator[None]:
    orig = tmod.gather_context
    memo: dict = {}
    level: list = [None]  # identity of the context levels the memo belongs to

    def gather_context(contexts, boxes, indices, block, grid, device, dtype):
        ids = tuple(id(c) for c in contexts)
        if ids != level[0]:
            memo.clear()
            level[0] = ids
        key = (block, boxes.cpu().numpy().tobytes(), tuple(i.cpu().numpy().tobytes() for i in indices))
        if key not in memo:
            memo[key] = orig(contexts, boxes, indices, block, grid, device, dtype)
        return memo[key]

    tmod.gather_context = gather_context
    try:
        yield
    finally:
        tmod.gather_context = orig
        memo.clear()


VARIANTS: dict[str, Callable[[torch.nn.Module], object]] = {
    "grid_sample_context": lambda model: _sample_boxes(cmod.sample_boxes_grid_sample),
    "fp32_grid_sample": lambda model: _sample_boxes(_grid_sample_fp32),
    "tanh_gelu": tanh_gelu,
    "context_once_per_level": lambda model: context_once_per_level(),
}


@contextmanager
def applied(model: torch.nn.Module, variants: tuple[str, ...] | list[str]) -> Iterator[None]:
    """Switch ``model`` (and the modules it uses) to ``variants`` (names in ``VARIANTS``) for the ``with`` body."""
    with ExitStack() as stack:
        for v in variants:
            stack.enter_context(VARIANTS[v](model))
        yield
