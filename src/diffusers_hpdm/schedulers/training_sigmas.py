"""The training noise distribution of `HPDMScheduler.sample_training_sigmas` (DESIGN §5, paper §4.5).

One log-normal per level, shifted by `l * ln(shift)` at level `l` (the paper). Earlier versions added a high-noise
share and a clean-context share (not in the paper); they showed no effect (docs/probes.md, probe 6; docs/direction.md)
and were removed.
"""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor

Generators = torch.Generator | list[torch.Generator] | None


def draw_training_sigmas(
    batch_size: int,
    num_levels: int,
    log_shift: float,
    log_normal: tuple[float, float],
    generator: Generators = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(batch_size, num_levels)`` sigmas with ``ln(sigma_l) = p_mean + l * log_shift + p_std * z_l``.

    Args:
        log_normal: ``(p_mean, p_std)`` of every level.
        generator: one generator, or one per row (``randn_tensor`` honours it).
    """
    if batch_size < 1 or num_levels < 1:
        raise ValueError(f"batch_size and num_levels must be >= 1, got {batch_size} and {num_levels}.")
    z = randn_tensor((batch_size, num_levels), generator=generator, device=device, dtype=dtype)
    levels = torch.arange(num_levels, device=z.device, dtype=dtype)
    mean = torch.full((batch_size, 1), float(log_normal[0]), device=z.device, dtype=dtype)
    std = torch.full_like(mean, float(log_normal[1]))
    mean, std = mean.expand(-1, num_levels), std.expand(-1, num_levels)
    return (mean + levels * log_shift + std * z).exp()
