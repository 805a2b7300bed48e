"""Patch-pyramid geometry: pure functions of shapes and boxes (DESIGN §2, paper §4.1, eq. 6 and 8).

Conventions
-----------
* Sizes are ``(F, H, W)`` tuples of ints. The patch size ``r`` is the same at every level.
* Level ``l`` has canvas ``R_l = r * growth**l`` (per axis, growth 1 or 2). The final video is level ``L-1``.
* A **box** is 6 floats ``(delta_f, delta_h, delta_w, s_f, s_h, s_w)``: offset and size in normalized global
  coordinates of the final video, both in ``[0, 1]``. Level ``l`` boxes have size ``s = r / R_l``.
* Nothing here owns activations or modules; tensors appear only as batches of boxes or as videos to crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Size3 = tuple[int, int, int]
FULL_BOX: tuple[float, ...] = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0)
AXES = ("f", "h", "w")


def _as_size3(x: int | Sequence[int], name: str) -> Size3:
    if isinstance(x, int):
        x = (x, x, x)
    x = tuple(int(v) for v in x)
    if len(x) != 3 or any(v < 1 for v in x):
        raise ValueError(f"`{name}` must be three positive ints (frames, height, width), got {x}.")
    return x  # type: ignore[return-value]


def level_sizes(patch_size: Sequence[int], num_levels: int, level_growth: Sequence[int] = (2, 2, 2)) -> list[Size3]:
    """Canvas size ``R_l = r * growth**l`` of every level, coarse to fine."""
    r = _as_size3(patch_size, "patch_size")
    g = _as_size3(level_growth, "level_growth")
    if any(v not in (1, 2) for v in g):
        raise ValueError(f"`level_growth` must be 1 or 2 per axis, got {g}.")
    if num_levels < 1:
        raise ValueError(f"`num_levels` must be >= 1, got {num_levels}.")
    return [tuple(ri * gi**lvl for ri, gi in zip(r, g)) for lvl in range(num_levels)]  # type: ignore[misc]


def level_of_size(size: Sequence[int], patch_size: Sequence[int], num_levels: int, level_growth: Sequence[int]) -> int:
    """The level whose canvas is ``size``; ``ValueError`` listing the valid sizes otherwise."""
    sizes = level_sizes(patch_size, num_levels, level_growth)
    size = tuple(int(v) for v in size)
    if size not in sizes:
        valid = ", ".join("x".join(map(str, s)) for s in sizes)
        raise ValueError(
            f"Video size {'x'.join(map(str, size))} (frames x height x width) is not a level of this pyramid; "
            f"choose one of: {valid}."
        )
    return sizes.index(size)


def pixel_box(offset: Sequence[int], patch_size: Sequence[int], canvas: Sequence[int]) -> tuple[float, ...]:
    """Box of a patch of size ``patch_size`` at integer ``offset`` on ``canvas`` (all in pixels of that canvas)."""
    return tuple(o / c for o, c in zip(offset, canvas)) + tuple(r / c for r, c in zip(patch_size, canvas))


def relative_box(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """Box of ``fine`` in the normalized coordinates of ``coarse`` (paper eq. 8): ``[(d_l - d_k)/s_k, s_l/s_k]``.

    Args:
        fine, coarse: ``(..., 6)`` boxes (broadcastable).
    Returns:
        ``(..., 6)`` relative boxes; inside ``[0, 1]`` whenever ``fine`` lies inside ``coarse``.
    """
    s_k = coarse[..., 3:]
    return torch.cat([(fine[..., :3] - coarse[..., :3]) / s_k, fine[..., 3:] / s_k], dim=-1)


def box_contains(outer: torch.Tensor, inner: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Whether ``inner`` lies inside ``outer`` (``(..., 6)`` boxes, broadcastable) -> bool ``(...)``."""
    lo = inner[..., :3] >= outer[..., :3] - eps
    hi = inner[..., :3] + inner[..., 3:] <= outer[..., :3] + outer[..., 3:] + eps
    return (lo & hi).all(dim=-1)


# --------------------------------------------------------------------------------------------------------------
# Training: random nested boxes and patch extraction
# --------------------------------------------------------------------------------------------------------------


