"""Building blocks of ``train_t2v.py``: text conditioning, transformer, scheduler and data from the arguments; the
EMA pipeline used for validation and the final save; the model card and the Hub upload."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from accelerate.logging import get_logger
from diffusers.utils import export_to_video

from diffusers_hpdm import (
    PRESETS,
    HierarchicalPatchPipeline,
    HPDMScheduler,
    HPDMTransformer,
    write_card_sample,
    write_model_card,
)
from diffusers_hpdm.data import load_hub_video_dataset, load_video_dataset
from diffusers_hpdm.geometry import level_sizes
from diffusers_hpdm.text import build_tiny_text_encoder, build_word_tokenizer
from diffusers_hpdm.training import log_videos, sample_generators

logger = get_logger(__name__, log_level="INFO")

VALIDATION_STREAM = 7  # randomness stream of validation sampling (training uses stream 0)


# ------------------------------------------------------------------------------------------------------------------
# Construction
# ------------------------------------------------------------------------------------------------------------------


def default_levels_per_block(num_blocks: int, num_levels: int) -> list[int]:
    """A ramp from 1 to ``num_levels`` over the blocks (e.g. 6 blocks, 3 levels -> 1,1,2,2,3,3)."""
    ramp = [min(num_levels, 1 + b * num_levels // num_blocks) for b in range(num_blocks)]
    ramp[-1] = num_levels
    return ramp


def load_text_encoder(path: str):
    """``(tokenizer, encoder)`` from a pipeline folder (text_encoder/, tokenizer/) or a transformers folder."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel

    root = Path(path)
    enc_dir, tok_dir = (
        (root / "text_encoder", root / "tokenizer") if (root / "text_encoder").is_dir() else (root, root)
    )
    config = AutoConfig.from_pretrained(enc_dir)
    cls = T5EncoderModel if config.model_type in ("t5", "umt5", "mt5") else AutoModel
    return AutoTokenizer.from_pretrained(tok_dir), cls.from_pretrained(enc_dir)


def encoder_width(text_encoder) -> int:
    config = text_encoder.config
    return getattr(config, "d_model", None) or config.hidden_size


def build_text_conditioning(args, dataset, seed: int, resume: Path | None):
    """``(tokenizer, text_encoder, built_here)``; ``(None, None, False)`` for class-conditional training.

    ``built_here``: the small T5 was built offline from the captions (or restored from the checkpoint that holds it);
    checkpoints then carry it, so a resumed run conditions on exactly the same encoder.
    """
    if args.class_conditional:
        return None, None, False
    if args.text_encoder:
        return *load_text_encoder(args.text_encoder), False
    if args.pretrained_base and (Path(args.pretrained_base) / "text_encoder").is_dir():
        return *load_text_encoder(args.pretrained_base), False
    if resume is not None and (resume / "text_encoder").is_dir():
        return *load_text_encoder(resume), True
    column = dataset.text_column
    captions = list(dataset.records[column]) if column in dataset.records.column_names else []
    tokenizer = build_word_tokenizer(captions + list(args.validation_prompts or []), args.max_sequence_length)
    overrides = json.loads(args.model_overrides or "{}")
    width = overrides.get("text_embed_dim") or PRESETS[args.preset].get("text_embed_dim") or 64
    return tokenizer, build_tiny_text_encoder(tokenizer, d_model=width, seed=seed), True


def num_dataset_classes(dataset) -> int:
    if dataset.label_names:
        return len(dataset.label_names)
    if dataset.label_column not in dataset.records.column_names:
        raise ValueError("--class_conditional needs a `label` column in the dataset metadata.")
    labels = [int(float(v)) for v in dataset.records[dataset.label_column] if v is not None and v != ""]
    if not labels or min(labels) < 0:
        raise ValueError("--class_conditional needs a non-negative integer label on every item.")
    return max(labels) + 1


def _same(a, b) -> bool:
    """Config values equal up to list/tuple (a loaded config holds lists, JSON gives lists, presets tuples)."""
    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return as_list(a) == as_list(b)


