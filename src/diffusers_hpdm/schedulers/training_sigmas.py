"""The training noise distribution of `HPDMScheduler.sample_training_sigmas` (DESIGN §5, paper §4.5).

One log-normal per level, shifted by `l * ln(shift)` at level `l` (the paper), and two optional components that are
not in the paper. Each draws its random numbers only when it is on, so turning one on leaves the other draws of a
seeded run unchanged.

- **High noise**: a share of the rows at `ln(sigma) ~ N(3, 0.1)` (sigma ~ 20), where the loss is the fit of the
  prompt's conditional mean (the layout) and the single log-normal puts few samples.
- **Clean context**: a share of the rows whose levels below a cut level are drawn almost clean, as the pipeline's
  context pass sees finished levels (re-noised to `context_sigma`); the cut level and the finer ones keep their draw.
  Independent draws rarely give a level clean coarser levels (level 0 below sigma 0.2: 37% of the rows with EDM's
  log-normal, 19% with `p_mean=-0.4, p_std=1.4`, none in a high-noise row; levels 0 and 1 both clean: fewer still).
"""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor

Generators = torch.Generator | list[torch.Generator] | None


def _uniform(shape, generator: Generators, device, dtype) -> torch.Tensor:
    """Uniform draws as the normal CDF of normal ones: ``randn_tensor`` honours one generator per row."""
    return torch.special.ndtr(randn_tensor(shape, generator=generator, device=device, dtype=dtype))


def draw_training_sigmas(
    batch_size: int,
    num_levels: int,
    log_shift: float,
    log_normal: tuple[float, float],
    high_noise: tuple[float, float, float] = (0.0, 3.0, 0.1),
    clean_context: tuple[float, float, float] = (0.0, -2.3, 0.5),
    generator: Generators = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(batch_size, num_levels)`` sigmas with ``ln(sigma_l) = mean_l + l * log_shift + std_l * z_l``.

    Args:
        log_normal: ``(p_mean, p_std)`` of every level by default.
        high_noise: ``(fraction, p_mean, p_std)``: that share of the rows takes these for every level.
        clean_context: ``(fraction, p_mean, p_std)``: that share of the rows gets a cut level ``c`` uniform in
            ``1 .. num_levels - 1`` and takes these for its levels ``l < c`` (nothing with one level).
    """
    if batch_size < 1 or num_levels < 1:
        raise ValueError(f"batch_size and num_levels must be >= 1, got {batch_size} and {num_levels}.")
    z = randn_tensor((batch_size, num_levels), generator=generator, device=device, dtype=dtype)
    levels = torch.arange(num_levels, device=z.device, dtype=dtype)
    mean = torch.full((batch_size, 1), float(log_normal[0]), device=z.device, dtype=dtype)
    std = torch.full_like(mean, float(log_normal[1]))
    fraction, high_mean, high_std = high_noise
    if fraction > 0:
        high = _uniform((batch_size, 1), generator, device, dtype) < fraction
        mean = torch.where(high, float(high_mean), mean)
        std = torch.where(high, float(high_std), std)
    mean, std = mean.expand(-1, num_levels), std.expand(-1, num_levels)
    fraction, clean_mean, clean_std = clean_context
    if fraction > 0 and num_levels > 1:
        p = _uniform((batch_size, 2), generator, device, dtype)  # clean or not, and the cut level
        cut = (1 + (p[:, 1:] * (num_levels - 1)).long()).clamp(max=num_levels - 1)
        clean = levels < torch.where(p[:, :1] < fraction, cut, 0)  # (B, L); cut 0: no clean level
        mean = torch.where(clean, float(clean_mean), mean)
        std = torch.where(clean, float(clean_std), std)
    return (mean + levels * log_shift + std * z).exp()
