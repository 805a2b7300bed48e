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
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from diffusers.optimization import get_scheduler
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from train_t2v_args import DEFAULT_DATA_DIR, parse_args  # the script's folder is on sys.path
from train_t2v_components import (
    build_scheduler,
    build_text_conditioning,
    build_transformer,
    default_video_size,
    ema_pipeline,
    load_dataset,
    log_validation,
    num_dataset_classes,
    push_to_hub,
    summarize,
    write_card,
)
from train_t2v_lora import add_lora, lora_pipeline, save_adapter

from diffusers_hpdm.data import collate_videos, generate_dataset
from diffusers_hpdm.training import (
    EMA,
    TRAINING_STATE_NAME,
    Lamb,
    PromptEncoder,
    ShardedBatchSampler,
    SkipMonitor,
    atomic_checkpoint,
    check_checkpoint,
    clip_grad_norm_,
    enable_cpu_fsdp,
    freeze_parameters,
    hpdm_loss,
    lamb_param_groups,
    prune_checkpoints,
    remove_incomplete,
    resolve_checkpoint,
    sample_generators,
    unused_parameters,
)

logger = get_logger(__name__, log_level="INFO")


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
        if ema is not None:  # LoRA mode trains without EMA
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


def check_resume_checkpoint(resume: Path | None, accelerator) -> dict | None:
    """The checkpoint's validated training state, on every process; a ValueError naming every piece of state
    (weights, optimizer, lr schedule, EMA, RNG of each process, data order) it cannot restore."""
    if resume is None:
        return None
    return check_checkpoint(resume, accelerator.num_processes)


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
    if args.rank and accelerator.distributed_type == "FSDP":
        raise ValueError("--rank (LoRA) runs single-process or DDP; FSDP would shard the adapter. Use a DDP config.")
    if accelerator.mixed_precision == "fp16":
        raise ValueError("fp16 is not supported (the paper saw worse convergence with any mixed precision); use bf16.")
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True

    # 1. Resume point and seed (a resumed run keeps its checkpoint's seed: randomness is keyed by it)
    resume = find_resume_checkpoint(args, accelerator)
    resume_state = check_resume_checkpoint(resume, accelerator)  # every process: all raise or none
    seed = args.seed
    if resume_state is not None:
        if seed is not None and seed != resume_state["seed"]:
            logger.warning(f"--seed {seed} ignored: resuming a run with seed {resume_state['seed']}.")
        seed = resume_state["seed"]
    if seed is None:
        seed = broadcast_object_list([int(torch.randint(0, 2**31 - 1, ()).item())])[0]
    set_seed(seed)

    # 2. Data (the default synthetic folder is generated once, by the main process)
    if not args.dataset_name and os.path.normpath(args.train_data_dir) == os.path.normpath(DEFAULT_DATA_DIR):
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

    if args.rank:
        adapter = add_lora(transformer, args)
        logger.info(f"LoRA rank {args.rank} on {args.lora_target_modules}: {len(adapter)} adapter tensors train")
    transformer.to(accelerator.device)
    frozen = unused_parameters(transformer, probe_loss)
    freeze_parameters(transformer, frozen)
    if frozen:
        modules = sorted({name.rsplit(".", 1)[0] for name in frozen})
        logger.info(f"Froze {len(frozen)} parameters that training never uses (adaptive computation): {modules}")
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()

    # 5. Optimizer (LAMB; AdamW on the adapters in LoRA mode), schedule, Accelerate, EMA
    if args.rank:
        optimizer = torch.optim.AdamW(
            [p for p in transformer.parameters() if p.requires_grad],
            lr=args.learning_rate,
            betas=tuple(args.lamb_betas),
            weight_decay=args.weight_decay,
            eps=args.lamb_eps,
        )
    else:
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
    ema = None
    if not args.rank:
        rampup = args.ema_rampup_ratio if args.ema_rampup_ratio > 0 else None
        ema = EMA(model, half_life=args.ema_half_life, rampup_ratio=rampup)

    sampler = ShardedBatchSampler(
        len(dataset), args.train_batch_size, accelerator.num_processes, accelerator.process_index, seed
    )
    dataloader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_videos, num_workers=args.dataloader_num_workers
    )
    # Stops the run when the data yields nothing (instead of skipping forever); warns when many items are skipped.
    skips = SkipMonitor(len(dataset), reasons=dataset.skipped)

    # 6. Resume: model/optimizer/schedule/RNG (accelerate), EMA, counters and data order
    global_step, total_skipped, epoch, start_batch = 0, 0, 0, 0
    if resume is not None:
        logger.info(f"Resuming from {resume}")
        accelerator.load_state(str(resume))
        if ema is not None:
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
                torch.tensor([batch["num_skipped"], int(n == 0), n], device=accelerator.device), reduction="sum"
            )
            skips.update(used=int(stats[2]), skipped=int(stats[0]))
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
                    cond_drop_prob=args.cond_drop_prob, keep_condition_above_sigma=args.keep_condition_above_sigma,
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
            if ema is not None:
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
                    args, accelerator, ema, model, model_config, noise_scheduler, tokenizer, text_encoder,
                    global_step, seed,
                )  # fmt: skip
            if global_step >= args.max_train_steps:
                done = True
                break
        if not done:
            skips.end_epoch(epoch)
        epoch, start_batch = epoch + 1, 0
    progress.close()

    # 7. Final pipeline with the EMA weights (LoRA mode: the adapter), model card, validation videos, Hub
    if args.rank:
        if accelerator.is_main_process:
            save_adapter(args, accelerator, model, history, total_skipped, global_step, seed)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return
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


def validate(args, accelerator, ema, model, model_config, noise_scheduler, tokenizer, text_encoder, step, seed):
    ema_state = ema.state_dict() if ema is not None else None  # collective
    if accelerator.is_main_process and (args.validation_prompts or args.class_conditional):
        if ema is None:  # LoRA mode: the base pipeline with the current adapter
            pipe = lora_pipeline(model, args)
        else:
            pipe = ema_pipeline(ema_state, model_config, noise_scheduler, tokenizer, text_encoder)
        log_validation(pipe, args, accelerator, step, seed)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(parse_args())
