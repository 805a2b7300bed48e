"""Reference model: what a standard diffusers video diffusion model reaches on this CPU budget, as a yardstick for HPDM.

A tiny `diffusers.UNet3DConditionModel` (pixel space, text-conditioned through cross-attention on the frozen tiny T5
that the HPDM demo recipe uses) is trained on the same moving-shapes clips (`data/shapes`, area-downsampled to
``--size`` exactly as HPDM's level 0 sees them) for a wall-clock budget at one thread, then samples the held-out
prompts of `hpdm evaluate` (video ``i`` from seed ``i``) and scores them with the same analytic detector. A miss of the
HPDM model that this model also shows at the same budget is the budget's; one it does not show is the method's.

Recipe: v-prediction on a cosine `DDPMScheduler` (`add_noise` / `get_velocity`), AdamW, conditioning dropout 0.1
(the empty prompt's embedding), EMA with warm-up, classifier-free guidance at sampling with
`DPMSolverMultistepScheduler`. Results: ``benchmarks/results/reference_model_<F>x<H>x<W>[_<name>].json``; the EMA
model (unet/, scheduler/, text_encoder/, tokenizer/, training.json) goes to ``--output-dir``.

    .venv/bin/python benchmarks/reference_model.py --size 4 16 16 --budget-seconds 3000      # HPDM demo's ~50 min
    .venv/bin/python benchmarks/reference_model.py --size 16 64 64 --budget-seconds 3000 --num-videos 8  # ~3 min/video
    .venv/bin/python benchmarks/reference_model.py --size 4 16 16 --eval-only --num-videos 64  # re-score the saved one
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import save, setup_threads, table  # noqa: E402
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet3DConditionModel  # noqa: E402
from diffusers.optimization import get_scheduler  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402
from transformers import AutoTokenizer, T5EncoderModel  # noqa: E402

from diffusers_hpdm.data import read_frames  # noqa: E402
from diffusers_hpdm.evaluation import prompt_following_accuracy  # noqa: E402
from diffusers_hpdm.evaluation.run import evaluation_prompts, real_clips  # noqa: E402
from diffusers_hpdm.geometry import area_downsample  # noqa: E402
from diffusers_hpdm.text import build_tiny_text_encoder, build_word_tokenizer  # noqa: E402
from diffusers_hpdm.training import PromptEncoder  # noqa: E402

MAX_TOKENS = 16  # the demo recipe's --max_sequence_length
WIDTHS = {64: 16, 32: 32, 16: 32, 8: 64}  # block width by spatial resolution


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, nargs=3, default=[4, 16, 16], metavar=("F", "H", "W"))
    p.add_argument("--budget-seconds", type=float, default=None, help="stop training after this much training time")
    p.add_argument(
        "--budget-clock", choices=["wall", "cpu"], default="wall", help="cpu: process time (fairer under load)"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="stop after this many steps (with a budget: whichever first)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--cond-drop-prob", type=float, default=0.1)
    p.add_argument("--block-out-channels", type=int, nargs="+", default=None, help="default: by size, see unet_config")
    p.add_argument("--data-dir", default="data/shapes")
    p.add_argument("--num-train-videos", type=int, default=None, help="first N clips only (default: all)")
    p.add_argument("--clip-cache", default="outputs/reference", help="folder of the decoded clips (.npy)")
    p.add_argument("--num-videos", type=int, default=32, help="held-out evaluation videos")
    p.add_argument("--num-inference-steps", type=int, default=32)
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="training seed; evaluation video i uses seed i")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--output-dir", default=None, help="default: outputs/reference/<F>x<H>x<W>")
    p.add_argument("--eval-only", action="store_true", help="score the model saved in --output-dir")
    p.add_argument("--name", default=None, help="suffix of the results file (short or trial runs)")
    args = p.parse_args(argv)
    if not args.eval_only and args.budget_seconds is None and args.steps is None:
        p.error("give --budget-seconds and/or --steps (or --eval-only)")
    args.tag = "x".join(map(str, args.size))
    args.output_dir = args.output_dir or f"outputs/reference/{args.tag}"
    return args


def unet_config(size: tuple[int, int, int], text_dim: int, channels: list[int] | None = None) -> dict:
    """One block per spatial resolution from H down to 8, widths by resolution (4x16x16: 32, 64; 16x64x64: 16, 32,
    32, 64, i.e. the 16x16 model behind two cheap full-resolution blocks), attention (self + cross to the text) only
    at 16x16 and below. The 3D UNet never downsamples time; ``transformer_in`` (temporal, 8 heads of 8) runs at full
    resolution whatever the widths."""
    h = min(size[1:])
    n = len(channels) if channels else 1 + max(0, int(math.log2(max(h // 8, 1))))
    channels = channels or [WIDTHS.get(h // 2**i, 16 if h // 2**i > 64 else 64) for i in range(n)]
    if h % 2 ** (n - 1):
        raise ValueError(f"H and W must be divisible by {2 ** (n - 1)} for {n} blocks, got {size}.")
    attn = [h // 2**i <= 16 for i in range(n)]
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=tuple("CrossAttnDownBlock3D" if a else "DownBlock3D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(attn)),
        block_out_channels=tuple(channels),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=text_dim,
        attention_head_dim=8,  # per-head width in the blocks (diffusers passes it so); 8 heads of 8 in transformer_in
    )


def text_conditioning(captions: list[str]) -> tuple:
    """The demo recipe's frozen encoder: a word tokenizer over the captions and the seed-0 tiny T5, 64 wide (equal,
    weight for weight, to ``models/hpdm-shapes-demo/text_encoder``)."""
    tokenizer = build_word_tokenizer(captions, MAX_TOKENS)
    return tokenizer, build_tiny_text_encoder(tokenizer, d_model=64, seed=0)


def load_clips(data_dir: str, limit: int | None, cache_dir: str) -> tuple[torch.Tensor, list[str]]:
    """Every training clip, uint8 ``(N, F, H, W, 3)`` at the dataset's size (decoded once into ``cache_dir``)."""
    meta = Path(data_dir, "metadata.jsonl")
    rows = [json.loads(line) for line in open(meta) if line.strip()]
    rows = [r for r in rows if r.get("split", "train") == "train"][:limit]
    cache = Path(cache_dir, f"{Path(data_dir).resolve().name}_{len(rows)}_{int(meta.stat().st_mtime)}.npy")
    if cache.is_file():
        clips = np.load(cache)
    else:
        t0 = time.perf_counter()
        clips = np.stack([read_frames(Path(data_dir, r["file_name"])) for r in rows])
        print(f"decoded {len(rows)} clips {clips.shape[1:]} in {time.perf_counter() - t0:.0f} s -> {cache}")
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, clips)
    return torch.from_numpy(clips), [r["text"] for r in rows]


