"""Deterministic, resumable data order for single- and multi-process training.

Epoch ``e`` visits the dataset in the order of one permutation drawn from ``(seed, e)``. The permutation is cut into
*global* batches of ``batch_size * num_replicas`` indices, and process ``r`` takes the ``r``-th slice of each.
So ``N`` processes with per-process batch ``b`` see exactly the samples that one process with batch ``N * b`` sees,
step by step, and resuming only needs ``(epoch, batches already consumed)`` — the data-order state saved with every
checkpoint (`state_dict`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from .rng import stream_seed

DATA_ORDER_STREAM = 1


class ShardedBatchSampler(Sampler[list[int]]):
    r"""Batch sampler over a map-style dataset: shuffled per epoch, sharded over processes, incomplete global batches
    dropped.

    Args:
        dataset_size: number of items.
        batch_size: items per process and batch.
        num_replicas: number of processes.
        rank: this process.
        seed: the run's seed; epoch ``e``'s order depends only on ``(seed, e)``.
        shuffle: ``False`` keeps the dataset order (every epoch).
    """

    def __init__(
        self, dataset_size: int, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle=True
    ):
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"Invalid batch_size={batch_size}, num_replicas={num_replicas}, rank={rank}.")
        global_batch = batch_size * num_replicas
        if dataset_size < global_batch:
            raise ValueError(
                f"The dataset has {dataset_size} items, fewer than one global batch ({batch_size} per process x "
                f"{num_replicas} processes = {global_batch}); lower --train_batch_size or add data."
            )
        self.dataset_size, self.batch_size = dataset_size, batch_size
        self.num_replicas, self.rank, self.seed, self.shuffle = num_replicas, rank, seed, shuffle
        self.epoch = 0
        self.start_batch = 0

    def __len__(self) -> int:
        """Batches per epoch (the same on every process)."""
        return self.dataset_size // (self.batch_size * self.num_replicas)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select epoch ``epoch`` and skip its first ``start_batch`` batches (resume); call on every process."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch={start_batch} is outside [0, {len(self)}].")
        self.epoch, self.start_batch = epoch, start_batch

    def permutation(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.dataset_size)
        g = torch.Generator().manual_seed(stream_seed(self.seed, DATA_ORDER_STREAM, epoch))
        return torch.randperm(self.dataset_size, generator=g)

    def global_batch(self, epoch: int, index: int) -> list[int]:
        """The ``index``-th global batch of ``epoch`` (all processes' items, process 0 first)."""
        n = self.batch_size * self.num_replicas
        return self.permutation(epoch)[index * n : (index + 1) * n].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        perm = self.permutation(self.epoch)
        n = self.batch_size * self.num_replicas
        for k in range(self.start_batch, len(self)):
            lo = k * n + self.rank * self.batch_size
            yield perm[lo : lo + self.batch_size].tolist()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start_batch": self.start_batch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"The checkpoint's data order used seed {state['seed']}, this run uses {self.seed}.")
        self.set_epoch(int(state["epoch"]), int(state["start_batch"]))
