"""Property tests of the patch-pyramid geometry (DESIGN.md §2 and §6, `diffusers_hpdm.geometry`).

Every test states a property that a wrong implementation breaks: level sizes, nesting, integer alignment and
coverage of training boxes, relative-box round trips, the pixel convention of patch extraction (slices, area
downsampling, trilinear reads at voxel centres), window coverage of tile plans, containment of fine tiles in coarse
tiles, and token-centre coordinates.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import assert_close_rounding, rounding_atol
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from diffusers_hpdm import geometry as G

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

growths = st.tuples(*[st.sampled_from((1, 2))] * 3)
patch_axis = st.integers(1, 24)
patches = st.tuples(patch_axis, patch_axis, patch_axis)


def _size_str(s) -> str:
    return "x".join(map(str, s))


@st.composite
def pyramids(draw, max_patch: int = 24, max_levels: int = 4, max_final_voxels: int | None = None):
    """(patch_size, num_levels, level_growth); with ``max_final_voxels`` the final video stays small."""
    r = draw(st.tuples(*[st.integers(1, max_patch)] * 3))
    g = draw(growths)
    num_levels = draw(st.integers(1, max_levels))
    if max_final_voxels is not None:
        while num_levels > 1 and math.prod(G.level_sizes(r, num_levels, g)[-1]) > max_final_voxels:
            num_levels -= 1
    return r, num_levels, g


# ------------------------------------------------------------------------------------------------------------
# Level sizes
# ------------------------------------------------------------------------------------------------------------


@SETTINGS
@given(r=patches, num_levels=st.integers(1, 6), g=growths)
@example(r=(4, 12, 16), num_levels=4, g=(1, 2, 2))
def test_level_sizes_follow_growth(r, num_levels, g):
    sizes = G.level_sizes(r, num_levels, g)
    assert len(sizes) == num_levels
    for lvl, size in enumerate(sizes):
        assert size == tuple(ri * gi**lvl for ri, gi in zip(r, g))
        assert all(isinstance(v, int) for v in size)
    for a in range(3):
        column = [s[a] for s in sizes]
        if g[a] == 1:
            assert column == [r[a]] * num_levels
        else:
            assert all(b == 2 * c for c, b in itertools.pairwise(column))
    assert sizes[0] == r


def test_level_sizes_accepts_int_patch():
    assert G.level_sizes(8, 3) == [(8, 8, 8), (16, 16, 16), (32, 32, 32)]
    assert G.level_sizes(8, 2, (1, 2, 2)) == [(8, 8, 8), (8, 16, 16)]


@pytest.mark.parametrize(
    "patch, levels, growth",
    [
        ((8, 8, 8), 2, (3, 2, 2)),  # growth must be 1 or 2
        ((8, 8, 8), 2, (0, 2, 2)),
        ((8, 8, 8), 2, (2, 2)),  # three axes
        ((8, 8, 8), 2, (2, -1, 2)),
        ((8, 8, 8), 0, (2, 2, 2)),  # at least one level
        ((8, 8, 8), -3, (2, 2, 2)),
        ((8, 0, 8), 2, (2, 2, 2)),  # positive sizes
        ((8, 8), 2, (2, 2, 2)),
        ((8, 8, 8, 8), 2, (2, 2, 2)),
        ((8, -4, 8), 2, (2, 2, 2)),
    ],
)
def test_level_sizes_rejects_invalid(patch, levels, growth):
    with pytest.raises(ValueError):
        G.level_sizes(patch, levels, growth)


@SETTINGS
@given(r=patches, num_levels=st.integers(1, 5), g=growths, data=st.data())
def test_level_of_size_round_trip_and_error(r, num_levels, g, data):
    sizes = G.level_sizes(r, num_levels, g)
    for lvl, size in enumerate(sizes):
        found = G.level_of_size(size, r, num_levels, g)
        # duplicate canvases (all axes growth 1) resolve to the first level with that size
        assert sizes[found] == size and found <= lvl
        assert G.level_of_size(list(size), r, num_levels, g) == found
    bad = tuple(s + d for s, d in zip(sizes[-1], data.draw(st.tuples(*[st.integers(-3, 3)] * 3))))
    if bad in sizes:
        return
    with pytest.raises(ValueError) as err:
        G.level_of_size(bad, r, num_levels, g)
    msg = str(err.value)
    assert _size_str(bad) in msg
    for size in sizes:
        assert _size_str(size) in msg


# ------------------------------------------------------------------------------------------------------------
# Nested training boxes
# ------------------------------------------------------------------------------------------------------------


def _is_integer(x: torch.Tensor, tol: float = 1e-4) -> bool:
    x = x.double()
    return bool(((x - x.round()).abs() <= tol).all())


@SETTINGS
@given(
    pyr=pyramids(max_patch=33),
    batch=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    integer_levels=st.sampled_from(["finest", "all"]),
)
@example(pyr=((4, 12, 16), 4, (1, 2, 2)), batch=8, seed=0, integer_levels="finest")
@example(pyr=((3, 5, 7), 4, (2, 2, 2)), batch=8, seed=1, integer_levels="finest")
@example(pyr=((3, 5, 7), 3, (1, 2, 1)), batch=8, seed=2, integer_levels="all")
def test_sample_nested_boxes_properties(pyr, batch, seed, integer_levels):
    r, num_levels, g = pyr
    sizes = G.level_sizes(r, num_levels, g)
    boxes = G.sample_nested_boxes(
        batch, r, num_levels, g, generator=torch.Generator().manual_seed(seed), integer_levels=integer_levels
    )
    assert boxes.shape == (batch, num_levels, 6)
    assert boxes.dtype == torch.float32
    # level 0 is the whole video
    assert torch.equal(boxes[:, 0], torch.tensor(G.FULL_BOX).expand(batch, 6))
    for lvl, canvas in enumerate(sizes):
        expected_size = torch.tensor([ri / ci for ri, ci in zip(r, canvas)])
        torch.testing.assert_close(boxes[:, lvl, 3:], expected_size.expand(batch, 3), rtol=0, atol=1e-7)
        lo, hi = boxes[:, lvl, :3], boxes[:, lvl, :3] + boxes[:, lvl, 3:]
        assert (lo >= 0).all() and (hi <= 1 + 1e-6).all()
        assert G.box_contains(torch.tensor(G.FULL_BOX), boxes[:, lvl]).all()
        if lvl > 0:
            assert G.box_contains(boxes[:, lvl - 1], boxes[:, lvl]).all()
        canvas_t = torch.tensor(canvas, dtype=torch.float64)
        on_grid = _is_integer(boxes[:, lvl, :3].double() * canvas_t)
        if integer_levels == "all" or lvl == num_levels - 1:
            assert on_grid, f"level {lvl} offsets are not on the pixel grid of canvas {canvas}"
        # axes that never grow have one admissible position: offset 0
        for a in range(3):
            if g[a] == 1:
                assert (boxes[:, lvl, a] == 0).all()


@FEW
@given(pyr=pyramids(max_patch=16), batch=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_sample_nested_boxes_deterministic(pyr, batch, seed):
    r, num_levels, g = pyr
    for mode in ("finest", "all"):
        a = G.sample_nested_boxes(batch, r, num_levels, g, torch.Generator().manual_seed(seed), mode)
        b = G.sample_nested_boxes(batch, r, num_levels, g, torch.Generator().manual_seed(seed), mode)
        assert torch.equal(a, b)


@FEW
@given(
    r=st.tuples(*[st.integers(2, 16)] * 3),
    num_levels=st.integers(2, 4),
    g=growths.filter(lambda g: 2 in g),
    seeds=st.lists(st.integers(0, 2**31 - 1), min_size=2, max_size=2, unique=True),
    mode=st.sampled_from(["finest", "all"]),
)
def test_sample_nested_boxes_different_seeds_differ(r, num_levels, g, seeds, mode):
    # a growing axis with r >= 2 gives >= 3 integer positions per sample: 32 samples all equal has prob <= 3**-32
    a = G.sample_nested_boxes(32, r, num_levels, g, torch.Generator().manual_seed(seeds[0]), mode)
    b = G.sample_nested_boxes(32, r, num_levels, g, torch.Generator().manual_seed(seeds[1]), mode)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("r, g", [((2, 3, 5), (2, 2, 2)), ((4, 3, 2), (1, 2, 2)), ((1, 1, 1), (2, 2, 2))])
def test_sample_nested_boxes_reaches_every_integer_position(r, g):
    """Off-by-one check: with two levels the finest box may sit at every pixel offset 0..R-r, both ends included."""
    boxes = G.sample_nested_boxes(4000, r, 2, g, torch.Generator().manual_seed(0))
    canvas = G.level_sizes(r, 2, g)[1]
    px = (boxes[:, 1, :3].double() * torch.tensor(canvas, dtype=torch.float64)).round().long()
    for a in range(3):
        assert set(px[:, a].tolist()) == set(range(canvas[a] - r[a] + 1))


def test_sample_nested_boxes_continuous_levels_fill_parent():
    """In "finest" mode the intermediate levels are continuous (not on a grid), reach both ends and are symmetric."""
    r, g = (4, 4, 4), (2, 2, 2)
    boxes = G.sample_nested_boxes(4000, r, 3, g, torch.Generator().manual_seed(0))
    mid = boxes[:, 1, :3].double() * 8  # level 1 canvas is 8: admissible offsets [0, 4]
    assert not _is_integer(mid)
    assert mid.min() < 0.05 and mid.max() > 3.95
    assert abs(mid.mean().item() - 2.0) < 0.1


def test_sample_nested_boxes_rejects_bad_mode():
    with pytest.raises(ValueError, match="integer_levels"):
        G.sample_nested_boxes(2, (4, 4, 4), 2, integer_levels="some")


# Coverage of every level's canvas (DESIGN §8). Per growing axis, `sample_nested_boxes`' docstring derives
# max / min <= 2 at the finest level and <= 3 at the coarser ones (min / interior >= 1/2 everywhere); an axis that
# does not grow is always covered. Axes are drawn from separate uniforms, so 3-D coverage is the product of the
# per-axis ones (checked below) and the per-axis test is the whole property.
FINEST_FACTOR, COARSER_FACTOR = 2.0, 3.0
COVERAGE_DRAWS = 20_000
# Binomial noise: a frequency p estimated from N draws has sd sqrt(p (1 - p) / N) (<= 0.0035 at N = 20k). A bound
# a <= F b between two estimates is allowed 5 (sd_a + F sd_b) of slack (sd of a - F b under any correlation); over
# the ~1000 voxel comparisons below a 5-sigma excursion has probability ~1e-3 for a fresh seed (the seed is fixed).
COVERAGE_SIGMAS = 5.0


def _axis_coverage(offsets_px: torch.Tensor, canvas: int, patch: int) -> torch.Tensor:
    """``(N, canvas)``: whether each voxel centre lies in each box ``[o, o + patch]`` (offsets in pixels)."""
    centres = torch.arange(canvas, dtype=torch.float64) + 0.5
    o = offsets_px.double()[:, None]
    return (o <= centres) & (centres <= o + patch)


def _frequency_sd(p: torch.Tensor, n: int) -> torch.Tensor:
    return (p * (1 - p) / n).sqrt()


def _assert_within_factor(freq: torch.Tensor, factor: float, n: int, what: str) -> None:
    """``max <= factor * min`` and ``min >= centre / factor`` up to binomial noise (``freq``: a 1-D or 3-D canvas)."""
    centre = freq[tuple(s // 2 for s in freq.shape)]
    freq = freq.flatten()
    sd = _frequency_sd(freq, n)
    lo, hi, sd_centre = freq.argmin(), freq.argmax(), _frequency_sd(centre, n)
    slack = COVERAGE_SIGMAS * (sd[hi] + factor * sd[lo])
    assert freq[hi] <= factor * freq[lo] + slack, f"{what}: max {freq[hi]:.4f} > {factor} x min {freq[lo]:.4f}"
    slack = COVERAGE_SIGMAS * (sd[lo] + sd_centre / factor)
    assert freq[lo] >= centre / factor - slack, f"{what}: min {freq[lo]:.4f} < centre {centre:.4f} / {factor}"


@pytest.mark.parametrize(
    "r, num_levels, g, mode",
    [
        ((3, 5, 8), 2, (2, 2, 2), "finest"),  # two levels, non-square patch
        ((3, 5, 8), 2, (2, 2, 2), "all"),
        ((2, 4, 6), 3, (2, 2, 2), "finest"),  # continuous intermediate level
        ((2, 4, 6), 3, (2, 2, 2), "all"),
        ((4, 6, 8), 3, (1, 2, 2), "finest"),  # frames do not grow
        ((1, 3, 16), 4, (2, 1, 2), "all"),  # four levels, rows do not grow, patch length 1
    ],
)
def test_sample_nested_boxes_cover_every_voxel_of_every_level(r, num_levels, g, mode):
    """Each level's first and last frame, row and column are inside that level's training box within a factor of
    the centre's frequency (inference tiles every level up to its edges)."""
    boxes = G.sample_nested_boxes(COVERAGE_DRAWS, r, num_levels, g, torch.Generator().manual_seed(0), mode)
    for lvl, canvas in enumerate(G.level_sizes(r, num_levels, g)[1:], start=1):
        factor = FINEST_FACTOR if lvl == num_levels - 1 else COARSER_FACTOR
        for a in range(3):
            freq = _axis_coverage(boxes[:, lvl, a] * canvas[a], canvas[a], r[a]).double().mean(0)  # (R,)
            if g[a] == 1:
                assert (freq == 1).all()
            else:
                _assert_within_factor(freq, factor, COVERAGE_DRAWS, f"level {lvl} axis {G.AXES[a]}")


