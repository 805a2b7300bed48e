"""Which process does what when sampling runs on several processes (DESIGN §8, "Tile parallelism").

Within one step the tiles of a level are independent until they are fused, and fusion is a weighted sum: each
process denoises a contiguous share of the level's (video, tile) pairs, accumulates its weighted estimates into a
zero canvas, and one all-reduce (a sum) gives every process the same fused numerator. The denominator, the per-voxel
sum of the tile weights, is a function of the tile plan alone: every process already holds the whole of it (the
partial weight sums of the shares add up to it, ``tests/test_parallel.py`` checks this), so it is not sent. Every
process then takes the same scheduler step with the same generator state, and the canvases stay identical.

``ProcessShare`` wraps ``torch.distributed`` (initialised by ``accelerate launch`` / ``Accelerator``, or by hand);
with one process every method is a no-op and the pipeline runs exactly as before.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch

# Python's logger, not diffusers' get_logger: that one drops records of every process but rank 0, and each process
# says what it took.
logger = logging.getLogger(__name__)

PARALLEL_MODES = ("auto", "tiles", "videos", "none")


def split_range(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """``[start, stop)`` of process ``rank``'s share of ``n`` items: contiguous blocks, the first ``n % world_size``
    processes take one item more (accelerate's ``split_between_processes``)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class ProcessShare:
    """This process' place among the processes that sample together, and the collectives they use.

    Args:
        rank: this process' index in ``[0, world_size)``.
        world_size: the number of processes (``1``: no communication at all).

    Attributes:
        stats: per level, ``{"tiles": (video, tile) pairs this process denoised at the first evaluation,
            "level_tiles": pairs in the level, "evaluations": all-reduces, "reduce_bytes": bytes of the all-reduced
            tensors, "context_bytes": context bytes this process sent}``.
    """

    def __init__(self, rank: int = 0, world_size: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"`rank` must be in [0, world_size) with world_size >= 1, got {rank} of {world_size}.")
        self.rank, self.world_size = rank, world_size
        self.stats: dict[int, dict[str, int]] = defaultdict(
            lambda: dict(tiles=0, level_tiles=0, evaluations=0, reduce_bytes=0, context_bytes=0)
        )

    @classmethod
    def from_torch_distributed(cls) -> ProcessShare:
        """The default process group's rank and size, or a single process when ``torch.distributed`` is not
        initialised."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_parallel(self) -> bool:
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> tuple[int, int]:
        """``[start, stop)`` of this process' share of ``n`` items."""
        return split_range(n, self.world_size, self.rank)

    def record_tiles(self, level: int, mine: int, total: int) -> None:
        """Note (and log, once per level) how many of the level's ``total`` (video, tile) pairs this process
        denoises."""
        row = self.stats[level]
        if row["level_tiles"]:
            return
        row["tiles"], row["level_tiles"] = mine, total
        if self.is_parallel:
            logger.info(f"process {self.rank + 1}/{self.world_size}: {mine} of {total} tiles at level {level}")

    def all_reduce_sum_(self, tensor: torch.Tensor, level: int) -> torch.Tensor:
        """Sum ``tensor`` over the processes, in place (a no-op with one process)."""
        if self.is_parallel:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            row = self.stats[level]
            row["evaluations"] += 1
            row["reduce_bytes"] += tensor.numel() * tensor.element_size()
        return tensor

    def broadcast_seed(self, device: torch.device | str = "cpu") -> int:
        """A random seed drawn on the main process and sent to all (so that ``generator=None`` gives every process
        the same noise)."""
        seed = torch.randint(0, 2**62, (1,), dtype=torch.int64)
        if self.is_parallel:
            import torch.distributed as dist

            seed = seed.to(device)
            dist.broadcast(seed, src=0)
        return int(seed.item())

    def gather_videos(self, videos: torch.Tensor, total: int) -> torch.Tensor:
        """Concatenate every process' videos ``(n_rank, ...)`` (shares of ``total`` videos, ``split_range`` order)
        into ``(total, ...)`` on every process."""
        if not self.is_parallel:
            return videos
        import torch.distributed as dist

        counts = [split_range(total, self.world_size, q) for q in range(self.world_size)]
        longest = max(b - a for a, b in counts)
        padded = videos.new_zeros((longest, *videos.shape[1:]))
        padded[: len(videos)] = videos
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[: b - a] for p, (a, b) in zip(parts, counts)])

    def summary(self) -> dict[int, dict[str, int]]:
        return {level: dict(row) for level, row in sorted(self.stats.items())}
