"""Tile parallelism in one process (DESIGN §8): the split of a level's tiles, the reduction of the shares' weighted
sums, and which context rows each process must hold. The multi-process runs are in test_parallel_slow.py."""

import pytest
import torch
from conftest import assert_close_rounding, log2_length
from test_pipeline import PROMPTS, pipe_factory

from diffusers_hpdm.geometry import AXES
from diffusers_hpdm.pipelines.context_exchange import context_rows_needed
from diffusers_hpdm.pipelines.parallel import ProcessShare, split_range
from diffusers_hpdm.pipelines.tiled_denoiser import Conditioning, TiledDenoiser
from diffusers_hpdm.pipelines.tiling import level_plans
from diffusers_hpdm.pipelines.video_parallel import parallel_mode


@pytest.mark.parametrize("n, world", [(27, 2), (49, 3), (9, 4), (2, 3), (0, 2), (98, 8)])
def test_split_is_contiguous_covering_and_balanced_like_split_between_processes(n, world):
    """Shares tile ``[0, n)`` in rank order, differ by at most one item, and the first ``n % world`` are the larger
    (accelerate's ``split_between_processes``): 27 tiles on 2 processes are 14 + 13."""
    shares = [split_range(n, world, r) for r in range(world)]
    assert shares[0][0] == 0 and shares[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
    sizes = [b - a for a, b in shares]
    assert sizes == [n // world + (r < n % world) for r in range(world)]
    if (n, world) == (27, 2):
        assert sizes == [14, 13]


class RecordingShare(ProcessShare):
    """Process ``rank`` of ``world_size``, alone: the all-reduce keeps the partial sum (and records it)."""

    def __init__(self, rank, world_size):
        super().__init__(rank, world_size)
        self.partials = []

    def all_reduce_sum_(self, tensor, level):
        self.partials.append(tensor.clone())
        return tensor


def _setup(guided: bool):
    pipe = pipe_factory()
    tm = pipe.transformer
    embeds, mask, neg, neg_mask = pipe.encode_prompt(PROMPTS, ["blurry"] * 2 if guided else None, guided)
    cond = Conditioning(embeds, mask, neg, neg_mask, None, 2, torch.device("cpu"), guided)
    tilers, chains = level_plans(tm.level_sizes, tm.config.patch_size, AXES, "uniform", False)
    g = torch.Generator().manual_seed(0)
    canvases = [torch.randn(2, 3, *size, generator=g) for size in tm.level_sizes]
    return pipe, cond, tilers, chains, canvases


@pytest.mark.parametrize("world", [2, 3, 5])
@pytest.mark.parametrize("guided, tile_batch_size", [(False, 4), (True, 7)])
def test_sum_of_the_shares_weighted_sums_is_the_fused_canvas(world, guided, tile_batch_size):
    """Each process accumulates its (video, tile) pairs' weighted estimates; their sum, divided by the plan's
    per-voxel weight sum (which every process holds: the shares' partial weight sums add up to it exactly), is the
    one-process fused estimate up to the order of the additions (at most 8 tiles per voxel)."""
    pipe, cond, tilers, chains, canvases = _setup(guided)
    tm, sched = pipe.transformer, pipe.scheduler

    def level1(share):
        den = TiledDenoiser(tm, sched, cond, tile_batch_size, share=share)
        inputs = den.context_inputs(canvases[0], 0, tilers[0][0], 0.1, torch.Generator().manual_seed(1))
        ctx = [den.context_pass(inputs, 0, chains[0][0], [])]  # level 0: replicated, the whole cache
        return den.denoise_canvas(canvases[1], 0.7, 1, tilers[1][0], chains[1][0], ctx, [], 2.0)

    full = level1(ProcessShare())
    shares = [RecordingShare(r, world) for r in range(world)]
    for s in shares:
        level1(s)
    tiler = tilers[1][0]
    fused = tiler.normalize(sum(s.partials[0] for s in shares))
    assert_close_rounding(fused, full, depth=log2_length(8) + 2)
    counts = [s.stats[1]["tiles"] for s in shares]
    assert sum(counts) == 2 * len(tiler) and {s.stats[1]["level_tiles"] for s in shares} == {2 * len(tiler)}
    # per video, the per-voxel weight sums of the shares' tiles add up to the plan's
    weights = torch.zeros(2, *tiler.plan.canvas, dtype=torch.float64)
    for s in shares:
        a, b = s.share(2 * len(tiler))
        for item in range(a, b):
            weights[(item // len(tiler), *tiler.slices[item % len(tiler)])] += tiler.weight
    assert torch.equal(weights, (1.0 / tiler.inv_den).expand_as(weights))


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("shift_tiles", [False, True])
def test_each_process_holds_exactly_the_context_rows_its_tiles_read(world, shift_tiles):
    """The rows of level 1's cache that process ``q`` must hold are those its share of level 2's (video, tile)
    pairs read, for both streams under guidance and both plans with shifted tiles (checked against the rows the
    denoiser computes for that share); together the processes hold every row some tile reads."""
    pipe = pipe_factory()
    cfg = pipe.transformer.config
    tilers, chains = level_plans(pipe.transformer.level_sizes, cfg.patch_size, AXES, "uniform", shift_tiles)
    n1, B, S = len(tilers[1][0]), 2, 4
    read_by_all = set()
    for q in range(world):
        needed = set(context_rows_needed(1, n1, chains, B, S, 2, q, world).tolist())
        read = set()
        for plan, chain in zip(tilers[2], chains[2]):
            a, b = split_range(B * len(plan), world, q)
            items = torch.arange(a, b)
            vids, tiles = items // len(plan), items % len(plan)
            den = TiledDenoiser.__new__(TiledDenoiser)
            den.context_tiles, den.row_maps = [1, n1], [None, None]
            for streams in (vids, vids + B):
                read |= set(den.context_rows(chain, tiles, streams, 2)[1].tolist())
        assert needed == read
        read_by_all |= read
    assert read_by_all == set(context_rows_needed(1, n1, chains, B, S, 2, 0, 1).tolist())


def test_parallel_mode_is_chosen_from_the_videos_and_generators_and_bad_modes_name_the_fix():
    two = ProcessShare(0, 2)
    gens = [torch.Generator() for _ in range(2)]
    assert parallel_mode("auto", ProcessShare(), 4, gens) == "none"  # one process: the plain path
    assert parallel_mode("auto", two, 2, gens) == "videos"
    assert parallel_mode("auto", two, 2, None) == "videos"
    assert parallel_mode("auto", two, 1, None) == "tiles"
    assert parallel_mode("auto", two, 2, torch.Generator()) == "tiles"  # video i depends on the whole batch's draws
    assert parallel_mode("none", two, 2, gens) == "none"
    with pytest.raises(ValueError, match="`parallel` must be one of"):
        parallel_mode("gpus", two, 2, gens)
    with pytest.raises(ValueError, match="at least one video per process"):
        parallel_mode("videos", two, 1, None)
    with pytest.raises(ValueError, match="one generator per video"):
        parallel_mode("videos", two, 2, torch.Generator())
    with pytest.raises(ValueError, match="rank"):
        ProcessShare(2, 2)