def test_sample_nested_boxes_coverage_factorises_over_axes():
    """3-D coverage frequency is the product of the per-axis ones, so the 3-D bound is the per-axis factor cubed."""
    r, num_levels, g, n = (2, 3, 2), 3, (2, 2, 2), COVERAGE_DRAWS
    boxes = G.sample_nested_boxes(n, r, num_levels, g, torch.Generator().manual_seed(1))
    for lvl, canvas in enumerate(G.level_sizes(r, num_levels, g)[1:], start=1):
        masks = [_axis_coverage(boxes[:, lvl, a] * canvas[a], canvas[a], r[a]).double() for a in range(3)]
        joint = torch.einsum("nf,nh,nw->fhw", *masks) / n  # (F, H, W)
        per_axis = [m.mean(0) for m in masks]
        product = torch.einsum("f,h,w->fhw", *per_axis)
        # sd of the joint estimate plus (delta method) sum over axes of sd_a x the other two frequencies (<= 1)
        sd = _frequency_sd(joint, n) + sum(_frequency_sd(p, n).max() for p in per_axis)
        assert ((joint - product).abs() <= COVERAGE_SIGMAS * sd).all()
        factor = (FINEST_FACTOR if lvl == num_levels - 1 else COARSER_FACTOR) ** 3
        _assert_within_factor(joint, factor, n, f"level {lvl} (3-D)")