def build_transformer(args, text_encoder, num_classes: int | None) -> HPDMTransformer:
    lpb = [int(v) for v in args.levels_per_block.split(",")] if args.levels_per_block else None
    if args.pretrained_base:
        base = HPDMTransformer.from_pretrained(args.pretrained_base, subfolder="transformer")
        # What --model_overrides changes in the base (e.g. {"context_fusion": "shallow"}); values equal to the base's
        # are no change, and --num_levels / --levels_per_block win over their entries.
        overrides = {
            k: v for k, v in json.loads(args.model_overrides or "{}").items() if not _same(base.config.get(k), v)
        }
        lpb = lpb or overrides.pop("levels_per_block", None)
        num_levels = args.num_levels or overrides.pop("num_levels", None) or base.config.num_levels
        overrides.pop("num_levels", None)
        if num_levels == base.config.num_levels and lpb is None and not overrides:
            return base  # continue training the base as it is
        if text_encoder is not None and base.config.text_embed_dim != encoder_width(text_encoder):
            raise ValueError(
                f"The text encoder is {encoder_width(text_encoder)} wide but the base expects "
                f"{base.config.text_embed_dim}: fine-tune with the base's own text encoder."
            )
        if base.config.num_levels != 1:
            raise ValueError(f"--pretrained_base must be a 1-level model to expand, got {base.config.num_levels}.")
        return HPDMTransformer.from_base(
            base,
            num_levels,
            levels_per_block=lpb or default_levels_per_block(base.config.num_blocks, num_levels),
            **overrides,
        )
    preset = PRESETS[args.preset]
    overrides = json.loads(args.model_overrides or "{}")
    config = {**preset, **overrides}
    if args.num_levels is not None:
        config["num_levels"] = args.num_levels
    if lpb is None:  # keep the preset's adaptive computation when it fits this pyramid, else ramp from 1 to L
        lpb = config.get("levels_per_block")
        fits = lpb is not None and len(lpb) == config["num_blocks"] and lpb[-1] == config["num_levels"]
        lpb = lpb if fits else default_levels_per_block(config["num_blocks"], config["num_levels"])
    config["levels_per_block"] = lpb
    if num_classes is not None:
        config.update(num_classes=num_classes, text_embed_dim=None)
    else:
        config.update(num_classes=None, text_embed_dim=encoder_width(text_encoder))
    return HPDMTransformer(**config)


def build_scheduler(args, transformer: HPDMTransformer) -> HPDMScheduler:
    """The base's scheduler when fine-tuning (its sampler settings and noise shift carry over), else a new one;
    ``--p_mean``/``--p_std``/``--high_noise_*``/``--clean_context_*`` given explicitly replace the training sigma
    distribution in either case."""
    keys = ("p_mean", "p_std", "high_noise_fraction", "high_noise_p_mean", "high_noise_p_std")
    keys += ("clean_context_fraction", "clean_context_p_mean", "clean_context_p_std")
    given = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if args.pretrained_base and (Path(args.pretrained_base) / "scheduler").is_dir():
        base = HPDMScheduler.from_pretrained(args.pretrained_base, subfolder="scheduler")
        # keyword overrides: a merged dict would lose the keys the base's file lacked (diffusers' _use_default_values)
        return HPDMScheduler.from_config(base.config, **given)
    return HPDMScheduler(
        **given,
        level_growth=tuple(transformer.config.level_growth),
        level_noise_shift=args.level_noise_shift,
    )


def default_video_size(args, transformer: HPDMTransformer) -> tuple[int, int, int]:
    """The finest canvas of the full pyramid: the model's, or, when ``--num_levels`` trains a smaller pyramid than the
    preset's (a base), the preset's — so a base sees the same antialiased level-0 patches as the model it grows into."""
    cfg = transformer.config
    full = {**PRESETS[args.preset], **json.loads(args.model_overrides or "{}")}["num_levels"]
    levels = cfg.num_levels if args.pretrained_base else max(cfg.num_levels, full)
    return tuple(level_sizes(cfg.patch_size, levels, cfg.level_growth)[-1])


def load_dataset(args, seed: int, video_size):
    """``--dataset_name`` through `datasets.load_dataset` (Hub or local data files), else ``--train_data_dir``;
    ``--video_column`` / ``--caption_column`` name the columns in either."""
    f, h, w = video_size
    common = dict(num_frames=f, height=h, width=w, frame_stride=args.frame_stride, seed=seed)
    common.update(cache_frames=args.cache_videos)
    if args.dataset_name:
        return load_hub_video_dataset(
            args.dataset_name, args.dataset_config_name, video_column=args.video_column,
            caption_column=args.caption_column, cache_dir=args.cache_dir, **common,
        )  # fmt: skip
    return load_video_dataset(
        args.train_data_dir,
        media_column=args.video_column,
        text_column=args.caption_column,
        require_captions=not args.class_conditional,
        **common,
    )


# ------------------------------------------------------------------------------------------------------------------
# Pipeline with EMA weights: validation and the final save
# ------------------------------------------------------------------------------------------------------------------


def ema_pipeline(ema_state: dict, model_config: dict, scheduler, tokenizer, text_encoder) -> HierarchicalPatchPipeline:
    """A pipeline whose transformer holds the EMA weights (``ema_state`` from ``EMA.state_dict()``: full tensors)."""
    transformer = HPDMTransformer.from_config(model_config)
    transformer.load_state_dict(ema_state["shadow"], strict=True)
    return HierarchicalPatchPipeline(
        transformer=transformer.eval(),
        scheduler=HPDMScheduler.from_config(scheduler.config),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
    )


