"""Patch-pyramid geometry: pure functions of shapes and boxes (DESIGN §2, paper §4.1, eq. 6 and 8).

Conventions
-----------
* Sizes are ``(F, H, W)`` tuples of ints. The patch size ``r`` is the same at every level.
* Level ``l`` has canvas ``R_l = r * growth**l`` (per axis, growth 1 or 2). The final video is level ``L-1``.
* A **box** is 6 floats ``(delta_f, delta_h, delta_w, s_f, s_h, s_w)``: offset and size in normalized global
  coordinates of the final video, both in ``[0, 1]``. Level ``l`` boxes have size ``s = r / R_l``.
* Nothing here owns activations or modules; tensors appear only as batches of boxes or as videos to crop.
"""

from .boxes import (
    AXES,
    FULL_BOX,
    Size3,
    box_contains,
    check_divisible,
    level_of_size,
    level_sizes,
    pixel_box,
    relative_box,
    token_coordinates,
)
from .patches import area_downsample, box_sampling_grid, crop_resize, extract_patches, sample_nested_boxes
from .tiles import TilePlan, axis_offsets, axis_stride, containing_tiles, context_chain, tile_plan

__all__ = [
    "AXES",
    "FULL_BOX",
    "Size3",
    "TilePlan",
    "area_downsample",
    "axis_offsets",
    "axis_stride",
    "box_contains",
    "box_sampling_grid",
    "check_divisible",
    "containing_tiles",
    "context_chain",
    "crop_resize",
    "extract_patches",
    "level_of_size",
    "level_sizes",
    "pixel_box",
    "relative_box",
    "sample_nested_boxes",
    "tile_plan",
    "token_coordinates",
]