# ------------------------------------------------------------------------------------------------------------
# Relative boxes
# ------------------------------------------------------------------------------------------------------------


@SETTINGS
@given(pyr=pyramids(max_patch=20), seed=st.integers(0, 2**31 - 1), mode=st.sampled_from(["finest", "all"]))
@example(pyr=((4, 12, 16), 4, (1, 2, 2)), seed=3, mode="finest")
def test_relative_box_round_trip(pyr, seed, mode):
    r, num_levels, g = pyr
    boxes = G.sample_nested_boxes(6, r, num_levels, g, torch.Generator().manual_seed(seed), mode).double()
    for k, fl in itertools.combinations(range(num_levels), 2):  # k coarser than fl
        coarse, fine = boxes[:, k], boxes[:, fl]
        rel = G.relative_box(fine, coarse)
        # fine = coarse offset + rel offset * coarse size; sizes multiply back (float64 on coordinates in [0, 1]:
        # subtraction, division, product, sum)
        assert_close_rounding(coarse[:, :3] + rel[:, :3] * coarse[:, 3:], fine[:, :3], 4, 1.0)
        assert_close_rounding(rel[:, 3:] * coarse[:, 3:], fine[:, 3:], 2, 1.0)
        # a contained box has a relative box inside [0, 1] (boxes are float32: each of the 4 coordinates of a relative
        # box's end is rounded once, by eps / 2, and the difference is divided by the coarse size)
        slack = rounding_atol(1 / coarse[:, 3:].min(), 2)
        assert (rel[:, :3] >= -slack).all()
        assert (rel[:, :3] + rel[:, 3:] <= 1 + slack).all()
        assert G.box_contains(torch.tensor(G.FULL_BOX, dtype=torch.float64), rel).all()
        # relative size is a ratio of canvases: g**-(fl-k) per axis (up to the float32 rounding of both sizes)
        ratio = torch.tensor([gi ** (k - fl) for gi in g], dtype=torch.float64).expand(6, 3)
        assert_close_rounding(rel[:, 3:], ratio, 1, ratio, torch.float32)
    # relative to the whole video a box is itself (subtracting 0 and dividing by 1 are exact)
    assert torch.equal(G.relative_box(boxes[:, -1], torch.tensor(G.FULL_BOX, dtype=torch.float64)), boxes[:, -1])