def log_validation(pipe, args, accelerator, step: int, seed: int) -> list[str]:
    """Sample the validation prompts (or class labels), save them as mp4 under ``output_dir/validation`` and log
    them to the trackers ``--report_to`` enabled (`diffusers_hpdm.training.log_videos`)."""
    pipe = pipe.to(accelerator.device)
    pipe.set_progress_bar_config(disable=True)
    conditions = args.validation_class_labels if args.class_conditional else args.validation_prompts
    out_dir = Path(args.output_dir) / "validation" / f"step-{step}"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, videos = [], []
    start = time.time()
    for i, cond in enumerate(conditions):
        generator = sample_generators(seed, step, [i], stream=VALIDATION_STREAM)[0]
        kwargs = {"class_labels": [cond]} if args.class_conditional else {"prompt": cond}
        frames = pipe(
            **kwargs,
            num_inference_steps=args.validation_inference_steps,
            guidance_scale=args.validation_guidance_scale,
            generator=generator,
            output_type="np",
        ).frames[0]
        path = out_dir / f"{i:02d}.mp4"
        export_to_video(list(frames), str(path), fps=8)
        paths.append(str(path))
        videos.append((np.asarray(frames) * 255).round().clip(0, 255).astype(np.uint8))
    logged = log_videos(accelerator.trackers, videos, [str(c) for c in conditions], step, fps=8)
    logger.info(
        f"Validation at step {step}: {len(paths)} video(s) in {out_dir} ({time.time() - start:.1f}s)"
        + (f", logged to {', '.join(logged)}" if logged else "")
    )
    return paths


def summarize(history: list[tuple[int, float]], total_skipped: int) -> str:
    if not history:
        return f"No training step was run in this session; skipped items: {total_skipped}"
    k = max(1, min(10, len(history) // 4))
    first, last = history[:k], history[-k:]
    mean = lambda xs: sum(v for _, v in xs) / len(xs)  # noqa: E731
    return (
        f"Mean loss {mean(first):.4f} over steps {first[0][0]}-{first[-1][0]} -> {mean(last):.4f} over steps "
        f"{last[0][0]}-{last[-1][0]}; skipped items: {total_skipped}"
    )


def write_card(args, model_config: dict, summary: str, videos: list[str]) -> None:
    base = args.pretrained_base
    training = (
        f"Trained with `examples/train_t2v.py`: {args.max_train_steps} steps, LAMB lr {args.learning_rate}, weight "
        f"decay {args.weight_decay}, {args.lr_warmup_steps} warm-up steps then {args.lr_scheduler}, batch "
        f"{args.train_batch_size} per process, conditioning dropout {args.cond_drop_prob}, EMA half-life "
        f"{args.ema_half_life} steps, data `{args.train_data_dir}`"
        + (f", expanded from the 1-level base `{base}`" if base else "")
        + f".\n\n{summary}."
    )
    prompt = args.validation_prompts[0] if args.validation_prompts else "a red circle moving right"
    sample, caption = None, ""
    if videos:  # the last validation's first video (EMA weights) as the card's sample
        import imageio.v3 as iio

        frames = iio.imread(videos[0], plugin="pyav").astype("float32") / 255  # (F, H, W, 3)
        sample = write_card_sample([frames], args.output_dir)[0]
        condition = args.validation_class_labels[0] if args.class_conditional else repr(prompt)
        caption = (
            f"Validation sample at the end of training: {condition}, {args.validation_inference_steps} level-0 "
            f"steps, guidance {args.validation_guidance_scale}."
        )
    write_model_card(
        args.output_dir,
        repo_id=args.hub_model_id,
        title=f"HPDM {Path(args.output_dir).name}",
        description=f"{model_config['num_levels']}-level pyramid trained from "
        + ("a low-resolution base." if base else "scratch."),
        example_prompt=prompt,
        training=training,
        base_model=base if base and not os.path.exists(base) else None,
        sample=sample,
        sample_caption=caption,
    )


def push_to_hub(args) -> None:
    from huggingface_hub import create_repo, upload_folder

    repo_id = create_repo(args.hub_model_id or Path(args.output_dir).name, exist_ok=True).repo_id
    upload_folder(
        repo_id=repo_id,
        folder_path=args.output_dir,
        commit_message="End of training",
        ignore_patterns=["checkpoint-*", "logs/*"],
    )
    logger.info(f"Pushed to https://huggingface.co/{repo_id}")
