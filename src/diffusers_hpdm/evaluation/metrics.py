"""Pixel-space metrics for generated videos (DESIGN.md §7).

All functions take channels-last numpy-compatible videos ``[F, H, W, 3]`` (or ``[F, H, W]``), uint8 or float in
[0, 1], and return plain floats / dicts so that results can be logged or written to JSON directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.synthetic import parse_prompt
from .detector import detect_attributes
from .fvd import compute_fvd, frechet_distance  # noqa: F401  (re-exported: the Fréchet metrics live in fvd.py)

SCORED_ATTRIBUTES = ("colour", "shape", "direction", "speed")


def _unit(video) -> np.ndarray:
    """uint8 or float [0, 1] -> float64 [F, H, W, C] (a trailing channel axis is added to [F, H, W])."""
    x = np.asarray(video)
    x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"Expected a video [F, H, W, C] or [F, H, W], got shape {x.shape}.")
    return x


def prompt_following_accuracy(videos, prompts: Sequence[str], palette=None) -> dict[str, float]:
    r"""Fraction of videos whose detected attributes match their prompt, per attribute.

    Args:
        videos: ``N`` videos ``[F, H, W, 3]`` (a list, or an array ``[N, F, H, W, 3]``).
        prompts (`list[str]`): the ``N`` prompts; each attribute is scored only on prompts that mention it
            (`parse_prompt`).

    Returns:
        `dict`: ``colour``, ``shape``, ``direction``, ``speed`` (for attributes some prompt mentions) and ``all``
        (fraction of videos where every mentioned attribute is right).
    """
    if len(videos) != len(prompts):
        raise ValueError(f"Got {len(videos)} videos for {len(prompts)} prompts.")
    correct = dict.fromkeys(SCORED_ATTRIBUTES, 0)
    total = dict.fromkeys(SCORED_ATTRIBUTES, 0)
    all_right = 0
    for video, prompt in zip(videos, prompts):
        expected = parse_prompt(prompt)
        detected = detect_attributes(video, palette=palette)
        ok = True
        for name in SCORED_ATTRIBUTES:
            if expected[name] is None:
                continue
            total[name] += 1
            hit = detected[name] == expected[name]
            correct[name] += int(hit)
            ok &= hit
        all_right += int(ok)
    result = {name: correct[name] / total[name] for name in SCORED_ATTRIBUTES if total[name]}
    result["all"] = all_right / max(len(prompts), 1)
    return result


def tile_edges(length: int, tile: int, stride: int) -> list[int]:
    """Interior tile borders of a 1D tiling (windows at ``0, stride, ...``, the last one snapped to the end).

    >>> tile_edges(64, 32, 16)  # windows [0, 32), [16, 48), [32, 64)
    [16, 32, 48]
    """
    if not 0 < tile <= length or stride < 1:
        raise ValueError(
            f"Need 0 < tile <= length and stride >= 1, got length={length}, tile={tile}, stride={stride}."
        )
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return sorted(({s for s in starts} | {s + tile for s in starts}) - {0, length})


def seam_score(video, boundaries: Sequence[Sequence[int]]) -> float:
    r"""Mean gradient energy across tile borders divided by the mean gradient energy everywhere else.

    A border at coordinate ``b`` along an axis lies between pixels ``b - 1`` and ``b``; its gradient samples are the
    differences across it. About 1 for a seamless image (gradient statistics do not depend on position), above 1
    when tile borders are visible.

    Args:
        video: ``[F, H, W, C]`` or ``[F, H, W]``, uint8 or float in [0, 1].
        boundaries: ``(h_borders, w_borders)``, e.g. ``(tile_edges(H, th, sh), tile_edges(W, tw, sw))``; borders at
            0 or at the size are ignored (they are the canvas edges).
    """
    x = _unit(video)
    if len(boundaries) != 2:
        raise ValueError("boundaries must be (h_borders, w_borders): one list of coordinates per spatial axis.")
    border_sum, border_count, total_sum, total_count = 0.0, 0, 0.0, 0
    for axis, borders in zip((1, 2), boundaries):
        energy = np.sum(np.diff(x, axis=axis) ** 2, axis=-1)  # sample j lies across border j + 1
        size = x.shape[axis]
        lines = sorted({int(b) - 1 for b in borders if 0 < int(b) < size})
        on_border = np.take(energy, lines, axis=axis)
        border_sum += float(on_border.sum())
        border_count += on_border.size
        total_sum += float(energy.sum())
        total_count += energy.size
    if border_count == 0:
        raise ValueError(f"No tile border lies inside the video of shape {x.shape[:3]}.")
    interior_count = total_count - border_count
    interior = (total_sum - border_sum) / max(interior_count, 1)
    border = border_sum / border_count
    if interior <= 0:
        return 1.0 if border <= 0 else float("inf")
    return border / interior


def border_energy_profile(video, period: int) -> np.ndarray:
    r"""Mean gradient energy across the borders at coordinate ``b`` (between pixels ``b - 1`` and ``b``), grouped by
    ``b mod period`` over both spatial axes and divided by the overall mean: ``(period,)``, about 1 everywhere for a
    video whose gradients do not depend on position.

    Tells apart what `seam_score` lumps together: with ``period`` = the patch size and 50% overlap, entry 0 and
    ``period / 2`` are tile borders, the multiples of the tokenizer patch are token borders, and a tiled sampler
    that adds seams shows as tile borders above the token borders that are not tile borders.
    """
    x = _unit(video)
    if period < 1:
        raise ValueError(f"period must be >= 1, got {period}.")
    sums, counts = np.zeros(period), np.zeros(period)
    for axis in (1, 2):
        energy = np.sum(np.diff(x, axis=axis) ** 2, axis=-1)  # sample j lies across border j + 1
        per_border = np.moveaxis(energy, axis, 0).reshape(energy.shape[axis], -1).sum(1)
        residue = np.arange(1, energy.shape[axis] + 1) % period
        np.add.at(sums, residue, per_border)
        np.add.at(counts, residue, energy.size // energy.shape[axis])
    profile = sums / np.maximum(counts, 1)
    mean = sums.sum() / max(counts.sum(), 1)
    return profile / mean if mean > 0 else np.ones(period)


def level_consistency(fine, coarse) -> dict[str, float]:
    r"""Area-downsample level l (`fine`) to level l-1's size and compare it with level l-1 (`coarse`).

    Every axis of `fine` ``[F, H, W, C]`` must be an integer multiple of `coarse`'s (the pyramid's growth).

    Returns:
        `dict`: ``mse`` and ``psnr`` (dB, data range 1; ``inf`` when identical).
    """
    fine, coarse = _unit(fine), _unit(coarse)
    if fine.shape[-1] != coarse.shape[-1]:
        raise ValueError(f"Channel mismatch: {fine.shape} vs {coarse.shape}.")
    factors = [f // c for f, c in zip(fine.shape[:3], coarse.shape[:3])]
    if any(c * k != f for f, c, k in zip(fine.shape[:3], coarse.shape[:3], factors)) or min(factors) < 1:
        raise ValueError(f"fine {fine.shape[:3]} must be an integer multiple of coarse {coarse.shape[:3]} per axis.")
    (f, h, w), (kf, kh, kw) = coarse.shape[:3], factors
    down = fine.reshape(f, kf, h, kh, w, kw, -1).mean(axis=(1, 3, 5))
    mse = float(np.mean((down - coarse) ** 2))
    return {"mse": mse, "psnr": float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))}


def high_frequency_energy(video) -> float:
    r"""Mean squared 4-neighbour spatial Laplacian, ``x[i-1,j] + x[i+1,j] + x[i,j-1] + x[i,j+1] - 4 x[i,j]``, over
    every frame, interior pixel and channel (the outermost ring of pixels has no full neighbourhood and is left out).

    Zero on a spatially linear ramp; independent per-pixel noise of variance ``s^2`` adds ``20 s^2`` in expectation.
    Grain in a generated video shows as this energy above the data's own (`grain_ratio`).
    """
    x = _unit(video)
    if x.shape[1] < 3 or x.shape[2] < 3:
        raise ValueError(f"Need frames of at least 3x3 pixels for a Laplacian, got shape {x.shape[:3]}.")
    c = x[:, 1:-1, 1:-1]
    lap = x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:] - 4 * c  # (F, H-2, W-2, C)
    return float(np.mean(lap**2))


def grain_ratio(videos, reference_videos) -> float:
    r"""Mean `high_frequency_energy` of ``videos`` divided by that of ``reference_videos`` (the real clips of the
    same prompts): 1.0 is the data's own texture, above 1 a grainier video, below 1 a smoother one."""
    generated = np.mean([high_frequency_energy(v) for v in videos])
    reference = np.mean([high_frequency_energy(v) for v in reference_videos])
    if reference <= 0:
        raise ValueError("The reference videos have no high-frequency energy (constant frames): no grain scale.")
    return float(generated / reference)


def temporal_flicker(video) -> float:
    r"""Mean absolute frame-to-frame change of the global brightness (mean over pixels and channels), in [0, 1].

    Motion of an object over a static background barely changes the global mean, so this isolates flicker: a video
    whose brightness alternates by ``a`` scores ``a``; a steady one scores ~0. Single frames score 0.
    """
    brightness = _unit(video).mean(axis=(1, 2, 3))  # (F,)
    if len(brightness) < 2:
        return 0.0
    return float(np.mean(np.abs(np.diff(brightness))))
