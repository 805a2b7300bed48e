"""Counter-based randomness for training: every random draw for sample ``i`` of optimizer step ``t``'s global batch
comes from a generator seeded by ``(seed, t, i)``.

Nothing random is carried from one step to the next, so a resumed run draws exactly what an uninterrupted one
would, and a global batch split over ``N`` processes and ``A`` accumulation micro-steps draws exactly what one
process with the whole batch would (``i`` is the position in the *global* batch: ``micro * N * b + rank * b + j``,
whichever process and micro-step hold it). The data order has the same property (`ShardedBatchSampler`: one
permutation per ``(seed, epoch)``, consumed in global batches).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


def stream_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed for a tuple of non-negative integers (``numpy.random.SeedSequence``)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


def sample_generators(seed: int, step: int, indices: Iterable[int], stream: int = 0) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by ``(seed, stream, step, index)``.

    Args:
        seed: the run's seed.
        step: the optimizer step the batch belongs to.
        indices: the samples' positions in that step's global batch.
        stream: separates independent uses of the same ``(step, index)`` (e.g. training vs validation).
    """
    return [torch.Generator().manual_seed(stream_seed(seed, stream, step, int(i))) for i in indices]