def _finest_offsets(u: torch.Tensor, canvas: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Integer offsets of windows drawn uniformly among the ``R + r - 1`` windows that overlap the canvas (at least one
    voxel inside), then shifted into the canvas.

    Args:
        u: ``(B, 3)`` uniforms in ``[0, 1)``.
        canvas, r: ``(3,)`` canvas length ``R`` and patch length ``r``, in pixels.
    Returns:
        ``(B, 3)`` float64 pixel offsets in ``[0, R - r]``.
    """
    count = canvas + r - 1  # virtual offsets -(r - 1) .. R - 1
    virtual = torch.minimum(torch.floor(u * count), count - 1) - (r - 1)  # (B, 3)
    return torch.minimum(virtual.clamp(min=0.0), canvas - r)


def _containing_offsets(
    child: torch.Tensor,
    child_size: torch.Tensor,
    size: torch.Tensor,
    u: torch.Tensor,
    canvas: torch.Tensor | None,
) -> torch.Tensor:
    """Offsets of boxes of ``size`` that contain the ``child`` boxes: uniform among all such positions as if the
    canvas had no edges (continuous, or on the integer grid of ``canvas``), then shifted into ``[0, 1 - size]``.

    Shifting keeps the child inside: a box sticking out on the left moves right to offset 0, still at or left of the
    child's offset, and its right end moves right too (symmetrically on the right).
    Args:
        child: ``(B, 3)`` normalized offsets of boxes that lie inside ``[0, 1]``.
        child_size, size: ``(3,)`` normalized box sizes, ``size >= child_size``.
        u: ``(B, 3)`` uniforms in ``[0, 1)``.
        canvas: ``(3,)`` canvas of this level in pixels, or ``None`` for continuous offsets.
    Returns:
        ``(B, 3)`` float64 normalized offsets.
    """
    lo, hi = child + child_size - size, child  # (B, 3): the offsets whose box contains the child
    if canvas is None:
        return torch.minimum((lo + u * (hi - lo)).clamp(min=0.0), 1.0 - size)
    lo_px, hi_px = torch.ceil(lo * canvas - 1e-9), torch.floor(hi * canvas + 1e-9)
    hi_px = torch.maximum(hi_px, lo_px)
    offset_px = lo_px + torch.minimum(torch.floor(u * (hi_px - lo_px + 1)), hi_px - lo_px)
    return torch.minimum(offset_px.clamp(min=0.0), torch.round(canvas * (1.0 - size))) / canvas


def sample_nested_boxes(
    batch_size: int,
    patch_size: Sequence[int],
    num_levels: int,
    level_growth: Sequence[int] = (2, 2, 2),
    generator: torch.Generator | None = None,
    integer_levels: str = "finest",
) -> torch.Tensor:
    r"""Random nested boxes, one chain per sample (paper §4.1): level 0 is the whole video and level ``l`` lies
    inside level ``l-1``; the finest level's offset is on its canvas' integer pixel grid (paper §4.5).

    Every voxel of every level's canvas lies in that level's box within a bounded factor of the centre's frequency
    (DESIGN §8: inference tiles every level up to its edges). Each axis is drawn bottom-up from its own uniforms:

    1. Finest level: uniform among the ``R + r - 1`` integer windows that overlap the canvas (canvas ``R``, patch
       ``r``), then shifted into it, so offsets 0 and ``R - r`` get ``r`` times an interior offset's mass. Each voxel
       is then covered by ``c`` of the ``R + r - 1`` windows, ``r <= c <= 2r - 1``: the edge as often as the
       interior, no voxel twice as often.
    2. Each coarser level: uniform among the offsets whose box contains the finer box as if the canvas had no edges
       (continuous, or on its own integer grid with ``integer_levels="all"``), then shifted into the canvas, which
       keeps the finer box inside. Away from the canvas edges a box's position inside its parent is uniform. On an
       axis that does not grow the box is the finer one's.

    Coverage per growing axis (normalized lengths, box size ``s_l`` at level ``l`` and ``s_f`` at the finest level,
    discretisation ignored): the unshifted finest offset is uniform on ``[-s_f, 1]``; level ``l``'s is that minus
    independent uniform shifts summing to ``W`` in ``[0, s_l - s_f]``, mean ``(s_l - s_f) / 2``. Its density is flat
    on ``[0, 1 - s_l]`` and the shift into the canvas puts ``A = s_f + E[W] = (s_l + s_f) / 2`` (in units of that
    density) on offset 0, so a point at distance ``y <= s_l`` from an edge is covered with weight ``A + y`` and a
    point farther from both edges with ``s_l``:

    * edge / interior ``= (1 + s_f / s_l) / 2 >= 1/2``, as for the 50%-overlap inference tiles (1 tile vs 2);
    * max / min ``= (3 s_l + s_f) / (s_l + s_f)``: ``2`` at the finest level, ``< 3`` above (on a canvas of two
      patches there is no interior and edge / centre ``> 1/3``).

    Without the shift, uniform offsets cover the edge ``r`` times less than the interior, and a finest level drawn
    inside a continuous parent never covers it; a clamped *centre* (unshifted offsets on ``[-s_f/2, 1 - s_f/2]``)
    would give the finest level max / min 3. The axes are independent, so 3-D coverage is the product of the
    per-axis ones and the factors multiply over the growing axes.

    Args:
        batch_size: number of chains.
        patch_size: ``(r_f, r_h, r_w)``, the patch at every level.
        num_levels: pyramid levels ``L``.
        level_growth: per axis 1 or 2.
        generator: every random draw uses it (``3 * batch_size`` float64 uniforms per level below level 0).
        integer_levels: ``"finest"`` (paper) or ``"all"`` (every level on its own integer grid, as in tiled inference).
    Returns:
        ``(batch_size, num_levels, 6)`` float32 boxes.
    """
    if integer_levels not in ("finest", "all"):
        raise ValueError(f"`integer_levels` must be 'finest' or 'all', got {integer_levels!r}.")
    sizes = torch.tensor(level_sizes(patch_size, num_levels, level_growth), dtype=torch.float64)  # (L, 3)
    r = torch.tensor(_as_size3(patch_size, "patch_size"), dtype=torch.float64)  # (3,)
    boxes = torch.zeros(batch_size, num_levels, 6, dtype=torch.float64)
    boxes[:, :, 3:] = r / sizes  # (L, 3) sizes broadcast over the batch
    if num_levels == 1:
        return boxes.float()
    u = torch.rand(batch_size, 3, generator=generator, dtype=torch.float64)
    boxes[:, -1, :3] = _finest_offsets(u, sizes[-1], r) / sizes[-1]
    for lvl in range(num_levels - 2, 0, -1):
        u = torch.rand(batch_size, 3, generator=generator, dtype=torch.float64)
        grid = sizes[lvl] if integer_levels == "all" else None
        boxes[:, lvl, :3] = _containing_offsets(boxes[:, lvl + 1, :3], r / sizes[lvl + 1], r / sizes[lvl], u, grid)
    return boxes.float()


def area_downsample(video: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Antialiased (box-filter) resize of ``video`` ``(B, C, F, H, W)`` to ``size`` (integer factors exactly)."""
    size = tuple(int(s) for s in size)
    if tuple(video.shape[-3:]) == size:
        return video
    factors = [i // o for i, o in zip(video.shape[-3:], size)]
    if all(f * o == i for f, o, i in zip(factors, size, video.shape[-3:])):
        return F.avg_pool3d(video, kernel_size=factors, stride=factors)
    return F.interpolate(video, size=size, mode="area")


def crop_resize(canvas: torch.Tensor, box: torch.Tensor, canvas_box: torch.Tensor | None, out_size: Sequence[int]):
    """Crop ``box`` (global coordinates) out of ``canvas`` ``(B, C, F, H, W)`` and resample it to ``out_size``.

    ``canvas_box`` is the global box the canvas covers (``None``: the whole video). Integer-aligned crops of the
    right size are exact slices; anything else is resampled trilinearly at the output voxel centres.
    Args:
        box: ``(B, 6)``.
    """
    out_size = tuple(int(s) for s in out_size)
    rel = box if canvas_box is None else relative_box(box, canvas_box)
    size = torch.tensor(canvas.shape[-3:], dtype=torch.float64)
    off_px = rel[:, :3].double() * size
    len_px = rel[:, 3:].double() * size
    aligned = torch.allclose(off_px, off_px.round(), atol=1e-4) and torch.allclose(
        len_px, torch.tensor(out_size, dtype=torch.float64).expand_as(len_px), atol=1e-4
    )
    if aligned:
        o = off_px.round().long()
        return torch.stack(
            [
                canvas[
                    i,
                    :,
                    o[i, 0] : o[i, 0] + out_size[0],
                    o[i, 1] : o[i, 1] + out_size[1],
                    o[i, 2] : o[i, 2] + out_size[2],
                ]
                for i in range(canvas.shape[0])
            ]
        )
    grid = box_sampling_grid(rel, out_size).to(canvas.dtype)
    return F.grid_sample(canvas, grid, mode="bilinear", padding_mode="border", align_corners=False)


def box_sampling_grid(rel_box: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
    """``grid_sample`` grid that reads the voxel centres of an ``out_size`` grid placed at ``rel_box`` (``(N, 6)``,
    coordinates of the sampled tensor) -> ``(N, f, h, w, 3)`` in ``(x=w, y=h, z=f)`` order, ``align_corners=False``."""
    axes = []
    for a in range(3):
        n = out_size[a]
        centres = (torch.arange(n, dtype=torch.float64, device=rel_box.device) + 0.5) / n  # (n,)
        u = rel_box[:, a : a + 1].double() + rel_box[:, 3 + a : 4 + a].double() * centres  # (N, n)
        axes.append(2.0 * u - 1.0)
    gf, gh, gw = axes
    N = rel_box.shape[0]
    f, h, w = out_size
    grid = torch.stack(
        [
            gw[:, None, None, :].expand(N, f, h, w),
            gh[:, None, :, None].expand(N, f, h, w),
            gf[:, :, None, None].expand(N, f, h, w),
        ],
        dim=-1,
    )
    return grid.float()


def extract_patches(video: torch.Tensor, boxes: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """Pixels of every level's patch (paper eq. 6): ``resize(crop(video, box), r)``.

    The video is first area-downsampled to the level's canvas (antialiasing), then cropped; integer boxes are slices.
    Args:
        video: ``(B, C, F, H, W)`` final-resolution video.
        boxes: ``(B, L, 6)`` boxes whose level-``l`` size is ``r / R_l``.
    Returns:
        ``(B, L, C, *patch_size)``.
    """
    r = _as_size3(patch_size, "patch_size")
    final = torch.tensor(video.shape[-3:], dtype=torch.float64)
    out = []
    for lvl in range(boxes.shape[1]):
        size = boxes[0, lvl, 3:].double()
        canvas_size = tuple(int(round(v)) for v in (torch.tensor(r, dtype=torch.float64) / size).tolist())
        if any(c > int(fi) for c, fi in zip(canvas_size, final.tolist())):
            raise ValueError(f"Level {lvl} canvas {canvas_size} is larger than the video {tuple(video.shape[-3:])}.")
        canvas = area_downsample(video, canvas_size)
        out.append(crop_resize(canvas, boxes[:, lvl], None, r))
    return torch.stack(out, dim=1)


# --------------------------------------------------------------------------------------------------------------
# Inference: tile plans and context lookup
# --------------------------------------------------------------------------------------------------------------


def axis_stride(patch: int, overlap: bool) -> int:
    """Window stride along one axis: ``patch // 2`` with 50% overlap, else ``patch``."""
    return max(1, patch // 2) if overlap else patch


def axis_offsets(canvas: int, patch: int, overlap: bool, shift: int = 0) -> list[int]:
    """Window offsets along one axis: every stride (``axis_stride``) from ``shift``, plus a first window at 0 when
    ``shift > 0`` and a last one snapped to the edge, so the windows cover ``[0, canvas)`` exactly."""
    if canvas < patch:
        raise ValueError(f"Canvas length {canvas} is smaller than the patch length {patch}.")
    stride = axis_stride(patch, overlap)
    if not 0 <= shift < stride:
        raise ValueError(f"A window shift must lie in [0, stride={stride}), got {shift}.")
    return sorted({0, *range(shift, canvas - patch + 1, stride), canvas - patch})


@dataclass(frozen=True)
class TilePlan:
    """Windows that tile one level's canvas. ``offsets`` are integer pixel offsets ``(n, 3)`` on that canvas."""

    canvas: Size3
    patch_size: Size3
    offsets: tuple[Size3, ...]

    def __len__(self) -> int:
        return len(self.offsets)

    def boxes(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(n, 6)`` global boxes of the tiles."""
        return torch.tensor([pixel_box(o, self.patch_size, self.canvas) for o in self.offsets], dtype=dtype)

    def slices(self, i: int) -> tuple[slice, slice, slice]:
        return tuple(slice(o, o + r) for o, r in zip(self.offsets[i], self.patch_size))  # type: ignore[return-value]


def tile_plan(
    canvas: Sequence[int],
    patch_size: Sequence[int],
    overlap_axes: Sequence[str] = AXES,
    shift: Sequence[int] = (0, 0, 0),
) -> TilePlan:
    """Tiles of a level (paper §4.4): window = patch size; 50% overlap along ``overlap_axes`` (subset of f, h, w);
    ``shift`` moves the window grid by that many voxels per axis (see `axis_offsets`)."""
    bad = [a for a in overlap_axes if a not in AXES]
    if bad:
        raise ValueError(f"Unknown overlap axis {bad}; use a subset of {list(AXES)} (e.g. overlap_axes=('h', 'w')).")
    c, r = _as_size3(canvas, "canvas"), _as_size3(patch_size, "patch_size")
    per_axis = [axis_offsets(ci, ri, a in overlap_axes, si) for ci, ri, a, si in zip(c, r, AXES, shift)]
    offsets = tuple((f, h, w) for f in per_axis[0] for h in per_axis[1] for w in per_axis[2])
    return TilePlan(canvas=c, patch_size=r, offsets=offsets)


def containing_tiles(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """For every fine box, the index of the coarse box that contains it, the most centred one when several do
    (DESIGN §6). If none contains it (possible only without overlap on a growing axis), the one whose centre is
    nearest is returned, and the relative box then leaves ``[0, 1]`` (context is read with border padding).

    Args:
        fine: ``(n, 6)``, coarse: ``(m, 6)``.
    Returns:
        ``(n,)`` long indices into ``coarse``.
    """
    inside = box_contains(coarse[None, :, :], fine[:, None, :])  # (n, m)
    c_f = fine[:, :3] + fine[:, 3:] / 2
    c_c = coarse[:, :3] + coarse[:, 3:] / 2
    dist = ((c_f[:, None, :] - c_c[None, :, :]) / coarse[None, :, 3:]).pow(2).sum(-1)  # (n, m), in coarse units
    dist = torch.where(inside, dist, dist + 1e6)
    return dist.argmin(dim=1)


def context_chain(tile_boxes: Sequence[torch.Tensor], level: int) -> list[torch.Tensor]:
    """Nested chain of cached tiles for every tile of ``level``: at level ``level-1`` the most centred container,
    at each coarser level the container of that tile, and so on. Every chain is a nested sequence of boxes, exactly
    as in training (where level ``l`` lies inside level ``l-1``).

    Args:
        tile_boxes: per level, ``(n_k, 6)`` tile boxes (at least ``level + 1`` levels).
    Returns:
        ``[idx_0, ..., idx_{level-1}]``, each ``(n_level,)`` indices into that level's tiles.
    """
    idx: list[torch.Tensor] = [torch.empty(0, dtype=torch.long)] * level
    current = tile_boxes[level]
    for k in range(level - 1, -1, -1):
        sel = containing_tiles(current, tile_boxes[k])
        idx[k] = sel
        current = tile_boxes[k][sel]
    return idx


def token_coordinates(boxes: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Normalized global ``(f, h, w)`` coordinates of every token centre of each box's token grid.

    Args:
        boxes: ``(N, 6)``; grid: token grid ``(f, h, w)`` of one patch.
    Returns:
        ``(N, 3, f, h, w)``.
    """
    axes = []
    for a in range(3):
        n = grid[a]
        centres = (torch.arange(n, dtype=boxes.dtype, device=boxes.device) + 0.5) / n
        axes.append(boxes[:, a : a + 1] + boxes[:, 3 + a : 4 + a] * centres)  # (N, n)
    N = boxes.shape[0]
    f, h, w = grid
    return torch.stack(
        [
            axes[0][:, :, None, None].expand(N, f, h, w),
            axes[1][:, None, :, None].expand(N, f, h, w),
            axes[2][:, None, None, :].expand(N, f, h, w),
        ],
        dim=1,
    )


def check_divisible(patch_size: Sequence[int], tokenizer_patch: Sequence[int]) -> Size3:
    """Token grid of one patch; ``ValueError`` when the tokenizer does not divide the patch."""
    grid = []
    for r, t, a in zip(patch_size, tokenizer_patch, AXES):
        if r % t:
            raise ValueError(f"Patch size {r} along '{a}' is not divisible by the tokenizer size {t}.")
        grid.append(r // t)
    return tuple(grid)  # type: ignore[return-value]
