"""Expanding a 1-level low-resolution base into an L-level pyramid (paper §5.2, table 8): the weights of
``HPDMTransformer.from_base``."""

from __future__ import annotations

import math

import torch


def expand_base(model_cls, base, num_levels: int, levels_per_block: list[int] | None = None, **overrides):
    """A ``model_cls`` with ``num_levels`` levels whose level 0 computes what ``base`` computes (see
    ``HPDMTransformer.from_base``)."""
    config = {k: v for k, v in base.config.items() if not k.startswith("_")}
    config.update(num_levels=num_levels, levels_per_block=levels_per_block, **overrides)
    model = model_cls(**config)
    state = base.state_dict()
    state["latents"] = base.latents.detach()[:1].repeat(num_levels, 1, 1)
    state = {k: v for k, v in state.items() if not k.startswith("fusion.")}
    voxels = base.config.in_channels * math.prod(base.config.tokenizer_patch)
    was_shallow, is_shallow = base.config.context_fusion == "shallow", model.config.context_fusion == "shallow"
    if was_shallow != is_shallow:
        w = state["tokenizer.weight"]  # (D_tok, [pixels | context pixels (shallow) | coordinates])
        pixels, coords = w[:, :voxels], w[:, -3:]
        parts = [pixels, torch.zeros_like(pixels), coords] if is_shallow else [pixels, coords]
        state["tokenizer.weight"] = torch.cat(parts, dim=1)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a size mismatch
        raise ValueError(f"`overrides` {overrides} change weight shapes of the base: {e}") from None
    if unexpected or any(not k.startswith("fusion.") for k in missing):
        raise ValueError(f"Base and target configs are incompatible: missing={missing}, unexpected={unexpected}.")
    if model.fusion is not None:
        for f in model.fusion:
            f.reset_to_passthrough()
    return model.to(base.device, base.dtype)
