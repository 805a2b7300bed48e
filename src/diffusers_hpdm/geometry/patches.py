"""Training geometry: random nested patch chains (paper §4.1) and the pixels of a box (resampling, extraction)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .boxes import _as_size3, level_sizes, relative_box


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
