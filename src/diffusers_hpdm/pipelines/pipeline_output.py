from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput


@dataclass
class HPDMPipelineOutput(BaseOutput):
    """
    Args:
        frames: the final videos: ``np.ndarray`` ``(B, F, H, W, C)`` in ``[0, 1]`` ("np"), ``torch.Tensor``
            ``(B, F, C, H, W)`` ("pt"), or a list of lists of ``PIL.Image`` ("pil").
        levels: with ``return_levels=True``, every level's videos coarse to fine, in the same format.
    """

    frames: np.ndarray | torch.Tensor | list[list[PIL.Image.Image]]
    levels: list | None = None