@SETTINGS
@given(
    lo=st.lists(st.floats(0, 0.5), min_size=3, max_size=3),
    size=st.lists(st.floats(0.05, 0.5), min_size=3, max_size=3),
    inner_frac=st.lists(st.tuples(st.floats(0, 1), st.floats(0.01, 1)), min_size=3, max_size=3),
)
def test_relative_box_of_contained_box_in_unit_cube(lo, size, inner_frac):
    outer = torch.tensor(lo + size, dtype=torch.float64)
    # inner size fraction q of the outer, offset at a fraction p of the remaining room
    q = torch.tensor([f[1] for f in inner_frac], dtype=torch.float64)
    p = torch.tensor([f[0] for f in inner_frac], dtype=torch.float64)
    s_in = outer[3:] * q
    d_in = outer[:3] + p * (outer[3:] - s_in)
    inner = torch.cat([d_in, s_in])
    assert G.box_contains(outer, inner)
    rel = G.relative_box(inner, outer)
    # float64: the inner box (4 roundings at coordinates <= 1) less the outer offset, over the outer size, against
    # p (1 - q) (2 roundings): 4 eps at scale 1 / size
    atol = rounding_atol(1 / outer[3:].min(), 4, torch.float64)
    assert (rel[:3] >= -atol).all() and (rel[:3] + rel[3:] <= 1 + atol).all()
    assert_close_rounding(rel, torch.cat([p * (1 - q), q]), 4, 1 / outer[3:].min())
    # moving the inner box out of the outer one is detected, and its relative box leaves [0, 1]
    shifted = inner.clone()
    shifted[0] = outer[0] + outer[3] - s_in[0] + 1e-3
    assert not G.box_contains(outer, shifted)
    rel_s = G.relative_box(shifted, outer)
    assert rel_s[0] + rel_s[3] > 1


def test_pixel_box():
    assert G.pixel_box((2, 0, 8), (4, 8, 8), (8, 16, 32)) == (0.25, 0.0, 0.25, 0.5, 0.5, 0.25)


# ------------------------------------------------------------------------------------------------------------
# Patch extraction
# ------------------------------------------------------------------------------------------------------------

SMALL = 24_000  # final-video voxels in extraction tests (2 shared cores)


def _random_video(batch, channels, size, seed):
    return torch.randn(batch, channels, *size, generator=torch.Generator().manual_seed(seed))


