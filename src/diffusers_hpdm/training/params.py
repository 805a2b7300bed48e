"""Parameters that never receive a gradient, found with one probe step and frozen before wrapping.

Adaptive computation makes some parameters structurally unused in training: with ``levels_per_block[b] == 1`` block
``b`` runs level 0 only, so its context-fusion projection is never called (and a 1-level base uses no fusion at all).
Left trainable, they break distributed training in three ways: DDP waits forever for their gradients (or needs
``find_unused_parameters=True`` on every step), FSDP2 checkpoints have no optimizer state for them and refuse to
load, and optimizers disagree on whether to weight-decay them. Freezing them keeps every parameter in the model, in
``save_pretrained`` and in the EMA (whose average of a constant is that constant), and leaves the optimizer with
exactly the parameters that learn.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def unused_parameters(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module], torch.Tensor]) -> list[str]:
    """Names of trainable parameters whose gradient is ``None`` after ``loss_fn(model).backward()``.

    Gradients are cleared afterwards. Run it on the unwrapped model, before ``accelerator.prepare``.
    """
    model.zero_grad(set_to_none=True)
    loss_fn(model).backward()
    names = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    return names


def freeze_parameters(model: torch.nn.Module, names: list[str]) -> None:
    """``requires_grad_(False)`` on the named parameters."""
    named = dict(model.named_parameters())
    for name in names:
        named[name].requires_grad_(False)


def lamb_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """LAMB parameter groups as in LAMB's reference setup (You et al., 2020; BERT): biases and normalisation gains
    (every parameter with fewer than 2 dimensions) get no weight decay and no layer adaptation (trust ratio 1), and
    so do zero-initialised output layers (``model._zero_init_parameters``) and small-initialised embedding tables
    (``model._embedding_parameters``: token positions, latents, the null text).

    Why it matters: the trust ratio ``||w|| / ||u||`` makes every update a fixed fraction (~lr) of the parameter's
    own norm. A parameter that starts at zero takes one unscaled step of size ~lr and then grows by ~lr (0.5% at
    5e-3) per step: biases and the zero-initialised output head stay near zero for thousands of steps, and the
    model cannot learn the per-pixel noise prediction low noise levels need. Embeddings initialised at std 0.02 grow
    just as slowly: the token position table stayed ~10x smaller than the pixel part of a token at high noise, so a
    token hardly knew its frame and the demo model could not learn motion direction.
    """
    zero_init = set(getattr(model, "_zero_init_parameters", ())) | set(getattr(model, "_embedding_parameters", ()))
    adapted, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (plain if p.ndim < 2 or name in zero_init else adapted).append(p)
    groups = [{"params": adapted, "weight_decay": weight_decay}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0, "adam": True})
    return groups
