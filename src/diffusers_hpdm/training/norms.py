"""Norms of whole tensors that do not depend on how the tensors are sharded (FSDP2 ``DTensor``) — used by LAMB's
trust ratios and by gradient clipping.

Each process sums the squares of its shard in float64, the sums are all-reduced over the processes that hold shards
(one collective per mesh group for all tensors), and the square root is taken in float64. The squares themselves are
elementwise (identical however a tensor is split) and float64 accumulation makes the rounding of the sum
order-independent for all practical purposes, so a sharded run and a single-process run get bitwise the same float32
norms. That matters more than it seems: LAMB normalizes every update to ``lr * ||w||``, so a one-ulp difference in a
norm early in training (when gradients of deep layers are near the rounding floor) grows into visible parameter
differences within a few steps.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover
    DTensor = ()


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a ``DTensor`` (shares storage: in-place ops update the ``DTensor``); else ``t``."""
    return t.to_local() if isinstance(t, DTensor) else t


def local_squared_norm(t: torch.Tensor) -> torch.Tensor:
    """Sum of squares of this process's part of ``t``, accumulated in float64 (a 0-d tensor)."""
    x = local(t)
    return (x * x).sum(dtype=torch.float64)


def _shard_groups(t: torch.Tensor) -> tuple:
    """Process groups over which the shards of a ``DTensor`` must be summed (its ``Shard`` mesh dimensions)."""
    if not isinstance(t, DTensor):
        return ()
    groups = []
    for dim, placement in enumerate(t.placements):
        if placement.is_partial():
            raise ValueError("Norms of tensors with Partial placements are not supported.")
        if placement.is_shard():
            groups.append(t.device_mesh.get_group(dim))
    return tuple(groups)


def reduce_over_shards(sums: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum row ``i`` of ``sums`` ``(n, ...)`` over the processes holding shards of ``tensors[i]``; rows of plain
    tensors are left as they are. One all-reduce per distinct set of process groups. Returns ``sums``."""
    by_groups: dict[tuple, list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        groups = _shard_groups(t)
        if groups:
            by_groups[groups].append(i)
    for groups, idx in by_groups.items():
        index = torch.tensor(idx, device=sums.device)
        part = sums.index_select(0, index)
        for group in groups:
            dist.all_reduce(part, op=dist.ReduceOp.SUM, group=group)
        sums.index_copy_(0, index, part)
    return sums


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[torch.Tensor], max_norm: float, eps: float = 1e-6) -> torch.Tensor:
    """Scale the gradients in place so that their global L2 norm is at most ``max_norm`` (``torch``'s rule:
    ``coef = min(1, max_norm / (norm + eps))``). Works on plain and ``DTensor`` (FSDP2) gradients alike, with a norm
    independent of the sharding (see the module docstring). Call it on every process.

    Returns:
        The total norm before clipping (float64, 0-d).
    """
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.zeros((), dtype=torch.float64)
    grads = [p.grad for p in params]
    sums = reduce_over_shards(torch.stack([local_squared_norm(g) for g in grads]), grads)
    total = sums.sum().sqrt()
    coef = float(torch.clamp(max_norm / (total + eps), max=1.0))
    if coef < 1.0:
        for g in grads:
            local(g).mul_(coef)
    return total