@SETTINGS
@given(
    pyr=pyramids(max_patch=8, max_final_voxels=SMALL),
    batch=st.integers(1, 3),
    channels=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
    mode=st.sampled_from(["finest", "all"]),
)
@example(pyr=((2, 3, 4), 3, (1, 2, 2)), batch=2, channels=3, seed=0, mode="finest")
@example(pyr=((3, 5, 7), 3, (2, 2, 2)), batch=2, channels=2, seed=1, mode="finest")
def test_extract_patches_shapes_slices_and_level0(pyr, batch, channels, seed, mode):
    r, num_levels, g = pyr
    sizes = G.level_sizes(r, num_levels, g)
    video = _random_video(batch, channels, sizes[-1], seed)
    boxes = G.sample_nested_boxes(batch, r, num_levels, g, torch.Generator().manual_seed(seed + 1), mode)
    patches = G.extract_patches(video, boxes, r)
    assert patches.shape == (batch, num_levels, channels, *r)
    assert torch.isfinite(patches).all()
    # finest level (integer offsets): an exact slice of the video
    px = (boxes[:, -1, :3].double() * torch.tensor(sizes[-1], dtype=torch.float64)).round().long()
    for b in range(batch):
        f, h, w = px[b].tolist()
        torch.testing.assert_close(
            patches[b, -1], video[b, :, f : f + r[0], h : h + r[1], w : w + r[2]], rtol=0, atol=0
        )
    # level 0: the whole video area-downsampled to r (block means: another summation order of the same prod(factors)
    # terms, at the video's scale); bit-identical to the same area_downsample call
    factors = [s // ri for s, ri in zip(sizes[-1], r)]
    blocks = video.reshape(batch, channels, r[0], factors[0], r[1], factors[1], r[2], factors[2])
    assert_close_rounding(patches[:, 0], blocks.mean(dim=(3, 5, 7)), math.prod(factors), video.abs().max())
    torch.testing.assert_close(patches[:, 0], G.area_downsample(video, r), rtol=0, atol=0)
    # integer boxes on every level ("all"): each level is a slice of its area-downsampled canvas (the same call)
    if mode == "all":
        for lvl, canvas in enumerate(sizes):
            down = G.area_downsample(video, canvas)
            pxl = (boxes[:, lvl, :3].double() * torch.tensor(canvas, dtype=torch.float64)).round().long()
            for b in range(batch):
                f, h, w = pxl[b].tolist()
                torch.testing.assert_close(
                    patches[b, lvl], down[b, :, f : f + r[0], h : h + r[1], w : w + r[2]], rtol=0, atol=0
                )


@SETTINGS
@given(
    pyr=pyramids(max_patch=8, max_final_voxels=SMALL),
    value=st.floats(-5, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_extract_patches_constant_video(pyr, value, seed):
    r, num_levels, g = pyr
    final = G.level_sizes(r, num_levels, g)[-1]
    video = torch.full((2, 2, *final), value)
    boxes = G.sample_nested_boxes(2, r, num_levels, g, torch.Generator().manual_seed(seed))
    patches = G.extract_patches(video, boxes, r)
    # an area average of up to prod(final / r) voxels (level 0), then 8 trilinear taps whose weights sum to 1 up to
    # rounding
    depth = math.prod(final) // math.prod(r) + 10
    assert_close_rounding(patches, torch.full_like(patches, value), depth, abs(value))


def _ramp(coeffs: torch.Tensor, bias: torch.Tensor, pos: list[torch.Tensor]) -> torch.Tensor:
    """Per channel ``bias + sum_a coeffs[:, a] * pos[a]`` on the grid ``pos`` (three 1-D tensors) -> (C, f, h, w)."""
    pf, ph, pw = pos
    return (
        bias[:, None, None, None]
        + coeffs[:, 0, None, None, None] * pf[None, :, None, None]
        + coeffs[:, 1, None, None, None] * ph[None, None, :, None]
        + coeffs[:, 2, None, None, None] * pw[None, None, None, :]
    )


def _centres(n: int, off: float = 0.0, size: float = 1.0) -> torch.Tensor:
    return off + size * (torch.arange(n, dtype=torch.float64) + 0.5) / n


@SETTINGS
@given(
    pyr=pyramids(max_patch=8, max_final_voxels=SMALL),
    seed=st.integers(0, 2**31 - 1),
)
@example(pyr=((2, 3, 4), 3, (1, 2, 2)), seed=0)
@example(pyr=((3, 5, 7), 3, (2, 2, 2)), seed=1)
@example(pyr=((4, 4, 4), 3, (2, 2, 2)), seed=2)
def test_extract_patches_linear_ramp_read_at_voxel_centres(pyr, seed):
    """A video linear in the normalized voxel-centre coordinates gives patches equal to the same linear function at
    the patch's voxel centres ``delta + s * (j + 0.5) / r`` (area averaging and trilinear reads are exact on a ramp,
    so this pins the coordinate convention of ``box_sampling_grid`` / ``grid_sample`` for non-integer boxes)."""
    r, num_levels, g = pyr
    final = G.level_sizes(r, num_levels, g)[-1]
    gen = torch.Generator().manual_seed(seed)
    channels = 2
    coeffs = torch.rand(channels, 3, generator=gen, dtype=torch.float64) * 2 - 1
    bias = torch.rand(channels, generator=gen, dtype=torch.float64)
    video = _ramp(coeffs, bias, [_centres(n) for n in final])[None].float()
    # "finest" mode: intermediate levels have continuous (non-integer) offsets
    boxes = G.sample_nested_boxes(3, r, num_levels, g, gen, "finest")
    patches = G.extract_patches(video.expand(3, -1, -1, -1, -1), boxes, r)
    # float32 video and arithmetic at the ramp's scale: the video's rounding, an area average of up to prod(final / r)
    # voxels (level 0), 8 trilinear taps and the float32 sampling grid (a coordinate off by eps / 2, plus the
    # unnormalisation to voxels) at slopes summing to at most the scale
    scale = (bias.abs() + coeffs.abs().sum(1)).max()
    depth = math.prod(final) // math.prod(r) + 16
    for b, lvl in itertools.product(range(3), range(num_levels)):
        box = boxes[b, lvl].double()
        expected = _ramp(coeffs, bias, [_centres(r[a], box[a].item(), box[3 + a].item()) for a in range(3)])
        assert_close_rounding(patches[b, lvl].double(), expected, depth, scale, torch.float32)


@SETTINGS
@given(
    r=st.tuples(*[st.integers(1, 6)] * 3),
    canvas_mult=st.tuples(*[st.integers(1, 4)] * 3),
    frac=st.lists(st.floats(0, 1), min_size=3, max_size=3),
)
def test_crop_resize_ramp_with_arbitrary_box(r, canvas_mult, frac):
    """``crop_resize`` at a non-integer box of patch-pixel size reads the ramp at the box's voxel centres."""
    canvas = tuple(ri * m for ri, m in zip(r, canvas_mult))
    coeffs = torch.tensor([[0.3, -0.7, 1.1]], dtype=torch.float64)
    bias = torch.tensor([0.2], dtype=torch.float64)
    video = _ramp(coeffs, bias, [_centres(n) for n in canvas])[None].float()
    size = [ri / ci for ri, ci in zip(r, canvas)]
    off = [f * (1 - s) for f, s in zip(frac, size)]
    box = torch.tensor([off + size], dtype=torch.float32)
    out = G.crop_resize(video, box, None, r)
    assert out.shape == (1, 1, *r)
    expected = _ramp(coeffs, bias, [_centres(r[a], box[0, a].item(), box[0, 3 + a].item()) for a in range(3)])
    # float32 at the ramp's scale (2.3): the video's rounding (1), 8 trilinear taps and their weights (16), and the
    # float32 sampling grid: ~7 operations of position rounding, times the ramp's total slope 2.1 < 2.3 (14 more)
    # (hypothesis found r=(1, 1, 1), canvas_mult=(1, 1, 2), frac=[0, 0, 1e-5] at 20 roundings)
    assert_close_rounding(out[0].double(), expected, 32, 2.3, torch.float32)


@FEW
@given(
    r=st.tuples(*[st.integers(1, 5)] * 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_crop_resize_with_canvas_box_matches_global_crop(r, seed):
    """Cropping a box out of a sub-canvas (``canvas_box``) gives the same pixels as cropping it out of the video."""
    gen = torch.Generator().manual_seed(seed)
    final = tuple(4 * ri for ri in r)
    video = torch.randn(1, 2, *final, generator=gen)
    # sub-canvas: integer window of size 2r at an integer offset; inner box: integer window of size r inside it
    sub_off = [int(torch.randint(0, 2 * ri + 1, (1,), generator=gen)) for ri in r]
    in_off = [so + int(torch.randint(0, ri + 1, (1,), generator=gen)) for so, ri in zip(sub_off, r)]
    sub_box = torch.tensor([G.pixel_box(sub_off, [2 * ri for ri in r], final)], dtype=torch.float64)
    inner_box = torch.tensor([G.pixel_box(in_off, r, final)], dtype=torch.float64)
    sub = video[
        :,
        :,
        sub_off[0] : sub_off[0] + 2 * r[0],
        sub_off[1] : sub_off[1] + 2 * r[1],
        sub_off[2] : sub_off[2] + 2 * r[2],
    ]
    got = G.crop_resize(sub, inner_box, sub_box, r)
    want = G.crop_resize(video, inner_box, None, r)
    direct = video[:, :, in_off[0] : in_off[0] + r[0], in_off[1] : in_off[1] + r[1], in_off[2] : in_off[2] + r[2]]
    # integer-aligned boxes of the patch size are slices: exact
    torch.testing.assert_close(got, direct, rtol=0, atol=0)
    torch.testing.assert_close(want, direct, rtol=0, atol=0)


def test_extract_patches_rejects_video_smaller_than_pyramid():
    r, g = (2, 2, 2), (2, 2, 2)
    boxes = G.sample_nested_boxes(1, r, 3, g, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="larger than the video"):
        G.extract_patches(torch.zeros(1, 1, 4, 4, 4), boxes, r)


@FEW
@given(r=st.tuples(*[st.integers(1, 4)] * 3), mult=st.tuples(*[st.integers(1, 4)] * 3), seed=st.integers(0, 1000))
def test_area_downsample_is_block_mean(r, mult, seed):
    video = _random_video(2, 1, [a * m for a, m in zip(r, mult)], seed)
    out = G.area_downsample(video, r)
    blocks = video.reshape(2, 1, r[0], mult[0], r[1], mult[1], r[2], mult[2]).mean(dim=(3, 5, 7))
    # two summation orders of the same prod(mult) terms, at the video's scale
    assert_close_rounding(out, blocks, math.prod(mult), video.abs().max())
    assert G.area_downsample(video, video.shape[-3:]) is video


# ------------------------------------------------------------------------------------------------------------
# Tile plans
# ------------------------------------------------------------------------------------------------------------


@SETTINGS
@given(patch=st.integers(1, 24), extra=st.integers(0, 60), overlap=st.booleans())
@example(patch=16, extra=21, overlap=True)  # canvas 37: not a multiple of the stride
@example(patch=16, extra=21, overlap=False)
@example(patch=1, extra=5, overlap=True)
def test_axis_offsets_cover_and_stay_in_bounds(patch, extra, overlap):
    canvas = patch + extra
    offsets = G.axis_offsets(canvas, patch, overlap)
    assert offsets[0] == 0
    assert offsets[-1] == canvas - patch  # last window ends exactly at the edge
    assert all(isinstance(o, int) for o in offsets)
    assert all(0 <= o <= canvas - patch for o in offsets)
    assert offsets == sorted(set(offsets))  # strictly increasing, no duplicate windows
    stride = max(1, patch // 2) if overlap else patch
    steps = np.diff(offsets)
    assert (steps[:-1] == stride).all()
    if len(steps):
        assert 0 < steps[-1] <= stride
    count = np.zeros(canvas, dtype=int)
    for o in offsets:
        count[o : o + patch] += 1
    assert (count >= 1).all()


@SETTINGS
@given(half=st.integers(1, 12), k=st.integers(2, 10))
def test_axis_offsets_tile_count(half, k):
    patch = 2 * half
    canvas = k * half  # a multiple of r/2, at least r
    assert len(G.axis_offsets(canvas, patch, True)) == 2 * canvas // patch - 1
    assert G.axis_offsets(canvas, patch, True) == list(range(0, canvas - patch + 1, half))
    if canvas % patch == 0:
        assert G.axis_offsets(canvas, patch, False) == list(range(0, canvas, patch))


@SETTINGS
@given(patch=st.integers(1, 24), extra=st.integers(0, 60), overlap=st.booleans(), data=st.data())
def test_shifted_axis_offsets_cover_and_move_the_interior_windows(patch, extra, overlap, data):
    """A shifted plan still covers the canvas with in-bounds windows; every window other than the two at the canvas
    edges starts at ``shift + k * stride``; shift 0 is the plain plan."""
    canvas, stride = patch + extra, G.axis_stride(patch, overlap)
    shift = data.draw(st.integers(0, stride - 1))
    offsets = G.axis_offsets(canvas, patch, overlap, shift)
    assert offsets[0] == 0 and offsets[-1] == canvas - patch and offsets == sorted(set(offsets))
    count = np.zeros(canvas, dtype=int)
    for o in offsets:
        count[o : o + patch] += 1
    assert (count >= 1).all()
    assert all((o - shift) % stride == 0 for o in offsets[1:-1])
    if shift == 0:
        assert offsets == G.axis_offsets(canvas, patch, overlap)


def test_axis_offsets_rejects_a_shift_outside_the_stride():
    with pytest.raises(ValueError, match="shift"):
        G.axis_offsets(64, 16, True, shift=8)


@pytest.mark.parametrize("overlap", [True, False])
def test_axis_offsets_rejects_small_canvas(overlap):
    with pytest.raises(ValueError, match="smaller than the patch"):
        G.axis_offsets(15, 16, overlap)


overlap_sets = st.sets(st.sampled_from(G.AXES)).map(lambda s: tuple(a for a in G.AXES if a in s))


@SETTINGS
@given(
    r=st.tuples(*[st.integers(1, 12)] * 3),
    extra=st.tuples(*[st.integers(0, 25)] * 3),
    overlap_axes=overlap_sets,
)
@example(r=(16, 16, 16), extra=(21, 0, 5), overlap_axes=("f", "h", "w"))
@example(r=(4, 12, 16), extra=(0, 13, 21), overlap_axes=("h", "w"))
def test_tile_plan_covers_canvas(r, extra, overlap_axes):
    canvas = tuple(ri + e for ri, e in zip(r, extra))
    plan = G.tile_plan(canvas, r, overlap_axes)
    assert plan.canvas == canvas and plan.patch_size == r
    per_axis = [G.axis_offsets(c, ri, a in overlap_axes) for c, ri, a in zip(canvas, r, G.AXES)]
    assert len(plan) == math.prod(len(o) for o in per_axis)
    assert set(plan.offsets) == set(itertools.product(*per_axis))
    count = np.zeros(canvas, dtype=int)
    for i, off in enumerate(plan.offsets):
        assert all(0 <= o and o + ri <= c for o, ri, c in zip(off, r, canvas))
        sl = plan.slices(i)
        assert [s.stop - s.start for s in sl] == list(r)
        count[sl] += 1
    assert (count >= 1).all()
    # the far corner is reached exactly
    assert tuple(c - ri for c, ri in zip(canvas, r)) in plan.offsets
    # stride per axis
    for a, ax in enumerate(G.AXES):
        steps = np.diff(per_axis[a])
        stride = max(1, r[a] // 2) if ax in overlap_axes else r[a]
        if len(steps) > 1:
            assert (steps[:-1] == stride).all()
    # boxes are the pixel boxes of the windows
    boxes = plan.boxes(torch.float64)
    assert boxes.shape == (len(plan), 6)
    expected = torch.tensor([G.pixel_box(o, r, canvas) for o in plan.offsets], dtype=torch.float64)
    assert torch.equal(boxes, expected)  # the same float64 divisions
    assert G.box_contains(torch.tensor(G.FULL_BOX, dtype=torch.float64), boxes).all()


@pytest.mark.parametrize("axes", [("x",), ("h", "t"), ("frames",)])
def test_tile_plan_unknown_axis(axes):
    with pytest.raises(ValueError) as err:
        G.tile_plan((8, 8, 8), (4, 4, 4), axes)
    msg = str(err.value)
    for a in G.AXES:
        assert f"'{a}'" in msg


def test_tile_plan_rejects_canvas_smaller_than_patch():
    with pytest.raises(ValueError):
        G.tile_plan((8, 8, 3), (4, 4, 4))


def test_tile_plan_count_example():
    # R = 64, r = 16 on every axis with overlap on h, w only: 7 x 7 windows along h, w and 4 along f
    plan = G.tile_plan((64, 64, 64), (16, 16, 16), ("h", "w"))
    assert len(plan) == 4 * 7 * 7


# ------------------------------------------------------------------------------------------------------------
# Containment and context chains
# ------------------------------------------------------------------------------------------------------------


def _plans(r, num_levels, g):
    """Tile plans of every level with 50% overlap on every growing axis."""
    overlap = tuple(a for a, gi in zip(G.AXES, g) if gi == 2)
    return [G.tile_plan(c, r, overlap) for c in G.level_sizes(r, num_levels, g)]


def _centre_distance_px(fine_off, coarse_off, r, fine_canvas, coarse_canvas):
    """Squared centre distance in units of the coarse window, computed in coarse pixels (numpy, independent)."""
    fine_off = np.asarray(fine_off, dtype=np.float64)
    coarse_off = np.asarray(coarse_off, dtype=np.float64)
    scale = np.asarray(coarse_canvas, dtype=np.float64) / np.asarray(fine_canvas, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    c_fine = (fine_off + r / 2) * scale
    c_coarse = coarse_off + r / 2
    return (((c_fine - c_coarse) / r) ** 2).sum(-1)


def _contains_px(fine_off, coarse_off, r, fine_canvas, coarse_canvas):
    """Containment in exact integer arithmetic: fine window scaled to the coarse canvas (growth 1 or 2)."""
    ok = True
    for fo, co, ri, fc, cc in zip(fine_off, coarse_off, r, fine_canvas, coarse_canvas):
        k = fc // cc  # 1 or 2
        ok &= co * k <= fo and fo + ri <= (co + ri) * k
    return ok


@SETTINGS
@given(
    r=st.tuples(*[st.integers(2, 8)] * 3),
    level=st.integers(1, 3),
    g=growths,
)
@example(r=(4, 12, 16), level=2, g=(1, 2, 2))
@example(r=(3, 5, 7), level=2, g=(2, 2, 2))
def test_containing_tiles_contains_and_most_centred(r, level, g):
    plans = _plans(r, level + 1, g)
    fine, coarse = plans[level], plans[level - 1]
    if len(fine) * len(coarse) > 40_000:
        level -= 1
        if level == 0:
            return
        fine, coarse = plans[level], plans[level - 1]
    idx = G.containing_tiles(fine.boxes(), coarse.boxes())
    assert idx.shape == (len(fine),) and idx.dtype == torch.long
    fb = fine.boxes(torch.float64)
    cb = coarse.boxes(torch.float64)
    assert G.box_contains(cb[idx], fb).all()
    for i, fo in enumerate(fine.offsets):
        chosen = coarse.offsets[int(idx[i])]
        assert _contains_px(fo, chosen, r, fine.canvas, coarse.canvas)
        containers = [co for co in coarse.offsets if _contains_px(fo, co, r, fine.canvas, coarse.canvas)]
        assert containers, "50% overlap on growing axes must give every fine tile a container"
        best = min(_centre_distance_px(fo, co, r, fine.canvas, coarse.canvas) for co in containers)
        got = _centre_distance_px(fo, chosen, r, fine.canvas, coarse.canvas)
        # a tie of equally centred containers, up to float64 rounding of the squared distances (centres up to
        # C = canvas / r windows from the origin): 3 axes x (2 C + |d|) x 2 |d| <= 18 C**2 eps / 2
        assert got <= best + rounding_atol(max(c / ri for c, ri in zip(coarse.canvas, r)) ** 2, 9, torch.float64)


def test_containing_tiles_prefers_centred_container():
    # 1-D along w: coarse canvas 16, r = 8 -> coarse windows at 0, 4, 8; fine canvas 32 -> fine window at 8
    # occupies [4, 8) in coarse pixels; containers are 0 ([0,8)) and 4 ([4,12)); centre 6: distances 2 and 2 ->
    # tie; fine window at 12 -> [6, 10): containers 4 only ([4, 12)); fine window at 4 -> [2, 6): container 0 only.
    coarse = G.tile_plan((8, 8, 16), (8, 8, 8), ("w",))
    fine = G.tile_plan((8, 8, 32), (8, 8, 8), ("w",))
    idx = G.containing_tiles(fine.boxes(), coarse.boxes())
    got = {fo[2]: coarse.offsets[int(i)][2] for fo, i in zip(fine.offsets, idx)}
    assert got[4] == 0 and got[12] == 4 and got[20] == 8 and got[24] == 8
    assert got[0] == 0
    # a window that is contained by several coarse windows, with a unique most-centred one
    coarse = G.tile_plan((8, 8, 16), (8, 8, 8), ("w",))
    one = torch.tensor([G.pixel_box((0, 0, 10), (8, 8, 4), (8, 8, 16))], dtype=torch.float32)  # [10, 14)
    assert coarse.offsets[int(G.containing_tiles(one, coarse.boxes())[0])][2] == 8  # [8,16) only container
    one = torch.tensor([G.pixel_box((0, 0, 6), (8, 8, 2), (8, 8, 16))], dtype=torch.float32)  # [6, 8): in 0 and 4
    assert coarse.offsets[int(G.containing_tiles(one, coarse.boxes())[0])][2] == 4  # centre 8 vs 4: 4 is closer


@SETTINGS
@given(
    r=st.tuples(*[st.integers(2, 6)] * 3),
    num_levels=st.integers(3, 4),
    g=growths,
)
@example(r=(4, 12, 16), num_levels=3, g=(1, 2, 2))
@example(r=(2, 3, 2), num_levels=4, g=(2, 2, 2))
@example(r=(3, 4, 5), num_levels=4, g=(1, 1, 2))
def test_context_chain_is_nested(r, num_levels, g):
    plans = _plans(r, num_levels, g)
    while num_levels > 2 and len(plans[num_levels - 1]) * len(plans[num_levels - 2]) > 40_000:
        num_levels -= 1
    tile_boxes = [p.boxes() for p in plans[:num_levels]]
    for level in range(1, num_levels):
        chain = G.context_chain(tile_boxes, level)
        assert len(chain) == level
        n = len(tile_boxes[level])
        for k, idx in enumerate(chain):
            assert idx.shape == (n,) and idx.dtype == torch.long
            assert (idx >= 0).all() and (idx < len(tile_boxes[k])).all()
        # each chosen tile contains the next finer one, down to the tiles of `level`
        finer = tile_boxes[level]
        for k in range(level - 1, -1, -1):
            chosen = tile_boxes[k][chain[k]]
            assert G.box_contains(chosen, finer).all(), f"level {k} tile does not contain its level {k + 1} tile"
            finer = chosen
        # the step just above `level` is exactly `containing_tiles`
        assert torch.equal(chain[level - 1], G.containing_tiles(tile_boxes[level], tile_boxes[level - 1]))
        # level 0 is one tile, the whole video
        assert (chain[0] == 0).all()


# ------------------------------------------------------------------------------------------------------------
# Token coordinates and divisibility
# ------------------------------------------------------------------------------------------------------------


@SETTINGS
@given(
    grid=st.tuples(*[st.integers(1, 7)] * 3),
    lo=st.lists(st.floats(0, 0.8), min_size=6, max_size=6),
    size=st.lists(st.floats(0.01, 0.2), min_size=6, max_size=6),
)
def test_token_coordinates(grid, lo, size):
    full = torch.tensor([G.FULL_BOX], dtype=torch.float64)
    coords_full = G.token_coordinates(full, grid)
    assert coords_full.shape == (1, 3, *grid)
    for a in range(3):
        centres = (torch.arange(grid[a], dtype=torch.float64) + 0.5) / grid[a]
        shape = [1, 1, 1]
        shape[a] = grid[a]
        assert torch.equal(coords_full[0, a], centres.reshape(shape).expand(*grid))  # 0 + 1 * centre: exact
    boxes = torch.tensor([lo[:3] + size[:3], lo[3:] + size[3:]], dtype=torch.float64)
    coords = G.token_coordinates(boxes, grid)
    assert coords.shape == (2, 3, *grid)
    # affine in the box: offset + size * full-box coordinates (float64 coordinates <= 1: a product and a sum)
    expected = boxes[:, :3, None, None, None] + boxes[:, 3:, None, None, None] * coords_full
    assert_close_rounding(coords, expected, 2, 1.0)
    # tokens stay inside their box, and equal-spaced
    slack = rounding_atol(1.0, 2, torch.float64)
    assert (coords >= boxes[:, :3, None, None, None] - slack).all()
    assert (coords <= (boxes[:, :3] + boxes[:, 3:])[:, :, None, None, None] + slack).all()
    # token coordinates of a fine box equal the coarse box's map applied to the relative box's coordinates (float64:
    # the relative box, its coordinates and the map back, 2 roundings each, and the direct coordinates: 8 roundings
    # of coordinates <= 1 once multiplied back)
    rel = G.relative_box(boxes[1:], boxes[:1])
    assert_close_rounding(
        G.token_coordinates(boxes[1:], grid),
        boxes[:1, :3, None, None, None] + boxes[:1, 3:, None, None, None] * G.token_coordinates(rel, grid),
        8,
        1.0,
    )


def test_token_coordinates_float32_dtype():
    c = G.token_coordinates(torch.tensor([G.FULL_BOX]), (2, 2, 2))
    assert c.dtype == torch.float32


@pytest.mark.parametrize(
    "patch, tok, grid",
    [((16, 64, 64), (2, 8, 8), (8, 8, 8)), ((8, 36, 64), (1, 4, 4), (8, 9, 16)), ((3, 5, 7), (1, 5, 7), (3, 1, 1))],
)
def test_check_divisible(patch, tok, grid):
    assert G.check_divisible(patch, tok) == grid


def test_check_divisible_rejects():
    with pytest.raises(ValueError, match="'h'"):
        G.check_divisible((16, 36, 64), (2, 8, 8))


def _wbox(lo: float, hi: float) -> list[float]:
    """A box spanning [lo, hi) along w and the whole video along f and h."""
    return [0.0, 0.0, lo, 1.0, 1.0, hi - lo]


def test_containing_tiles_prefers_container_over_nearest_centre():
    fine = torch.tensor([_wbox(0.4, 0.6)])
    # A's centre is nearer (0.02 / 0.14 in A's units) but A does not contain the fine box; B (0.15 / 0.7) does
    coarse = torch.tensor([_wbox(0.45, 0.59), _wbox(0.0, 0.7)])
    assert G.containing_tiles(fine, coarse).tolist() == [1]
    # when no box contains it, the nearest centre is returned
    coarse = torch.tensor([_wbox(0.45, 0.59), _wbox(0.0, 0.5), _wbox(0.55, 1.0)])
    assert G.containing_tiles(fine, coarse).tolist() == [0]


def test_context_chain_follows_containers_of_containers():
    """Level k's tile must contain the chosen level k+1 tile, not merely the tile being generated."""
    tiles = [
        torch.tensor([_wbox(0.0, 1.0)]),
        torch.tensor([_wbox(0.05, 0.55), _wbox(0.2, 0.7)]),  # both contain the fine tile; only the 2nd the level-2 one
        torch.tensor([_wbox(0.2, 0.6)]),
        torch.tensor([_wbox(0.3, 0.4)]),
    ]
    chain = G.context_chain(tiles, 3)
    assert [c.tolist() for c in chain] == [[0], [1], [0]]
    assert G.box_contains(tiles[1][chain[1]], tiles[2][chain[2]]).all()
    # the direct container of the fine tile at level 1 would be the first (nearer centre)
    assert G.containing_tiles(tiles[3], tiles[1]).tolist() == [0]
