"""Analytic attribute detector for the synthetic shapes domain (DESIGN.md §7).

Reads colour, shape, motion direction and speed back from pixels, with no learned weights:

1. background = per-channel median of the border pixels over all frames;
2. colour = the palette entry whose direction from the background best explains the mean offset of the most
   salient pixels (a blurred edge pixel is ``bg + a * (fg - bg)``, so the *direction* of the offset survives blur,
   yuv420p chroma subsampling and downsampling);
3. soft mask = projection of each pixel's offset on ``fg - bg``, remapped symmetrically around 0.5 so that texture
   noise is zeroed while edge positions (and therefore areas) are kept;
4. direction and speed = least-squares slope of the mask centroid over time, as a fraction of the frame size;
5. shape = the best fit of the mask's cross-motion profile (chord length per row, or per column for vertical motion)
   by each shape's analytic profile at the same area and centroid. Summing along the motion axis makes the profile
   immune to the motion blur that temporal area-downsampling adds; the fit allows a little spatial blur.
"""

from __future__ import annotations

import numpy as np

from ..data.synthetic import COLOURS, SHAPES, SPEEDS

_BLUR_SIGMAS = (0.0, 0.5, 0.8, 1.2)  # pixels: the profile fit allows for codec and resampling blur
_MIN_CONTRAST = 25.0  # out of 255: below this no foreground is found
_MIN_MOTION = 0.02  # fraction of the frame: below this the direction is undefined


def to_unit_float(video) -> np.ndarray:
    """uint8 (0..255) or float (0..1) array-like ``[F, H, W, 3]`` -> float64 in [0, 1]."""
    x = np.asarray(video)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"Expected a video [F, H, W, 3] (channels last), got shape {x.shape}.")
    if x.dtype == np.uint8:
        return x.astype(np.float64) / 255.0
    return x.astype(np.float64)


def speed_threshold(num_frames: int) -> float:
    """Clip displacement (frame fraction) separating "slowly" from "quickly" for a video of `num_frames` frames.

    Frames that were area-downsampled in time are averages of ``k`` rendered frames, which shrinks the centroid's
    span from ``d`` to ``d * (F - 1) k / (F k - 1)``, at least ``d * (F - 1) / F``. The threshold is the geometric
    mean of the largest "slowly" span and the smallest possible "quickly" span.
    """
    slow, quick = SPEEDS["slowly"], SPEEDS["quickly"]
    return float(np.sqrt(slow * quick * max(num_frames - 1, 1) / max(num_frames, 2)))


def _palette(palette: dict[str, tuple[int, int, int]] | None) -> tuple[list[str], np.ndarray]:
    palette = COLOURS if palette is None else palette
    return list(palette), np.asarray(list(palette.values()), dtype=np.float64)


def _classify_colour(offset: np.ndarray, directions: np.ndarray) -> tuple[int, float]:
    """Palette index whose background->colour direction best explains `offset`, and a confidence in [0, 1]."""
    alpha = np.clip(directions @ offset / np.sum(directions**2, axis=1), 0.0, None)
    residual = np.linalg.norm(offset[None] - alpha[:, None] * directions, axis=1) / max(np.linalg.norm(offset), 1e-9)
    order = np.argsort(residual)
    best, second = residual[order[0]], residual[order[1]] if len(order) > 1 else 1.0
    return int(order[0]), float(np.clip(1.0 - best / max(second, 1e-9), 0.0, 1.0))


def _dilate(mask: np.ndarray) -> np.ndarray:
    """4-neighbour binary dilation of ``[F, H, W]`` masks by one pixel."""
    out = mask.copy()
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    return out


def model_profile(shape: str, length: int, area: float, centre: float, over_rows: bool, sigma: float = 0.0):
    r"""Chord-length profile of a synthetic shape with the given area and profile centroid, integrated over pixels.

    Summing a shape's mask along the motion axis gives its chord length at every cross-motion coordinate; motion
    blur along that axis leaves it unchanged. `over_rows` is True for the profile over y (horizontal motion), where
    the apex-up triangle gives a ramp; over x it gives a tent. `sigma` (pixels) adds a Gaussian blur.
    """
    ss = 16
    z = (np.arange(length * ss) + 0.5) / ss
    if shape == "square":
        r = np.sqrt(area / 4)
        p = np.where(np.abs(z - centre) <= r, 2 * r, 0.0)
    elif shape == "circle":
        r = np.sqrt(area / np.pi)
        p = 2 * np.sqrt(np.clip(r * r - (z - centre) ** 2, 0.0, None))
    elif over_rows:  # chord = depth below the apex; the centroid lies 2/3 of the height below it
        r = np.sqrt(area / 2)
        depth = z - (centre - 4 * r / 3)
        p = np.where((depth >= 0) & (depth <= 2 * r), depth, 0.0)
    else:
        r = np.sqrt(area / 2)
        p = np.clip(2 * r - 2 * np.abs(z - centre), 0.0, None)
    p = p.reshape(length, ss).mean(axis=1)
    if sigma > 0:
        k = np.exp(-0.5 * (np.arange(-3, 4) / sigma) ** 2)
        p = np.convolve(p, k / k.sum(), mode="same")
    return p


