"""Validation videos to Accelerate's trackers (``--report_to``), as diffusers' training scripts log their samples.

* **tensorboard**: an animated GIF per video in the Images tab, the summary ``SummaryWriter.add_video`` writes,
  encoded with Pillow (``add_video`` itself needs moviepy, which the package does not depend on).
* **wandb**: ``wandb.Video`` per video, with its caption.
* any other tracker with ``log_images`` (e.g. a custom ``GeneralTracker``): each video as a contact sheet (its frames
  side by side, one image).
"""

from __future__ import annotations

import io
import logging

import numpy as np

logger = logging.getLogger(__name__)


def encode_gif(frames: np.ndarray, fps: int = 8) -> bytes:
    """uint8 ``[T, H, W, 3]`` -> an animated GIF (looping). Lossless for frames of at most 256 colours."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(
        buf, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0, optimize=False
    )
    return buf.getvalue()


def contact_sheet(frames: np.ndarray) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` -> ``[H, T * W, 3]``: the frames side by side."""
    return np.concatenate(list(frames), axis=1)


def _tensorboard(tracker, tag: str, frames: np.ndarray, step: int, fps: int) -> None:
    from tensorboard.compat.proto.summary_pb2 import Summary

    t, h, w, c = frames.shape
    image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=encode_gif(frames, fps))
    # SummaryWriter.add_video writes exactly this summary (a GIF in an Image value) through the same file writer.
    tracker.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
    tracker.writer.flush()


def log_videos(trackers, videos: list[np.ndarray], captions: list[str], step: int, fps: int = 8) -> list[str]:
    """Log validation ``videos`` (uint8 ``[T, H, W, 3]`` each) to every tracker that can show them.

    Args:
        trackers: ``accelerator.trackers`` (call on the main process, after ``init_trackers``).
        captions: one per video (the prompt or class), shown by trackers that take captions.
        step: the global step.
    Returns:
        The names of the trackers that received the videos.
    """
    if len(videos) != len(captions):
        raise ValueError(f"Pass one caption per video: got {len(videos)} videos and {len(captions)} captions.")
    videos = [np.asarray(v) for v in videos]
    for v in videos:
        if v.dtype != np.uint8 or v.ndim != 4 or v.shape[-1] != 3:
            raise ValueError(f"Videos must be uint8 [T, H, W, 3], got {v.dtype} {v.shape}.")
    logged = []
    for tracker in trackers:
        if tracker.name == "tensorboard":
            for i, v in enumerate(videos):
                _tensorboard(tracker, f"validation/{i:02d}", v, step, fps)
        elif tracker.name == "wandb":
            import wandb

            clips = [wandb.Video(v.transpose(0, 3, 1, 2), fps=fps, caption=c) for v, c in zip(videos, captions)]
            tracker.log({"validation": clips}, step=step)
        elif hasattr(tracker, "log_images"):
            tracker.log_images({f"validation/{i:02d}": contact_sheet(v) for i, v in enumerate(videos)}, step=step)
        else:
            logger.info(f"Tracker {tracker.name!r} cannot show videos or images; validation videos not logged to it.")
            continue
        logged.append(tracker.name)
    return logged
