"""The context cache of a finished level, split over processes (DESIGN §8).

A finished level's context pass is split like its denoising: process ``q`` computes the cached rows (stream-major:
row ``s * n_tiles + j`` is stream ``s``'s tile ``j``) of its contiguous share. A finer tile reads, at each coarser
level, one cached row (``geometry.context_chain``); which rows a process's finer tiles read is known in advance from
the tile plans and the shares. Each process therefore keeps, and receives from the others by point-to-point sends,
exactly the rows its own finer tiles (and its share of the finer context passes) read, and a map from global row to
the row it holds.
"""

from __future__ import annotations

import torch

from ..models import LevelContext
from .parallel import ProcessShare, split_range


def context_rows_needed(
    level: int,
    num_tiles: int,
    chains: list[list[list[torch.Tensor]]],
    num_videos: int,
    num_streams: int,
    last_level: int,
    rank: int,
    world_size: int,
) -> torch.Tensor:
    """Sorted global rows of ``level``'s context that process ``rank`` reads at the finer levels.

    Args:
        num_tiles: tiles of ``level``'s (first) plan.
        chains: per level ``m``, per tile plan of ``m`` (``shift_tiles``: two), per coarser level ``k < m``,
            ``(n_tiles_m,)`` the cached tile of ``k`` each tile of ``m`` reads. The first plan is the one whose
            context pass is cached.
        num_videos / num_streams: ``B`` videos, ``S`` streams (``2B`` under guidance: stream ``B + v`` is video
            ``v``'s unconditional pass).
    """
    n_k = num_tiles
    rows = []
    for m in range(level + 1, last_level + 1):
        for chain in chains[m]:
            n_m = len(chain[level])
            a, b = split_range(num_videos * n_m, world_size, rank)  # denoising: (video, tile) pairs
            items = torch.arange(a, b)
            video, tile = items // n_m, items % n_m
            for s in [video] if num_streams == num_videos else [video, video + num_videos]:
                rows.append(s * n_k + chain[level][tile])
        if m < last_level:  # level m's own context pass reads this level too: (stream, tile) pairs
            chain = chains[m][0]
            n_m = len(chain[level])
            a, b = split_range(num_streams * n_m, world_size, rank)
            items = torch.arange(a, b)
            rows.append((items // n_m) * n_k + chain[level][items % n_m])
    return torch.unique(torch.cat(rows)) if rows else torch.zeros(0, dtype=torch.long)


def _tensors(ctx: LevelContext) -> list[torch.Tensor]:
    return [t for t in ctx.features if t is not None] + ([ctx.pixels] if ctx.pixels is not None else [])


def exchange_context(
    share: ProcessShare,
    own: LevelContext,
    own_range: tuple[int, int],
    needed: list[torch.Tensor],
    all_boxes: torch.Tensor,
) -> tuple[LevelContext, torch.Tensor]:
    """Send every process the rows of ``own`` it reads, receive the rows this process reads.

    Args:
        own: the context rows ``own_range`` ``[a, b)`` this process computed (``b - a`` rows; with an empty share, a
            template row whose shapes say what is received).
        needed: per process, its ``context_rows_needed``.
        all_boxes: ``(S * n_tiles, 6)`` the box of every global row.

    Returns:
        the held context (rows ``needed[rank]`` in that order) and ``(S * n_tiles,)`` the map from global row to held
        row (``-1``: not held).
    """
    import torch.distributed as dist

    rank, world, total = share.rank, share.world_size, all_boxes.shape[0]
    a, b = own_range
    ranges = [split_range(total, world, q) for q in range(world)]
    own_tensors = _tensors(own)
    mine = needed[rank]
    held = [t.new_empty((len(mine), *t.shape[1:])) for t in own_tensors]
    local = (mine >= a) & (mine < b)
    for h, t in zip(held, own_tensors):
        h[local.to(h.device)] = t[(mine[local] - a).to(t.device)]
    ops, sent = [], 0
    for q in range(world):
        if q == rank:
            continue
        rows = needed[q]
        out_rows = rows[(rows >= a) & (rows < b)] - a
        if len(out_rows):
            for t in own_tensors:
                buf = t[out_rows.to(t.device)].contiguous()
                ops.append(dist.P2POp(dist.isend, buf, q))
                sent += buf.numel() * buf.element_size()
        qa, qb = ranges[q]
        in_mask = (mine >= qa) & (mine < qb)
        if in_mask.any():
            for t in held:
                ops.append(dist.P2POp(dist.irecv, t.new_empty((int(in_mask.sum()), *t.shape[1:])), q))
    recv_bufs = [op.tensor for op in ops if op.op is dist.irecv]
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    k = 0
    for q in range(world):
        qa, qb = ranges[q]
        in_mask = (mine >= qa) & (mine < qb)
        if q == rank or not in_mask.any():
            continue
        for h in held:
            h[in_mask.to(h.device)] = recv_bufs[k]
            k += 1
    share.stats[own.level]["context_bytes"] += sent
    it = iter(held)
    features = [None if t is None else next(it) for t in own.features]
    pixels = next(it) if own.pixels is not None else None
    row_map = torch.full((total,), -1, dtype=torch.long)
    row_map[mine] = torch.arange(len(mine))
    boxes = all_boxes[mine.to(all_boxes.device)]
    return LevelContext(own.level, boxes, features, pixels), row_map
