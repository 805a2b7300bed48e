"""Evaluate a text-to-video pipeline on the synthetic domain's held-out prompts (attribute combinations never seen
in training): prompt following at every level, seam score, cross-level consistency and flicker."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from ..data.synthetic import BACKGROUNDS, SPEEDS, caption, heldout_prompts, parse_prompt, render_video
from ..geometry import AXES, axis_stride
from .metrics import (
    border_energy_profile,
    grain_ratio,
    high_frequency_energy,
    level_consistency,
    prompt_following_accuracy,
    seam_score,
    temporal_flicker,
    tile_edges,
)


def evaluation_prompts(num_videos: int) -> list[str]:
    """``num_videos`` held-out prompts: every held-out (colour, shape, direction) triple, cycling speeds and
    backgrounds so that all of them appear."""
    triples = [(p["colour"], p["shape"], p["direction"]) for p in heldout_prompts()]
    triples = list(dict.fromkeys(triples))
    styles = list(itertools.product(SPEEDS, BACKGROUNDS))
    prompts = []
    for i in range(num_videos):
        colour, shape, direction = triples[i % len(triples)]
        speed, background = styles[(i // len(triples)) % len(styles)]
        prompts.append(
            caption(dict(colour=colour, shape=shape, direction=direction, speed=speed, background=background))
        )
    return prompts


def real_clips(prompts: list[str], size: tuple[int, int, int], seed: int = 0) -> np.ndarray | None:
    """The synthetic domain's own clip of every prompt, uint8 ``(N, F, H, W, 3)`` (clip ``i`` rendered with seed
    ``seed + i``), or ``None`` when a prompt does not name all five attributes."""
    attrs = [parse_prompt(p) for p in prompts]
    if any(v is None for a in attrs for v in a.values()):
        return None
    return np.stack([render_video(a, *size, np.random.default_rng(seed + i)) for i, a in enumerate(attrs)])


def evaluate_pipeline(
    pipe,
    num_videos: int = 64,
    num_inference_steps: int = 32,
    guidance_scale: float | list[float] = 3.0,
    seed: int = 0,
    batch_size: int = 8,
    overlap_axes: tuple[str, ...] = AXES,
    blending: str = "smooth",
    prompts: list[str] | None = None,
    video: torch.Tensor | None = None,
    **pipe_kwargs,
) -> dict:
    """Generate ``num_videos`` held-out videos (video ``i`` from seed ``seed + i``) and score them.

    Returns:
        ``{"summary": {...}, "videos": [{prompt, seed}...]}``. The summary holds prompt-following accuracy per
        attribute at every level, the finest level's seam score (gradient energy on tile borders / elsewhere, at the
        tile borders of the finest level's plan; ``seam_score_per_level``: every level at its own plan's borders,
        ``None`` for a level sampled as one tile) and where that energy sits (``border_energy_profile``), PSNR of
        each level against the next finer one downsampled, the mean temporal flicker, and ``grain``: the final videos'
        Laplacian energy over that of the real clips of the same prompts (1.0 = the data's own texture); under ``real_clips`` the
        same prompt following, seam score and profile of the domain's own clips of the same prompts (the
        detector's ceiling and the seam metrics' floor: the clips have sharp edges wherever the shapes are).
        ``pipe_kwargs`` go to the pipeline (e.g. ``context_sigma``, ``level_steps``). ``video``: one clip per
        prompt, ``(N, C, F, H, W)`` at a coarse level's size, passed as the pipeline's ``video=`` batch by batch
        (only the finer levels are sampled; its level and the coarser ones are scored as given).
    """
    for name, value in (("num_videos", num_videos), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    if prompts is not None and (not prompts or not all(isinstance(p, str) for p in prompts)):
        raise ValueError(f"`prompts` must be a non-empty list of strings, got {prompts!r}.")
    prompts = prompts or evaluation_prompts(num_videos)
    levels: list[list[np.ndarray]] | None = None
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        out = pipe(
            chunk,
            video=None if video is None else video[start : start + len(chunk)],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=gens,
            overlap_axes=overlap_axes,
            blending=blending,
            return_levels=True,
            output_type="np",
            **pipe_kwargs,
        )
        if levels is None:
            levels = [[] for _ in out.levels]
        for lvl, videos in enumerate(out.levels):
            levels[lvl].extend(list(videos))
    cfg = pipe.transformer.config
    final = levels[-1]
    F, H, W = final[0].shape[:3]
    _, ph, pw = cfg.patch_size

    def level_seams(videos) -> float | None:  # at the tile borders of that level's own plan; None: one tile
        _, h, w = videos[0].shape[:3]
        if h <= ph and w <= pw:
            return None
        borders = (
            tile_edges(h, ph, axis_stride(ph, "h" in overlap_axes)),
            tile_edges(w, pw, axis_stride(pw, "w" in overlap_axes)),
        )
        return float(np.mean([seam_score(v, borders) for v in videos]))

    real = real_clips(prompts, (F, H, W), seed)
    reference = None
    if real is not None:
        reference = {
            "accuracy": prompt_following_accuracy(list(real), prompts),
            "seam_score": level_seams(real),
            "border_energy_profile": np.mean([border_energy_profile(v, ph) for v in real], 0).round(3).tolist(),
            "high_frequency_energy": float(np.mean([high_frequency_energy(v) for v in real])),
        }
    summary = {
        "num_videos": len(prompts),
        "accuracy": prompt_following_accuracy(final, prompts),
        "accuracy_per_level": [prompt_following_accuracy(videos, prompts) for videos in levels],
        "seam_score": level_seams(final),
        "seam_score_per_level": [level_seams(videos) for videos in levels],
        # where the border energy sits: finest level by coordinate mod the patch size (tile borders at 0 and, with
        # overlap, ph / 2; token borders at multiples of the tokenizer patch), and level 0 (one tile, no tiling
        # seams) by coordinate mod the tokenizer patch
        "border_energy_profile": np.mean([border_energy_profile(v, ph) for v in final], 0).round(3).tolist(),
        "level0_token_border_energy": float(
            np.mean([border_energy_profile(v, cfg.tokenizer_patch[1])[0] for v in levels[0]])
        ),
        "level_psnr": [
            float(np.mean([level_consistency(f, c)["psnr"] for f, c in zip(levels[k + 1], levels[k])]))
            for k in range(len(levels) - 1)
        ],
        "temporal_flicker": float(np.mean([temporal_flicker(v) for v in final])),
        # high-frequency (Laplacian) energy of the final videos relative to the real clips of the same prompts
        "grain": None if real is None else grain_ratio(final, real),
        "real_clips": reference,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "overlap_axes": list(overlap_axes),
        "blending": blending,
        **{k: v for k, v in pipe_kwargs.items() if isinstance(v, int | float | str | list)},
    }
    return {"summary": summary, "videos": [{"prompt": p, "seed": seed + i} for i, p in enumerate(prompts)]}