def _profile_errors(profile: np.ndarray, over_rows: bool) -> dict[str, float]:
    """Relative L2 error of the best-blurred model profile of each shape, at the observed area and centroid."""
    area = float(profile.sum())
    centre = float(profile @ (np.arange(len(profile)) + 0.5)) / max(area, 1e-9)
    norm = max(float(np.sum(profile**2)), 1e-12)
    return {
        shape: min(
            float(np.sum((profile - model_profile(shape, len(profile), area, centre, over_rows, s)) ** 2)) / norm
            for s in _BLUR_SIGMAS
        )
        for shape in SHAPES
    }


def detect_attributes(video, palette: dict[str, tuple[int, int, int]] | None = None) -> dict:
    r"""Detect the attributes of a synthetic-shapes video.

    Args:
        video (array-like): ``[F, H, W, 3]`` uint8 or float in [0, 1] (a single ``[H, W, 3]`` frame also works;
            it has no direction).
        palette (`dict`, *optional*): colour name -> RGB (0..255); defaults to the generator's `COLOURS`.

    Returns:
        `dict` with ``colour``, ``shape``, ``direction``, ``speed`` (``None`` when undefined, e.g. no foreground or
        no motion), ``confidence`` (the smallest per-attribute confidence, in [0, 1]), ``confidences`` (per
        attribute), ``shape_errors`` (relative profile-fit error per shape), ``displacement`` (``(dy, dx)`` over the clip, in frame fractions) and
        ``background`` (RGB in [0, 1]).
    """
    x = to_unit_float(video) * 255.0
    num_frames, height, width, _ = x.shape
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1).reshape(-1, 3)
    background = np.median(border, axis=0)
    offset = x - background  # (F, H, W, 3)
    magnitude = np.linalg.norm(offset, axis=-1)
    peak = np.percentile(magnitude, 99.5)
    result = dict(colour=None, shape=None, direction=None, speed=None, confidence=0.0, confidences={})
    result.update(shape_errors=None, displacement=None, background=background / 255.0)
    if peak < _MIN_CONTRAST:
        return result

    # 2. colour, from the most salient pixels
    names, rgb = _palette(palette)
    directions = rgb - background
    index, colour_conf = _classify_colour(offset[magnitude >= 0.6 * peak].mean(axis=0), directions)

    # 3. soft mask along the detected colour's direction
    u = directions[index]
    proj = offset @ u / np.dot(u, u)  # (F, H, W)
    mask = np.clip((proj - 0.25) / 0.5, 0.0, 1.0)
    area = mask.sum(axis=(1, 2))  # (F,)
    valid = area > 0.25 * area.max()
    if not valid.any():  # salient pixels but no region along the colour's direction: no shape, no motion
        result.update(colour=names[index], confidences={"colour": colour_conf})
        return result
    ys, xs = np.arange(height) + 0.5, np.arange(width) + 0.5
    cy = (mask.sum(axis=2) @ ys) / np.maximum(area, 1e-9)
    cx = (mask.sum(axis=1) @ xs) / np.maximum(area, 1e-9)

    # 4. motion: least-squares slope of the centroid, times the clip length
    t = np.flatnonzero(valid).astype(np.float64)
    dy = dx = 0.0
    if len(t) >= 2:
        tc = t - t.mean()
        span = (num_frames - 1) / np.sum(tc**2)
        dy = float(np.sum(tc * cy[valid]) * span / height)
        dx = float(np.sum(tc * cx[valid]) * span / width)
    moving = max(abs(dy), abs(dx)) >= _MIN_MOTION
    horizontal = abs(dx) >= abs(dy)
    confidences = {"colour": colour_conf}
    if moving:
        result["direction"] = ("right" if dx > 0 else "left") if horizontal else ("down" if dy > 0 else "up")
        confidences["direction"] = float(np.clip(1.0 - min(abs(dx), abs(dy)) / max(abs(dx), abs(dy)), 0.0, 1.0))
        distance = max(abs(dx), abs(dy))
        threshold = speed_threshold(num_frames)
        result["speed"] = "quickly" if distance >= threshold else "slowly"
        gap = abs(np.log(distance / threshold)) / np.log(SPEEDS["quickly"] / threshold)
        confidences["speed"] = float(np.clip(gap, 0.0, 1.0))

    # 5. shape: fit the cross-motion profile (invariant to motion blur), averaged over frames
    support = _dilate(mask > 0)
    coverage = np.clip(proj, 0.0, 1.0) * support
    rows_profile = horizontal or not moving  # profile over y (sum along x) unless the motion is vertical
    profile = coverage.sum(axis=2 if rows_profile else 1)[valid].mean(axis=0)
    errors = _profile_errors(profile, rows_profile)
    ranked = sorted(errors, key=errors.get)
    result["shape"] = ranked[0]
    confidences["shape"] = float(np.clip(1.0 - errors[ranked[0]] / max(errors[ranked[1]], 1e-12), 0.0, 1.0))

    result.update(colour=names[index], shape_errors=errors, displacement=(dy, dx), confidences=confidences)
    result["confidence"] = min(confidences.values())
    return result
