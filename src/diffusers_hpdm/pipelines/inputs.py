"""Argument checks for ``HierarchicalPatchPipeline.__call__``: every error names the fix."""

from __future__ import annotations

import torch

from ..geometry import AXES
from .tiling import BLENDINGS
from .validation import check_values
from .vocabulary import warn_unknown_words

OUTPUT_TYPES = ("np", "pil", "pt", "latent")


def check_inputs(
    pipe, prompt, negative_prompt, class_labels, num_frames, height, width, num_inference_steps, level_steps,
    guidance_scale, num_videos_per_prompt, generator, prompt_embeds, negative_prompt_embeds, overlap_axes, blending,
    tile_batch_size, num_levels, output_type, callback_tensor_inputs, context_sigma, *, prompt_attention_mask=None,
    negative_prompt_attention_mask=None, max_sequence_length=16, callback_on_step_end=None,
):  # fmt: skip
    """Validate the call and return ``(batch_size, last_level, class_labels as a LongTensor or None)``.

    Value checks (types, finiteness, integers, empty lists, embedding shapes) run first (`validation.check_values`);
    prompts with words the tokenizer does not know get a warning naming them (`vocabulary.warn_unknown_words`)."""
    cfg = pipe.transformer.config
    sizes = pipe.transformer.level_sizes
    check_values(
        pipe, prompt, negative_prompt, class_labels, num_inference_steps, level_steps, guidance_scale,
        num_videos_per_prompt, generator, prompt_embeds, negative_prompt_embeds, prompt_attention_mask,
        negative_prompt_attention_mask, tile_batch_size, context_sigma, max_sequence_length, callback_on_step_end,
    )  # fmt: skip

    # conditioning
    is_text, is_class = bool(cfg.text_embed_dim), bool(cfg.num_classes)
    if prompt is not None and prompt_embeds is not None:
        raise ValueError("Pass either `prompt` or `prompt_embeds`, not both.")
    if prompt is not None and not isinstance(prompt, str | list):
        raise ValueError(f"`prompt` must be a string or a list of strings, got {type(prompt).__name__}.")
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("Pass either `negative_prompt` or `negative_prompt_embeds`, not both.")
    if is_text and prompt is None and prompt_embeds is None:
        raise ValueError("This is a text-to-video model: pass `prompt` (or `prompt_embeds`).")
    if not is_text and (prompt is not None or prompt_embeds is not None):
        raise ValueError("This model has no text conditioning: drop `prompt`/`prompt_embeds` and pass `class_labels`.")
    if is_text and prompt_embeds is None and (pipe.text_encoder is None or pipe.tokenizer is None):
        raise ValueError("The pipeline has no `text_encoder`/`tokenizer`: pass `prompt_embeds` instead of `prompt`.")
    if is_text and getattr(pipe, "tokenizer", None) is not None:
        warn_unknown_words(pipe.tokenizer, prompt, "prompt", max_sequence_length)
        warn_unknown_words(pipe.tokenizer, negative_prompt, "negative_prompt", max_sequence_length)
    if class_labels is not None and not is_class:
        raise ValueError("`class_labels` were given but this model is not class-conditional; remove them.")
    if is_class and class_labels is None:
        raise ValueError(f"This model is class-conditional: pass `class_labels` (ints in [0, {cfg.num_classes})).")
    if class_labels is not None:
        class_labels = torch.as_tensor([class_labels] if isinstance(class_labels, int) else class_labels).long()
        if class_labels.ndim != 1 or ((class_labels < 0) | (class_labels >= cfg.num_classes)).any():
            raise ValueError(f"`class_labels` must be ints in [0, {cfg.num_classes}), got {class_labels.tolist()}.")

    if prompt is not None:
        batch = 1 if isinstance(prompt, str) else len(prompt)
    elif prompt_embeds is not None:
        batch = prompt_embeds.shape[0]
    else:
        batch = len(class_labels)
    if class_labels is not None and is_text and len(class_labels) != batch:
        raise ValueError(f"Got {len(class_labels)} `class_labels` for {batch} prompts; give one per prompt.")
    if isinstance(negative_prompt, list) and len(negative_prompt) != batch:
        raise ValueError(f"Got {len(negative_prompt)} negative prompts for {batch} prompts; give one per prompt.")
    if (
        negative_prompt_embeds is not None
        and prompt_embeds is not None
        and negative_prompt_embeds.shape != prompt_embeds.shape
    ):
        raise ValueError("`negative_prompt_embeds` must have the same shape as `prompt_embeds`.")

    # sizes and levels
    requested = (num_frames, height, width)
    if any(v is not None for v in requested):
        target = tuple(s if v is None else v for v, s in zip(requested, sizes[-1]))
        matches = [i for i, s in enumerate(sizes) if s == target]
        if not matches:
            valid = ", ".join(f"num_frames={f}, height={h}, width={w}" for f, h, w in sizes)
            raise ValueError(
                f"Size {target} (frames, height, width) is not a level of this pyramid; use one of: {valid}."
            )
        last = matches[0]
    else:
        last = len(sizes) - 1
    if num_levels is not None:
        if not 1 <= num_levels <= len(sizes):
            raise ValueError(f"`num_levels` must be in [1, {len(sizes)}], got {num_levels}.")
        if any(v is not None for v in requested) and num_levels - 1 != last:
            raise ValueError(f"`num_levels={num_levels}` contradicts the requested size (level {last}); give one.")
        last = num_levels - 1

    # sampling
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"`num_inference_steps` must be an int >= 1, got {num_inference_steps}.")
    if level_steps is not None and (len(level_steps) <= last or any(int(n) < 1 for n in level_steps)):
        raise ValueError(f"`level_steps` needs {last + 1} entries >= 1 (one per level), got {level_steps}.")
    scales = list(guidance_scale) if isinstance(guidance_scale, (list, tuple)) else [guidance_scale]
    if isinstance(guidance_scale, (list, tuple)) and len(scales) <= last:
        raise ValueError(f"`guidance_scale` as a list needs {last + 1} entries (one per level), got {guidance_scale}.")
    if any(w < 0 for w in scales):
        raise ValueError(f"`guidance_scale` must be >= 0 (1 disables guidance), got {guidance_scale}.")
    if num_videos_per_prompt < 1:
        raise ValueError(f"`num_videos_per_prompt` must be >= 1, got {num_videos_per_prompt}.")
    if isinstance(generator, list) and len(generator) != batch * num_videos_per_prompt:
        raise ValueError(
            f"Got {len(generator)} generators for {batch * num_videos_per_prompt} videos "
            f"({batch} prompts x {num_videos_per_prompt}); pass one generator per video or a single one."
        )
    bad_axes = [a for a in overlap_axes if a not in AXES]
    if isinstance(overlap_axes, str) or bad_axes:
        raise ValueError(f"`overlap_axes` must be a tuple drawn from {AXES} (e.g. ('h', 'w')), got {overlap_axes!r}.")
    if blending not in BLENDINGS:
        raise ValueError(f"`blending` must be one of {BLENDINGS}, got {blending!r}.")
    if not isinstance(tile_batch_size, int) or tile_batch_size < 1:
        raise ValueError(f"`tile_batch_size` must be an int >= 1, got {tile_batch_size}.")
    if context_sigma <= 0:
        raise ValueError(f"`context_sigma` must be > 0, got {context_sigma}.")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
    bad = [k for k in callback_tensor_inputs if k not in pipe._callback_tensor_inputs]
    if bad:
        raise ValueError(
            f"`callback_on_step_end_tensor_inputs` {bad} unknown; allowed: {pipe._callback_tensor_inputs}."
        )
    return batch, last, class_labels