def to_model_space(clips: torch.Tensor, size) -> torch.Tensor:
    """uint8 ``(B, F, H, W, 3)`` -> ``(B, 3, *size)`` in [-1, 1], box-filtered like HPDM's level canvases."""
    video = clips.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    return area_downsample(video, size)


def train(args, unet, noise_scheduler, clips, captions, encode) -> tuple[UNet3DConditionModel, dict]:
    """Train until the budget or the step count is reached; returns the EMA model and a record."""
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=1e-2)
    lr_schedule = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=args.warmup_steps)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, power=3 / 4, foreach=True)
    gen = torch.Generator().manual_seed(args.seed)
    null = encode([""])  # (1, S, E): the dropped condition
    clock = time.process_time if args.budget_clock == "cpu" else time.perf_counter
    order, pos, step = torch.randperm(len(clips), generator=gen), 0, 0
    used, cpu_used, t_log = 0.0, 0.0, time.perf_counter()  # budget clock / process time spent in training steps
    window: list[float] = []
    history: list[dict] = []
    unet.train()
    while (args.steps is None or step < args.steps) and (args.budget_seconds is None or used < args.budget_seconds):
        t0, c0 = clock(), time.process_time()
        if pos + args.batch_size > len(order):
            order, pos = torch.randperm(len(clips), generator=gen), 0
        idx = order[pos : pos + args.batch_size]
        pos += args.batch_size
        x0 = to_model_space(clips[idx], args.size)  # (B, 3, F, H, W)
        embeds = encode([captions[i] for i in idx.tolist()])  # (B, S, E)
        drop = torch.rand(len(idx), generator=gen) < args.cond_drop_prob
        embeds = torch.where(drop[:, None, None], null, embeds)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        pred = unet(noise_scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=embeds).sample
        loss = F.mse_loss(pred, noise_scheduler.get_velocity(x0, noise, t))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.step(unet.parameters())
        step += 1
        used += clock() - t0
        cpu_used += time.process_time() - c0
        window.append(loss.item())
        if step % args.log_every == 0:
            rate = len(window) / (time.perf_counter() - t_log)
            history.append({"step": step, "loss": float(np.mean(window)), "steps_per_s": rate, "seconds": used})
            print(f"step {step}: loss {np.mean(window):.4f}, {rate:.2f} steps/s, {used:.0f} s used", flush=True)
            window, t_log = [], time.perf_counter()
    ema_unet = copy.deepcopy(unet).eval()
    ema.copy_to(ema_unet.parameters())
    record = {
        "steps": step,
        "budget_clock": args.budget_clock,
        "train_seconds": used,
        "train_cpu_seconds": cpu_used,
        "steps_per_s": step / max(used, 1e-9),
        "samples_seen": step * args.batch_size,
        "loss_history": history,
        "final_loss": float(np.mean(window)) if window else (history[-1]["loss"] if history else None),
    }
    return ema_unet, record


