"""Command-line arguments of ``train_t2v.py`` (see ``docs/training.md``)."""

from __future__ import annotations

import argparse

from diffusers_hpdm import PRESETS

DEFAULT_DATA_DIR = "./data/synthetic"


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
        help="JSON dict of HPDMTransformer config values overriding the preset, e.g. '{\"num_blocks\": 2}'. "
        "With --pretrained_base: values that keep the base's weight shapes, and context_fusion (HPDMTransformer.from_base).",
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
    # LoRA
    g = parser.add_argument_group("LoRA (fine-tune a pretrained pipeline with low-rank adapters)")
    g.add_argument(
        "--rank",
        type=int,
        default=None,
        help="LoRA mode: train rank-r adapters on --lora_target_modules of --pretrained_base's transformer (frozen), "
        "with AdamW and no EMA, and save the adapter (pytorch_lora_weights.safetensors) instead of a pipeline. "
        "Default: full training.",
    )
    g.add_argument("--lora_alpha", type=float, default=None, help="LoRA scaling numerator (default: --rank).")
    g.add_argument(
        "--lora_target_modules",
        default="to_q,to_k,to_v,to_out.0",
        help="Comma-separated module names (suffixes) that get adapters; default: every attention projection.",
    )
    # Noise
    g = parser.add_argument_group("noise (scheduler)")
    g.add_argument(
        "--p_mean",
        type=float,
        default=None,
        help="Mean of ln(sigma) at level 0 during training (default -1.2, or the base's when fine-tuning).",
    )
    g.add_argument(
        "--p_std", type=float, default=None, help="Std of ln(sigma) (default 1.2, or the base's when fine-tuning)."
    )
    g.add_argument(
        "--high_noise_fraction",
        type=float,
        default=None,
        help="Fraction of samples drawn at high noise, ln(sigma) ~ N(--high_noise_p_mean, --high_noise_p_std), "
        "instead of N(p_mean, p_std) (default 0: the single log-normal).",
    )
    g.add_argument("--high_noise_p_mean", type=float, default=None, help="Mean of ln(sigma) there (default 3).")
    g.add_argument("--high_noise_p_std", type=float, default=None, help="Std of ln(sigma) there (default 0.1).")
    g.add_argument(
        "--clean_context_fraction",
        type=float,
        default=None,
        help="Fraction of samples whose coarser levels (below a random cut level) are drawn almost clean, "
        "ln(sigma) ~ N(--clean_context_p_mean, --clean_context_p_std), as the pipeline's context sees them "
        "(default 0: independent levels).",
    )
    g.add_argument("--clean_context_p_mean", type=float, default=None, help="Mean of ln(sigma) there (default -2.3).")
    g.add_argument("--clean_context_p_std", type=float, default=None, help="Std of ln(sigma) there (default 0.5).")
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
        "--dataset_name",
        default=None,
        help="A dataset read with datasets.load_dataset: a Hub id (e.g. user/clips) or a local folder of data files "
        "(train.jsonl, parquet, ...). Replaces --train_data_dir.",
    )
    g.add_argument("--dataset_config_name", default=None, help="The dataset's configuration, if it has several.")
    g.add_argument("--cache_dir", default=None, help="Download cache of datasets (--dataset_name).")
    g.add_argument(
        "--video_column",
        default=None,
        help="Column with the videos (a Video/Image feature or a path). Default: the first of file_name, video, image.",
    )
    g.add_argument("--caption_column", default="text", help="Column with the captions.")
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
    g.add_argument(
        "--learning_rate",
        type=float,
        default=None,
        help="Peak learning rate (default: 5e-3 for LAMB, the paper's; 1e-4 for AdamW in LoRA mode).",
    )
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
    g.add_argument(
        "--keep_condition_above_sigma",
        type=float,
        default=None,
        help="Samples whose level-0 sigma is above this are never conditioning-dropped (default: dropout at every "
        "sigma).",
    )
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
    if args.rank is not None:
        if args.rank < 1:
            parser.error(f"--rank must be >= 1, got {args.rank}.")
        if not args.pretrained_base:
            parser.error("--rank (LoRA) fine-tunes a pretrained pipeline: pass --pretrained_base <saved pipeline>.")
        if args.num_levels is not None or args.levels_per_block is not None:
            parser.error("--rank (LoRA) keeps the base's pyramid: drop --num_levels / --levels_per_block.")
    if args.learning_rate is None:
        args.learning_rate = 1e-4 if args.rank else 5e-3
    if args.lora_alpha is None and args.rank:
        args.lora_alpha = float(args.rank)
    return args
