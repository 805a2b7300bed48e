#!/usr/bin/env python
"""Train a Hierarchical Patch Diffusion Model (HPDM, CVPR 2024) for text- or class-to-video with 🤗 Accelerate.

With no arguments it trains the ``tiny-t2v`` preset for a short run on a synthetic moving-shapes dataset generated
into ``./data/synthetic`` (cached) and saves a pipeline to ``./outputs/hpdm-tiny``::

    python examples/train_t2v.py                       # or: accelerate launch examples/train_t2v.py

Low-resolution pre-training, then expansion to a pyramid (paper table 8)::

    python examples/train_t2v.py --num_levels 1 --output_dir outputs/base
    accelerate launch --config_file examples/configs/fsdp.yaml examples/train_t2v.py \\
        --pretrained_base outputs/base --num_levels 3 --output_dir outputs/hpdm

See ``docs/training.md`` for multi-process (DDP / FSDP2) runs, also on CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from diffusers.optimization import get_scheduler
from diffusers.utils import export_to_video
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from diffusers_hpdm import PRESETS, HierarchicalPatchPipeline, HPDMScheduler, HPDMTransformer, write_model_card
from diffusers_hpdm.data import collate_videos, generate_dataset, load_video_dataset
from diffusers_hpdm.geometry import level_sizes
from diffusers_hpdm.text import build_tiny_text_encoder, build_word_tokenizer
from diffusers_hpdm.training import (
    EMA,
    TRAINING_STATE_NAME,
    Lamb,
    PromptEncoder,
    ShardedBatchSampler,
    atomic_checkpoint,
    clip_grad_norm_,
    enable_cpu_fsdp,
    freeze_parameters,
    lamb_param_groups,
    hpdm_loss,
    prune_checkpoints,
    remove_incomplete,
    resolve_checkpoint,
    sample_generators,
    unused_parameters,
)

logger = get_logger(__name__, log_level="INFO")

DEFAULT_DATA_DIR = "./data/synthetic"
VALIDATION_STREAM = 7  # randomness stream of validation sampling (training uses stream 0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Model
    g = parser.add_argument_group("model")
    g.add_argument("--preset", default="tiny-t2v", choices=sorted(PRESETS), help="Named HPDMTransformer config.")
    g.add_argument(
        "--pretrained_base",
        default=None,
        help="A saved pipeline (folder with transformer/) whose 1-level model is expanded to --num_levels and "
        "fine-tuned (HPDMTransformer.from_base). Its text_encoder/ and tokenizer/ are reused when present.",
    )
    g.add_argument(
        "--num_levels",
        type=int,
        default=None,
        help="Pyramid levels. 1 trains a low-resolution base on downsampled videos (level 0 canvas = patch size). "
        "Default: the preset's (or the base's).",
    )
    g.add_argument(
        "--levels_per_block",
        default=None,
        help="Adaptive computation, comma-separated, one per block (e.g. 1,1,2,2,3,3). Default: the preset's when "
        "its level count matches, else a ramp from 1 to --num_levels.",
    )
    g.add_argument(
        "--model_overrides",
        default=None,
        help="JSON dict of HPDMTransformer config values overriding the preset, e.g. '{\"num_blocks\": 2}'.",
    )
    g.add_argument(
        "--text_encoder",
        default=None,
        help="Folder with a transformers text encoder and its tokenizer (or a saved pipeline with text_encoder/ and "
        "tokenizer/). Default: the base's, else a small T5 built offline from the dataset's captions.",
    )
    g.add_argument("--max_sequence_length", type=int, default=16, help="Caption tokens (padding/truncation).")
    g.add_argument(
        "--class_conditional",
        action="store_true",
        help="Condition on the dataset's `label` column instead of text (no text encoder).",
    )
    g.add_argument("--gradient_checkpointing", action="store_true", help="Recompute RIN blocks in the backward.")
    # Noise
    g = parser.add_argument_group("noise (scheduler)")
    g.add_argument("--p_mean", type=float, default=-1.2, help="Mean of ln(sigma) at level 0 during training.")
    g.add_argument("--p_std", type=float, default=1.2, help="Std of ln(sigma) during training.")
    g.add_argument(
        "--level_noise_shift",
        type=float,
        default=None,
        help="Sigma multiplier per level (default sqrt(prod(level_growth))).",
    )
    # Data
    g = parser.add_argument_group("data")
    g.add_argument(
        "--train_data_dir",
        default=DEFAULT_DATA_DIR,
        help="Folder with videos + metadata.jsonl/csv, a dataset saved with save_to_disk, or a Hub dataset. The "
        f"default {DEFAULT_DATA_DIR} is generated (synthetic moving shapes) when missing.",
    )
    g.add_argument(
        "--synthetic_num_videos", type=int, default=64, help="Videos to generate into the default data folder."
    )
    g.add_argument(
        "--video_size",
        type=int,
        nargs=3,
        default=None,
        metavar=("F", "H", "W"),
        help="Size videos are loaded at (frames height width). Default: the finest canvas of the full pyramid, "
        "so a 1-level base sees the same antialiased level-0 patches as the model it will grow into.",
    )
    g.add_argument("--frame_stride", type=int, default=1, help="Keep every n-th source frame.")
    g.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes.")
    g.add_argument(
        "--cache_videos",
        action="store_true",
        help="Keep decoded videos in memory (uint8), decoding each file once per process: for small datasets.",
    )
    g.add_argument(
        "--precompute_text_embeddings",
        action="store_true",
        help="Encode every caption once before training (frozen encoder) instead of every batch.",
    )
    # Optimization
    g = parser.add_argument_group("optimization")
    g.add_argument("--output_dir", default="./outputs/hpdm-tiny", help="Checkpoints, validation videos, pipeline.")
    g.add_argument("--seed", type=int, default=None, help="Makes a single-process run deterministic.")
    g.add_argument("--train_batch_size", type=int, default=4, help="Videos per process and step.")
    g.add_argument("--max_train_steps", type=int, default=200, help="Optimizer steps.")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches per optimizer step.")
    g.add_argument("--learning_rate", type=float, default=5e-3, help="Peak LAMB learning rate (paper: 5e-3).")
    g.add_argument("--lamb_betas", type=float, nargs=2, default=(0.9, 0.999), help="LAMB moment decays.")
    g.add_argument("--lamb_eps", type=float, default=1e-6, help="LAMB epsilon.")
    g.add_argument("--weight_decay", type=float, default=0.01, help="Decoupled weight decay (paper: 0.01).")
    g.add_argument(
        "--lr_scheduler",
        default="cosine",
        choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"],
        help="Schedule after the warm-up (diffusers.optimization.get_scheduler).",
    )
    g.add_argument("--lr_warmup_steps", type=int, default=20, help="Warm-up steps (paper: 5k-10k).")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping (0 disables).")
    g.add_argument("--cond_drop_prob", type=float, default=0.1, help="Conditioning dropout for CFG (paper: 0.1).")
    g.add_argument("--ema_half_life", type=float, default=500.0, help="EMA half-life in optimizer steps.")
    g.add_argument(
        "--ema_rampup_ratio",
        type=float,
        default=0.05,
        help="EDM EMA ramp-up: half-life at most ratio * step (<= 0 disables).",
    )
    g.add_argument(
        "--mixed_precision",
        default=None,
        choices=["no", "bf16"],
        help="fp32 ('no', the paper's choice) or bf16 autocast. Default: the accelerate config's. fp16 is refused.",
    )
    g.add_argument("--allow_tf32", action="store_true", help="Allow TF32 matmuls on Ampere+ GPUs.")
    g.add_argument("--cpu", action="store_true", help="Train on the CPU even when an accelerator is available.")
    # Checkpoints, validation, logging
    g = parser.add_argument_group("checkpoints, validation, logging")
    g.add_argument("--checkpointing_steps", type=int, default=100, help="Save a resumable checkpoint every n steps.")
    g.add_argument("--checkpoints_total_limit", type=int, default=2, help="Keep at most this many checkpoints.")
    g.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="'latest' (the newest complete checkpoint in --output_dir; start fresh when there is none) or a path.",
    )
    g.add_argument(
        "--validation_prompts",
        nargs="*",
        default=["a red circle moving right slowly on a black background"],
        help="Prompts sampled with the EMA weights at the end (and every --validation_steps). Empty to disable.",
    )
    g.add_argument(
        "--validation_class_labels", type=int, nargs="*", default=[0], help="Class ids (class-conditional)."
    )
    g.add_argument("--validation_steps", type=int, default=None, help="Also validate every n steps.")
    g.add_argument("--validation_inference_steps", type=int, default=8, help="Level-0 sampling steps.")
    g.add_argument("--validation_guidance_scale", type=float, default=3.0, help="Classifier-free guidance.")
    g.add_argument("--logging_steps", type=int, default=10, help="Print the mean loss every n steps.")
    g.add_argument("--report_to", default=None, help="Accelerate trackers ('tensorboard', 'wandb', 'all').")
    g.add_argument("--push_to_hub", action="store_true", help="Upload the final pipeline to the Hub.")
    g.add_argument("--hub_model_id", default=None, help="Hub repository (default: the output folder's name).")
    args = parser.parse_args(argv)

    if args.num_levels is not None and args.num_levels < 1:
        parser.error("--num_levels must be >= 1.")
    if args.gradient_accumulation_steps < 1 or args.train_batch_size < 1 or args.max_train_steps < 1:
        parser.error("--train_batch_size, --max_train_steps and --gradient_accumulation_steps must be >= 1.")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        parser.error("--checkpoints_total_limit must be >= 1.")
    return args


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


def build_transformer(args, text_encoder, num_classes: int | None) -> HPDMTransformer:
    lpb = [int(v) for v in args.levels_per_block.split(",")] if args.levels_per_block else None
    if args.pretrained_base:
        base = HPDMTransformer.from_pretrained(args.pretrained_base, subfolder="transformer")
        num_levels = args.num_levels or base.config.num_levels
        if num_levels == base.config.num_levels and lpb is None:
            return base  # continue training the base as it is
        if text_encoder is not None and base.config.text_embed_dim != encoder_width(text_encoder):
            raise ValueError(
                f"The text encoder is {encoder_width(text_encoder)} wide but the base expects "
                f"{base.config.text_embed_dim}: fine-tune with the base's own text encoder."
            )
        if base.config.num_levels != 1:
            raise ValueError(f"--pretrained_base must be a 1-level model to expand, got {base.config.num_levels}.")
        return HPDMTransformer.from_base(
            base, num_levels, levels_per_block=lpb or default_levels_per_block(base.config.num_blocks, num_levels)
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
    if args.pretrained_base and (Path(args.pretrained_base) / "scheduler").is_dir():
        return HPDMScheduler.from_pretrained(args.pretrained_base, subfolder="scheduler")
    return HPDMScheduler(
        p_mean=args.p_mean,
        p_std=args.p_std,
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
    f, h, w = video_size
    return load_video_dataset(
        args.train_data_dir,
        num_frames=f,
        height=h,
        width=w,
        frame_stride=args.frame_stride,
        seed=seed,
        cache_frames=args.cache_videos,
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
    """Sample the validation prompts (or class labels) and save them as mp4 under ``output_dir/validation``."""
    pipe = pipe.to(accelerator.device)
    pipe.set_progress_bar_config(disable=True)
    conditions = args.validation_class_labels if args.class_conditional else args.validation_prompts
    out_dir = Path(args.output_dir) / "validation" / f"step-{step}"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
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
    logger.info(f"Validation at step {step}: {len(paths)} video(s) in {out_dir} ({time.time() - start:.1f}s)")
    return paths


# ------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------------------------


def save_checkpoint(accelerator, ema: EMA, state: dict, args, text=None) -> Path:
    """``save_state`` + EMA + training state (data order, counters) into ``checkpoint-N.tmp``, committed by rename.
    ``text``: ``(tokenizer, text_encoder)`` to store as well (the offline-built encoder)."""
    with atomic_checkpoint(
        args.output_dir, state["global_step"], accelerator.is_main_process, accelerator.wait_for_everyone
    ) as tmp:
        accelerator.save_state(str(tmp))
        ema.save(tmp, accelerator.is_main_process)
        if accelerator.is_main_process:
            if text is not None:
                text[0].save_pretrained(tmp / "tokenizer")
                text[1].save_pretrained(tmp / "text_encoder")
            (tmp / TRAINING_STATE_NAME).write_text(json.dumps(state, indent=1))  # last: marks the content complete
    if accelerator.is_main_process:
        for path in prune_checkpoints(args.output_dir, args.checkpoints_total_limit):
            logger.info(f"Removed old checkpoint {path}")
    path = Path(args.output_dir) / f"checkpoint-{state['global_step']}"
    logger.info(f"Saved checkpoint {path}")
    return path


def find_resume_checkpoint(args, accelerator) -> Path | None:
    path = None
    if accelerator.is_main_process:
        removed = remove_incomplete(args.output_dir)
        if removed:
            logger.warning(f"Removed incomplete checkpoint(s) of an interrupted run: {[p.name for p in removed]}")
        path = resolve_checkpoint(args.output_dir, args.resume_from_checkpoint)
        if args.resume_from_checkpoint and path is None:
            logger.info(f"No checkpoint in {args.output_dir}; starting a new run.")
    path = broadcast_object_list([str(path) if path else None])[0]
    return Path(path) if path else None


# ------------------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> None:
    cpu = args.cpu or torch.accelerator.current_accelerator() is None
    if cpu:
        enable_cpu_fsdp()  # accelerate drops FSDP on CPU processes; see diffusers_hpdm.training.fsdp_cpu
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=Path(args.output_dir, "logs")),
    )
    if accelerator.mixed_precision == "fp16":
        raise ValueError("fp16 is not supported (the paper saw worse convergence with any mixed precision); use bf16.")
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True

    # 1. Resume point and seed (a resumed run keeps its checkpoint's seed: randomness is keyed by it)
    resume = find_resume_checkpoint(args, accelerator)
    resume_state = json.loads((resume / TRAINING_STATE_NAME).read_text()) if resume else None
    seed = args.seed
    if resume_state is not None:
        if seed is not None and seed != resume_state["seed"]:
            logger.warning(f"--seed {seed} ignored: resuming a run with seed {resume_state['seed']}.")
        seed = resume_state["seed"]
    if seed is None:
        seed = broadcast_object_list([int(torch.randint(0, 2**31 - 1, ()).item())])[0]
    set_seed(seed)

    # 2. Data (the default synthetic folder is generated once, by the main process)
    if os.path.normpath(args.train_data_dir) == os.path.normpath(DEFAULT_DATA_DIR):
        with accelerator.main_process_first():
            if accelerator.is_main_process:
                logger.info(f"Preparing the synthetic dataset in {DEFAULT_DATA_DIR} (cached after the first run)")
            generate_dataset(
                DEFAULT_DATA_DIR, num_videos=args.synthetic_num_videos, num_frames=16, height=64, width=64
            )

    # 3. Models: text conditioning (frozen), transformer, scheduler
    probe_dataset = load_dataset(args, seed, (1, 8, 8))  # metadata only (captions, labels); nothing is decoded
    tokenizer, text_encoder, text_built_here = build_text_conditioning(args, probe_dataset, seed, resume)
    num_classes = num_dataset_classes(probe_dataset) if args.class_conditional else None
    set_seed(seed)  # same initial weights on every process
    transformer = build_transformer(args, text_encoder, num_classes)
    model_config = dict(transformer.config)
    noise_scheduler = build_scheduler(args, transformer)
    video_size = tuple(args.video_size) if args.video_size else default_video_size(args, transformer)
    dataset = load_dataset(args, seed, video_size)
    logger.info(
        f"Model: {sum(p.numel() for p in transformer.parameters()) / 1e6:.2f}M parameters, "
        f"{transformer.config.num_levels} level(s) {transformer.level_sizes}, patch {tuple(transformer.config.patch_size)}, "
        f"levels per block {transformer.levels_per_block}; data: {len(dataset)} items loaded at {video_size}"
    )
    prompt_encoder = None
    if text_encoder is not None:
        text_encoder.to(accelerator.device)
        prompt_encoder = PromptEncoder(tokenizer, text_encoder, args.max_sequence_length)
        if args.precompute_text_embeddings:
            n = prompt_encoder.precompute(list(dataset.records[dataset.text_column]) + [""])
            text_encoder.to("cpu")  # frees the accelerator; validation moves it back on the main process
            logger.info(f"Precomputed text embeddings of {n} distinct captions; text encoder moved to the CPU")

    def conditioning(batch, device):
        if args.class_conditional:
            return None, None, batch["label"].to(device)
        embeds, mask = prompt_encoder(batch["text"], device)
        return embeds, mask, None

    # 4. Parameters that adaptive computation never uses are frozen (see diffusers_hpdm.training.params)
    def probe_loss(model):
        video = torch.zeros(1, 3, *video_size, device=accelerator.device)
        embeds = mask = labels = None
        if args.class_conditional:
            labels = torch.zeros(1, dtype=torch.long, device=accelerator.device)
        else:
            embeds, mask = prompt_encoder([""], accelerator.device)
        return hpdm_loss(model, noise_scheduler, video, embeds, mask, labels, torch.Generator().manual_seed(0)).loss

    transformer.to(accelerator.device)
    frozen = unused_parameters(transformer, probe_loss)
    freeze_parameters(transformer, frozen)
    if frozen:
        modules = sorted({name.rsplit(".", 1)[0] for name in frozen})
        logger.info(f"Froze {len(frozen)} parameters that training never uses (adaptive computation): {modules}")
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()

    # 5. Optimizer (LAMB), schedule, Accelerate, EMA
    optimizer = Lamb(
        lamb_param_groups(transformer, args.weight_decay),
        lr=args.learning_rate,
        betas=tuple(args.lamb_betas),
        weight_decay=args.weight_decay,
        eps=args.lamb_eps,
    )
    # The prepared schedule steps once per process per optimizer step (accelerate convention).
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    transformer, optimizer, lr_scheduler = accelerator.prepare(transformer, optimizer, lr_scheduler)
    model = accelerator.unwrap_model(transformer)
    ema = EMA(
        model, half_life=args.ema_half_life, rampup_ratio=args.ema_rampup_ratio if args.ema_rampup_ratio > 0 else None
    )

    sampler = ShardedBatchSampler(
        len(dataset), args.train_batch_size, accelerator.num_processes, accelerator.process_index, seed
    )
    dataloader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_videos, num_workers=args.dataloader_num_workers
    )

    # 6. Resume: model/optimizer/schedule/RNG (accelerate), EMA, counters and data order
    global_step, total_skipped, epoch, start_batch = 0, 0, 0, 0
    if resume is not None:
        logger.info(f"Resuming from {resume}")
        accelerator.load_state(str(resume))
        ema.load(resume)
        global_step = resume_state["global_step"]
        total_skipped = resume_state["num_skipped"]
        sampler.load_state_dict(resume_state["data_order"])
        epoch, start_batch = sampler.epoch, sampler.start_batch
        if start_batch >= len(sampler):
            epoch, start_batch = epoch + 1, 0

    if accelerator.is_main_process:
        accelerator.init_trackers("hpdm", config={k: str(v) for k, v in vars(args).items()})
    global_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"***** Training: {args.max_train_steps} steps, {accelerator.num_processes} process(es) x "
        f"{args.train_batch_size} videos x {args.gradient_accumulation_steps} accumulation = {global_batch} per step, "
        f"{accelerator.distributed_type}, seed {seed}, first step {global_step + 1} *****"
    )

    progress = tqdm(
        range(args.max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    window: list[torch.Tensor] = []
    history: list[tuple[int, float]] = []
    # Randomness of sample i of step t's global batch is keyed by (seed, t, i), however the global batch is split over
    # processes and accumulation micro-steps: position = micro-step * processes * batch + rank * batch + item.
    per_micro = accelerator.num_processes * args.train_batch_size
    rank_offset = accelerator.process_index * args.train_batch_size
    micro_in_step = 0
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    transformer.train()
    done = global_step >= args.max_train_steps
    while not done:
        sampler.set_epoch(epoch, start_batch)
        dataset.set_epoch(epoch)
        for batch_index, batch in enumerate(dataloader, start=start_batch):
            # Skipped items, summed over processes; a step is dropped everywhere if any process has no data left.
            n = len(batch["text"])
            stats = accelerator.reduce(
                torch.tensor([batch["num_skipped"], int(n == 0)], device=accelerator.device), reduction="sum"
            )
            if int(stats[0]):
                total_skipped += int(stats[0])
                logger.warning(f"Skipped {int(stats[0])} unusable item(s) in this batch ({total_skipped} in total)")
            consumed = batch_index + 1
            if int(stats[1]):
                continue
            with accelerator.accumulate(transformer):
                videos = batch["video"].to(accelerator.device)
                embeds, mask, labels = conditioning(batch, accelerator.device)
                first = micro_in_step * per_micro + rank_offset
                generators = sample_generators(seed, global_step, range(first, first + n))
                out = hpdm_loss(
                    transformer, noise_scheduler, videos, embeds, mask, labels, generators,
                    cond_drop_prob=args.cond_drop_prob,
                )  # fmt: skip
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    # A global norm that does not depend on sharding (FSDP2 == single process, bitwise)
                    clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            window.append(torch.cat([out.loss.detach()[None], out.level_losses]))
            micro_in_step += 1
            if not accelerator.sync_gradients:
                continue
            micro_in_step = 0

            # One optimizer step done
            ema.update(model)
            global_step += 1
            progress.update(1)
            logs = accelerator.reduce(torch.stack(window).mean(0), reduction="mean").cpu()
            window = []
            history.append((global_step, float(logs[0])))
            lr = lr_scheduler.get_last_lr()[0]
            progress.set_postfix(loss=f"{float(logs[0]):.4f}", lr=f"{lr:.2e}")
            accelerator.log(
                {"train/loss": float(logs[0]), "train/lr": lr, "data/num_skipped": total_skipped}
                | {f"train/loss_level_{level}": float(v) for level, v in enumerate(logs[1:])},
                step=global_step,
            )
            if global_step % args.logging_steps == 0 or global_step == args.max_train_steps:
                recent = [v for _, v in history[-args.logging_steps :]]
                logger.info(
                    f"step {global_step}: loss {sum(recent) / len(recent):.4f} (levels "
                    f"{' / '.join(f'{float(v):.3f}' for v in logs[1:])}), lr {lr:.2e}, skipped items {total_skipped}"
                )
            state = {
                "global_step": global_step,
                "num_skipped": total_skipped,
                "seed": seed,
                "data_order": {**sampler.state_dict(), "epoch": epoch, "start_batch": consumed},
            }
            if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
                save_checkpoint(accelerator, ema, state, args, (tokenizer, text_encoder) if text_built_here else None)
            if (
                args.validation_steps
                and global_step % args.validation_steps == 0
                and global_step < args.max_train_steps
            ):
                validate(
                    args, accelerator, ema, model_config, noise_scheduler, tokenizer, text_encoder, global_step, seed
                )
            if global_step >= args.max_train_steps:
                done = True
                break
        epoch, start_batch = epoch + 1, 0
    progress.close()

    # 7. Final pipeline with the EMA weights, model card, validation videos, Hub
    ema_state = ema.state_dict()  # collective: every process
    if accelerator.is_main_process:
        pipe = ema_pipeline(ema_state, model_config, noise_scheduler, tokenizer, text_encoder)
        pipe.save_pretrained(args.output_dir)
        videos = []
        if (args.validation_prompts and not args.class_conditional) or (
            args.class_conditional and args.validation_class_labels
        ):
            videos = log_validation(pipe, args, accelerator, global_step, seed)
        summary = summarize(history, total_skipped)
        write_card(args, model_config, summary, videos)
        logger.info(summary)
        logger.info(f"Saved the pipeline (EMA weights) to {args.output_dir}")
        if args.push_to_hub:
            push_to_hub(args)
    accelerator.wait_for_everyone()
    accelerator.end_training()


def validate(args, accelerator, ema, model_config, noise_scheduler, tokenizer, text_encoder, step, seed) -> None:
    ema_state = ema.state_dict()  # collective
    if accelerator.is_main_process and (args.validation_prompts or args.class_conditional):
        pipe = ema_pipeline(ema_state, model_config, noise_scheduler, tokenizer, text_encoder)
        log_validation(pipe, args, accelerator, step, seed)
    accelerator.wait_for_everyone()


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
    write_model_card(
        args.output_dir,
        repo_id=args.hub_model_id,
        title=f"HPDM {Path(args.output_dir).name}",
        description=f"{model_config['num_levels']}-level pyramid trained from "
        + ("a low-resolution base." if base else "scratch."),
        example_prompt=prompt,
        training=training,
        base_model=base if base and not os.path.exists(base) else None,
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


if __name__ == "__main__":
    main(parse_args())