@torch.no_grad()
def sample(args, unet, noise_scheduler, prompts: list[str], encode) -> np.ndarray:
    """uint8 ``(N, F, H, W, 3)``; video ``i`` starts from the noise of ``torch.Generator().manual_seed(i)``."""
    # explicit spacing: a fresh DDPMScheduler's config marks its defaults (DDPM's "leading") as unset, so from_config
    # would take DPM-Solver's "linspace", but a reloaded one would pass "leading" on
    solver = DPMSolverMultistepScheduler.from_config(
        noise_scheduler.config, timestep_spacing="linspace", steps_offset=0
    )
    null = encode([""])
    out = []
    for start in range(0, len(prompts), args.eval_batch_size):
        chunk = prompts[start : start + args.eval_batch_size]
        cond = encode(chunk)  # (B, S, E)
        context = torch.cat([null.expand_as(cond), cond])  # (2B, S, E)
        x = torch.stack(
            [
                torch.randn((3, *args.size), generator=torch.Generator().manual_seed(start + i))
                for i in range(len(chunk))
            ]
        )
        solver.set_timesteps(args.num_inference_steps)
        for t in solver.timesteps:
            uncond, text = unet(torch.cat([x, x]), t, encoder_hidden_states=context).sample.chunk(2)
            x = solver.step(uncond + args.guidance_scale * (text - uncond), t, x).prev_sample
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1))  # (B, F, H, W, 3)
    return torch.cat(out).numpy()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_threads(args.threads)
    out_dir = Path(args.output_dir)
    if args.eval_only:
        unet = UNet3DConditionModel.from_pretrained(str(out_dir / "unet"))
        noise_scheduler = DDPMScheduler.from_pretrained(str(out_dir / "scheduler"))
        tokenizer = AutoTokenizer.from_pretrained(str(out_dir / "tokenizer"))
        text_encoder = T5EncoderModel.from_pretrained(str(out_dir / "text_encoder"))
        record = json.loads((out_dir / "training.json").read_text())
    else:
        clips, captions = load_clips(args.data_dir, args.num_train_videos, args.clip_cache)
        tokenizer, text_encoder = text_conditioning(captions)
        prompt_encoder = PromptEncoder(tokenizer, text_encoder, MAX_TOKENS)
        prompt_encoder.precompute(captions + [""])
        torch.manual_seed(args.seed)
        unet = UNet3DConditionModel(**unet_config(args.size, text_encoder.config.d_model, args.block_out_channels))
        noise_scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
        n_params = sum(p.numel() for p in unet.parameters())
        print(f"UNet3DConditionModel {n_params / 1e6:.2f}M parameters, {len(clips)} clips at {args.tag}")
        unet, record = train(args, unet, noise_scheduler, clips, captions, lambda t: prompt_encoder(t, "cpu")[0])
        record |= {"num_parameters": n_params, "args": {k: v for k, v in vars(args).items() if k != "tag"}}
        for part, obj in (
            ("unet", unet),
            ("scheduler", noise_scheduler),
            ("tokenizer", tokenizer),
            ("text_encoder", text_encoder),
        ):
            obj.save_pretrained(out_dir / part)
        (out_dir / "training.json").write_text(json.dumps(record, indent=1))
    unet.eval()
    prompt_encoder = PromptEncoder(tokenizer, text_encoder, MAX_TOKENS)
    encode = lambda t: prompt_encoder(t, "cpu")[0]  # noqa: E731

    prompts = evaluation_prompts(args.num_videos)
    t0 = time.perf_counter()
    videos = sample(args, unet, noise_scheduler, prompts, encode)
    sample_s = time.perf_counter() - t0
    accuracy = prompt_following_accuracy(list(videos), prompts)
    # the detector's ceiling twice: clips rendered at this size (`hpdm evaluate`'s real_clips) and the dataset-size
    # clips box-filtered to it (what this model and HPDM's level 0 are trained on)
    real = real_clips(prompts, tuple(args.size))
    info = Path(args.data_dir, "dataset_info.json")
    info = json.loads(info.read_text()) if info.is_file() else dict(num_frames=16, height=64, width=64)
    full = torch.from_numpy(real_clips(prompts, (info["num_frames"], info["height"], info["width"])))
    real_boxed = ((to_model_space(full, args.size) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)
    evaluation = {
        "num_videos": len(prompts),
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "sampler": "DPMSolverMultistepScheduler (dpmsolver++, order 2, linspace)",
        "seconds": sample_s,
        "accuracy": accuracy,
        "real_clips_accuracy": prompt_following_accuracy(list(real), prompts),
        "real_clips_box_filtered_accuracy": prompt_following_accuracy(list(real_boxed.numpy()), prompts),
    }
    rows = [
        {"videos": k, **v}
        for k, v in (
            ("generated", accuracy),
            ("real", evaluation["real_clips_accuracy"]),
            ("real, box-filtered", evaluation["real_clips_box_filtered_accuracy"]),
        )
    ]
    print(table(rows, ["videos", "colour", "shape", "direction", "speed", "all"]))
    payload = {
        "size": args.size,
        "eval_only": args.eval_only,
        "model": dict(unet.config),
        "training": record,
        "evaluation": evaluation,
    }
    path = save(f"reference_model_{args.tag}" + (f"_{args.name}" if args.name else ""), payload)
    print(f"steps {record['steps']}, {record['train_seconds']:.0f} s ({record['steps_per_s']:.2f} steps/s) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
