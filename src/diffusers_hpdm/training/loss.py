"""The HPDM training loss (paper §4.1, eq. 4; DESIGN §5).

For every video: one random chain of nested boxes (level 0 = the whole video), the pixels of each level's patch,
an independent noise level per level (log-normal, shifted by ``l * log(shift)`` at level ``l``, paper §4.5),
EDM preconditioning, **one** joint forward over all levels, and an MSE on ``F`` against ``v`` per level, summed over
levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..geometry import extract_patches, sample_nested_boxes

Generators = torch.Generator | list[torch.Generator] | None


@dataclass
class HPDMLossOutput:
    """
    Args:
        loss: scalar, the sum over levels of each level's mean squared error.
        level_losses: ``(L,)`` per-level mean squared errors (detached), for logging.
        sigmas: ``(B, L)`` the noise levels drawn.
        boxes: ``(B, L, 6)`` the patch boxes drawn.
        drop_conditioning: ``(B,)`` which samples used the null conditioning.
    """

    loss: torch.Tensor
    level_losses: torch.Tensor
    sigmas: torch.Tensor
    boxes: torch.Tensor
    drop_conditioning: torch.Tensor


def _per_sample(generator: Generators, batch_size: int) -> list[torch.Generator | None]:
    if isinstance(generator, list):
        if len(generator) != batch_size:
            raise ValueError(f"Got {len(generator)} generators for a batch of {batch_size}; pass one per sample.")
        return generator
    return [generator] * batch_size


def sample_nested_boxes_per_sample(
    generator: Generators, batch_size: int, patch_size, num_levels: int, level_growth
) -> torch.Tensor:
    """``(B, L, 6)`` boxes; with a list of generators, sample ``i``'s chain comes from generator ``i`` alone."""
    if not isinstance(generator, list):
        return sample_nested_boxes(batch_size, patch_size, num_levels, level_growth, generator=generator)
    gens = _per_sample(generator, batch_size)
    return torch.cat([sample_nested_boxes(1, patch_size, num_levels, level_growth, generator=g) for g in gens])


def hpdm_loss(
    model: torch.nn.Module,
    scheduler,
    videos: torch.Tensor,
    text_embeds: torch.Tensor | None,
    text_mask: torch.Tensor | None,
    class_labels: torch.Tensor | None,
    generator: Generators,
    num_levels: int | None = None,
    cond_drop_prob: float = 0.1,
    patch_size: tuple[int, int, int] | None = None,
    level_growth: tuple[int, int, int] | None = None,
    keep_condition_above_sigma: float | None = None,
) -> HPDMLossOutput:
    r"""Paper eq. 4 for a batch of videos.

    Args:
        model: the ``HPDMTransformer`` (possibly wrapped by DDP/FSDP; ``patch_size`` and ``level_growth`` default to
            its config).
        scheduler: an ``HPDMScheduler`` (sigma distribution, preconditioning and target).
        videos: ``(B, C, F, H, W)`` in ``[-1, 1]``, at least the size of the finest level's canvas.
        text_embeds, text_mask: ``(B, S, E)`` and ``(B, S)`` frozen text-encoder outputs, or ``None``.
        class_labels: ``(B,)`` for class-conditional models, or ``None``.
        generator: one ``torch.Generator``, or a list with one per sample (then sample ``i``'s boxes, sigmas, noise
            and dropout depend only on generator ``i``, so the loss of a batch split over processes matches the
            loss of the whole batch). Draws happen on the CPU.
        num_levels: pyramid levels to train (default: the model's).
        cond_drop_prob: probability of replacing a sample's conditioning by the learned null one (CFG training).
        keep_condition_above_sigma: samples whose level-0 sigma is above this keep their conditioning (the dropout
            is still drawn, so the random stream does not change). ``None``: dropout at every sigma.

    Returns:
        [`HPDMLossOutput`].
    """
    config = getattr(model, "module", model).config
    num_levels = num_levels or config.num_levels
    patch_size = tuple(patch_size or config.patch_size)
    level_growth = tuple(level_growth or config.level_growth)
    B, device, dtype = videos.shape[0], videos.device, videos.dtype
    gens = _per_sample(generator, B)

    # 1. Nested patches (paper §4.1) and their pixels
    boxes = sample_nested_boxes_per_sample(generator, B, patch_size, num_levels, level_growth)  # (B, L, 6)
    x0 = extract_patches(videos, boxes.to(device), patch_size)  # (B, L, C, f, h, w)

    # 2. One sigma per level, shifted per level; noise; conditioning dropout
    sigmas = scheduler.sample_training_sigmas(B, num_levels, generator=generator, device="cpu")  # (B, L)
    noise = randn_tensor(tuple(x0.shape), generator=generator, device=torch.device("cpu"), dtype=torch.float32)
    drop = torch.cat([torch.rand(1, generator=g) for g in gens]) < cond_drop_prob  # (B,)
    if keep_condition_above_sigma is not None:
        drop &= sigmas[:, 0] <= keep_condition_above_sigma
    sigmas, noise, drop = sigmas.to(device), noise.to(device, dtype), drop.to(device)

    # 3. EDM preconditioning, one joint forward over all levels
    x_noisy = scheduler.add_noise_at_sigmas(x0, noise, sigmas)
    _, _, c_in, c_noise = scheduler.precondition(sigmas)
    model_input = scheduler.broadcast_sigma(c_in, x_noisy) * x_noisy
    out = model(
        model_input,
        timestep=c_noise,
        boxes=boxes.to(device),
        encoder_hidden_states=text_embeds,
        encoder_attention_mask=text_mask,
        class_labels=class_labels,
        drop_conditioning=drop,
    ).sample  # (B, L, C, f, h, w)

    # 4. MSE on F against v: mean within a level, sum over levels
    target = scheduler.training_target(x0, noise, sigmas)
    per_sample_level = (out.float() - target.float()).pow(2).flatten(2).mean(-1)  # (B, L)
    level_losses = per_sample_level.mean(0)
    return HPDMLossOutput(
        loss=level_losses.sum(),
        level_losses=level_losses.detach(),
        sigmas=sigmas,
        boxes=boxes,
        drop_conditioning=drop,
    )
