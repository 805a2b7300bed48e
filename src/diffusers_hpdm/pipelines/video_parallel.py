"""Several videos over several processes: each process samples whole videos (diffusers' distributed inference
guide, ``split_between_processes``), and every process gets them all back, in order.

Video ``i`` depends only on its own generator ``i`` (``generator`` as a list), so sampling a share of the videos
with their generators gives the videos one process gives. The conditioning is encoded once for all the videos and
each process takes its rows; the sub-call samples ``output_type="latent"`` and the gathered canvases are
post-processed as asked.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .parallel import PARALLEL_MODES, ProcessShare
from .pipeline_output import HPDMPipelineOutput

# Python's logger, not diffusers' get_logger: that one drops records of every process but rank 0, and each process
# says what it took.
logger = logging.getLogger(__name__)


def parallel_mode(parallel: str, share: ProcessShare, num_videos: int, generator) -> str:
    """``"tiles"``, ``"videos"`` or ``"none"`` for this call (``parallel``: ``"auto"`` or one of them)."""
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"`parallel` must be one of {PARALLEL_MODES}, got {parallel!r}.")
    if not share.is_parallel:
        return "none"
    per_video = generator is None or isinstance(generator, list)
    if parallel == "videos":
        if num_videos < share.world_size:
            raise ValueError(
                f'`parallel="videos"` needs at least one video per process: {num_videos} videos for '
                f'{share.world_size} processes; use `parallel="tiles"` or more prompts / `num_videos_per_prompt`.'
            )
        if not per_video and num_videos > 1:
            raise ValueError(
                '`parallel="videos"` needs one generator per video (a list): with a single generator every video '
                'depends on the whole batch\'s draws. Pass a list, or use `parallel="tiles"`.'
            )
        return "videos"
    if parallel == "auto":
        if num_videos >= share.world_size and per_video:
            return "videos"
        if num_videos >= share.world_size:
            logger.info("parallel='auto': a single generator for several videos, so the tiles are split instead.")
        return "tiles"
    return parallel


def _video_rows(video, batch: int, rows: torch.Tensor):
    """The given videos (``video=``) of the prompts of ``rows``, or the one video for all."""
    if isinstance(video, np.ndarray | torch.Tensor) and video.ndim == 5 and video.shape[0] == batch and batch > 1:
        return video[rows.numpy()] if isinstance(video, np.ndarray) else video[rows]
    if isinstance(video, list) and video and isinstance(video[0], list) and len(video) == batch and batch > 1:
        return [video[i] for i in rows.tolist()]
    return video


def split_videos(pipe, share: ProcessShare, batch: int, kw: dict):
    """Run the call ``kw`` (``__call__``'s arguments) on this process' share of the videos; gather them all."""
    nvpp, total = kw["num_videos_per_prompt"], batch * kw["num_videos_per_prompt"]
    first, stop = share.share(total)
    mine = torch.arange(first, stop)
    prompt_of = mine // nvpp  # the prompt of each of this process' videos
    guided = any(w != 1.0 for w in (kw["guidance_scale"] if isinstance(kw["guidance_scale"], list | tuple)
                                    else [kw["guidance_scale"]]))  # fmt: skip
    sub = dict(kw, num_videos_per_prompt=1, parallel="none", output_type="latent", return_dict=True)
    if pipe.transformer.config.text_embed_dim:
        embeds, mask, neg, neg_mask = pipe.encode_prompt(
            kw["prompt"], kw["negative_prompt"], guided, nvpp, kw["prompt_embeds"], kw["negative_prompt_embeds"],
            kw["prompt_attention_mask"], kw["negative_prompt_attention_mask"], kw["max_sequence_length"],
        )  # fmt: skip
        take = lambda t: None if t is None else t[mine.to(t.device)]  # noqa: E731
        sub.update(prompt=None, negative_prompt=None, prompt_embeds=take(embeds), prompt_attention_mask=take(mask),
                   negative_prompt_embeds=take(neg), negative_prompt_attention_mask=take(neg_mask))  # fmt: skip
    if kw["class_labels"] is not None:
        labels = torch.as_tensor([kw["class_labels"]] if isinstance(kw["class_labels"], int) else kw["class_labels"])
        sub["class_labels"] = labels.long()[prompt_of]
    if kw["video"] is not None:
        sub["video"] = _video_rows(kw["video"], batch, prompt_of)
    if kw["latents"] is not None:
        sub["latents"] = kw["latents"][mine.to(kw["latents"].device)]
    if isinstance(kw["generator"], list):
        sub["generator"] = kw["generator"][first:stop]
    logger.info(f"process {share.rank + 1}/{share.world_size}: videos {first}..{stop - 1} of {total}")
    out = pipe(**sub)
    pipe.parallel_share = share
    share.stats[-1].update(tiles=stop - first, level_tiles=total)  # level -1: whole videos
    frames = pipe._postprocess(share.gather_videos(out.frames, total), kw["output_type"])
    levels = None
    if kw["return_levels"]:
        levels = [pipe._postprocess(share.gather_videos(lv, total), kw["output_type"]) for lv in out.levels]
    if not kw["return_dict"]:
        return (frames, levels) if kw["return_levels"] else (frames,)
    return HPDMPipelineOutput(frames=frames, levels=levels)
