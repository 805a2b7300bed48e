"""Value checks of ``HierarchicalPatchPipeline.__call__`` arguments: types, finiteness, integers, emptiness and
matching shapes. `check_values` runs first in `inputs.check_inputs`, so that the pyramid checks there see
well-typed values; every error is a `ValueError` whose message names the argument and says what to pass.
"""

from __future__ import annotations

import math
import numbers

import torch

MAX_INFERENCE_STEPS = 10_000  # beyond this an EDM sample no longer changes measurably, and the schedule's tables grow


def is_int(value) -> bool:
    """An integer (Python, NumPy or a 0-d integer tensor), not a bool."""
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not value.is_floating_point() and value.dtype != torch.bool
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value, minimum: int = 1, maximum: int | None = None) -> None:
    """``value`` is an integer in ``[minimum, maximum]``."""
    upper = "" if maximum is None else f" and <= {maximum}"
    if not is_int(value) or int(value) < minimum or (maximum is not None and int(value) > maximum):
        raise ValueError(f"`{name}` must be an integer >= {minimum}{upper}, got {value!r}.")


def check_number(name: str, value, minimum: float, strict: bool, hint: str = "") -> None:
    """``value`` is a finite real number ``> minimum`` (``strict``) or ``>= minimum``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"`{name}` must be a finite number {bound}{hint}, got {value!r}.")


def _check_prompt(name: str, prompt) -> None:
    if prompt is None or isinstance(prompt, str):
        return
    if not isinstance(prompt, list | tuple):
        raise ValueError(f"`{name}` must be a string or a list of strings, got {type(prompt).__name__}.")
    if not prompt:
        raise ValueError(f"`{name}` is an empty list: pass at least one string (or None).")
    bad = [type(p).__name__ for p in prompt if not isinstance(p, str)]
    if bad:
        raise ValueError(f"`{name}` must hold only strings, got items of type {sorted(set(bad))}.")


def _check_generator(generator) -> None:
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, list):
        bad = sorted({type(g).__name__ for g in generator if not isinstance(g, torch.Generator)})
        if not bad:
            return
        raise ValueError(f"`generator` list must hold only torch.Generator objects, got items of type {bad}.")
    raise ValueError(
        f"`generator` must be a torch.Generator (e.g. torch.Generator().manual_seed(42)) or a list of them, got "
        f"{type(generator).__name__}."
    )


def _check_embeds(name: str, embeds, width: int) -> None:
    if embeds is None:
        return
    if not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point():
        kind = type(embeds).__name__ if not isinstance(embeds, torch.Tensor) else f"a {embeds.dtype} tensor"
        raise ValueError(f"`{name}` must be a floating-point torch.Tensor (batch, tokens, {width}), got {kind}.")
    if embeds.ndim != 3 or embeds.shape[-1] != width or embeds.shape[0] < 1 or embeds.shape[1] < 1:
        raise ValueError(
            f"`{name}` must have shape (batch, tokens, {width}) (the text encoder's width is {width}), got "
            f"{tuple(embeds.shape)}."
        )
    if not torch.isfinite(embeds).all():
        raise ValueError(f"`{name}` contains NaN or inf values; pass finite embeddings.")


def _check_mask(name: str, mask, embeds_name: str, embeds) -> None:
    if mask is None:
        return
    if embeds is None:
        raise ValueError(f"`{name}` was given without `{embeds_name}`; pass both or neither.")
    if not isinstance(mask, torch.Tensor):
        raise ValueError(
            f"`{name}` must be a torch.Tensor (batch, tokens) of 0/1 or bools, got {type(mask).__name__}."
        )
    if tuple(mask.shape) != tuple(embeds.shape[:2]):
        raise ValueError(
            f"`{name}` must have shape {tuple(embeds.shape[:2])} (the batch and tokens of `{embeds_name}`), got "
            f"{tuple(mask.shape)}."
        )
    if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"`{name}` must hold only 0/1 (or bools).")


def _check_class_labels(class_labels) -> None:
    if class_labels is None:
        return
    if isinstance(class_labels, torch.Tensor):
        if class_labels.is_floating_point() or class_labels.dtype == torch.bool:
            raise ValueError(f"`class_labels` must be integers, got a {class_labels.dtype} tensor.")
        if class_labels.ndim > 1 or class_labels.numel() == 0:
            raise ValueError(
                f"`class_labels` must be a 1-D tensor with one label per video, got {class_labels.shape}."
            )
        return
    labels = class_labels if isinstance(class_labels, list | tuple) else [class_labels]
    if not labels:
        raise ValueError("`class_labels` is empty: pass one integer label per video.")
    bad = [v for v in labels if not is_int(v)]
    if bad:
        raise ValueError(f"`class_labels` must be integers, got {bad[:4]} (use int(label) for whole numbers).")


def check_values(
    pipe, prompt, negative_prompt, class_labels, num_inference_steps, level_steps, guidance_scale,
    num_videos_per_prompt, generator, prompt_embeds, negative_prompt_embeds, prompt_attention_mask,
    negative_prompt_attention_mask, tile_batch_size, context_sigma, max_sequence_length, callback_on_step_end,
) -> None:  # fmt: skip
    """Reject non-finite, non-integer, empty and mismatched argument values (``ValueError`` naming the argument)."""
    cfg = pipe.transformer.config
    _check_prompt("prompt", prompt)
    _check_prompt("negative_prompt", negative_prompt)
    _check_class_labels(class_labels)
    check_int("num_inference_steps", num_inference_steps, 1, MAX_INFERENCE_STEPS)
    if level_steps is not None:
        if not isinstance(level_steps, list | tuple) or not level_steps:
            raise ValueError(f"`level_steps` must be a list of integers (one per level), got {level_steps!r}.")
        for n in level_steps:
            if not is_int(n) or not 1 <= int(n) <= MAX_INFERENCE_STEPS:
                raise ValueError(
                    f"`level_steps` must hold integers in [1, {MAX_INFERENCE_STEPS}] (one per level), got {level_steps}."
                )
    scales = guidance_scale if isinstance(guidance_scale, list | tuple) else [guidance_scale]
    if isinstance(guidance_scale, list | tuple) and not scales:
        raise ValueError("`guidance_scale` is an empty list: pass a number or one number per level.")
    for w in scales:
        check_number("guidance_scale", w, 0.0, strict=False, hint=" (1 disables guidance), or one per level")
    check_int("num_videos_per_prompt", num_videos_per_prompt, 1)
    _check_generator(generator)
    check_int("tile_batch_size", tile_batch_size, 1)
    check_number("context_sigma", context_sigma, 0.0, strict=True, hint=" (e.g. 0.1)")
    check_int("max_sequence_length", max_sequence_length, 1)
    if callback_on_step_end is not None and not callable(callback_on_step_end):
        raise ValueError(
            "`callback_on_step_end` must be a function fn(pipe, step, timestep, callback_kwargs) -> dict, got "
            f"{type(callback_on_step_end).__name__}."
        )

    width = cfg.text_embed_dim
    if width:
        _check_embeds("prompt_embeds", prompt_embeds, width)
        _check_embeds("negative_prompt_embeds", negative_prompt_embeds, width)
        _check_mask("prompt_attention_mask", prompt_attention_mask, "prompt_embeds", prompt_embeds)
        _check_mask(
            "negative_prompt_attention_mask", negative_prompt_attention_mask, "negative_prompt_embeds",
            negative_prompt_embeds,
        )  # fmt: skip
        if isinstance(prompt, str | list | tuple):
            batch_of = 1 if isinstance(prompt, str) else len(prompt)
        else:
            batch_of = None if prompt_embeds is None else prompt_embeds.shape[0]
        if negative_prompt_embeds is not None and batch_of is not None and negative_prompt_embeds.shape[0] != batch_of:
            raise ValueError(
                f"`negative_prompt_embeds` has batch {negative_prompt_embeds.shape[0]} for {batch_of} prompt(s); "
                "give one negative per prompt."
            )


def check_callback_result(result, latents: torch.Tensor) -> dict:
    """The dict a ``callback_on_step_end`` returned; a ``ValueError`` when it is not a dict or replaces
    ``latents`` with a tensor of another shape or with non-finite values."""
    if not isinstance(result, dict):
        raise ValueError(
            f"`callback_on_step_end` must return a dict (e.g. `return callback_kwargs`), got {type(result).__name__}."
        )
    new = result.get("latents")
    if new is not None:
        if not isinstance(new, torch.Tensor) or new.shape != latents.shape:
            shape = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            raise ValueError(
                f"`callback_on_step_end` returned `latents` of shape {shape}; keep the canvas shape "
                f"{tuple(latents.shape)}."
            )
        if not torch.isfinite(new).all():
            raise ValueError("`callback_on_step_end` returned `latents` with NaN or inf values.")
    return result
