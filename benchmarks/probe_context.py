"""Probe: does a finer level follow a *real* coarse level? (paper table 3: deep > shallow > none fusion; coordinates
help.)

A 2-level model (tiny-t2v preset, 4x16x16 patches -> 8x32x32 videos) is trained jointly from scratch with
``examples/train_t2v.py`` on the synthetic shapes for ``--steps`` steps, once per variant and seed. Then, for
``--num-videos`` held-out prompts, the real clip of the prompt (rendered at 16x64x64, area-downsampled) is given
to the pipeline as level 0 (``pipe(prompt, video=level_0)``) and only level 1 is sampled. Scored against the real
clip at level 1's size:

* ``psnr_real``: PSNR of the sampled level 1 vs the real level-1 clip (what the fine level should draw);
* ``psnr_context``: PSNR of the sampled level 1, area-downsampled, vs the given level 0 (does it agree with its
  context at all);
* ``shape`` / ``colour`` / ``direction``: the analytic detector on level 1 vs the prompt.

A finer level that ignores its context draws some clip of the prompt: the right colour, a shape and position at
chance, PSNR far from both references. Each (variant, seed) is trained once and cached under ``--work-dir``;
rerunning only evaluates.

    .venv/bin/python benchmarks/probe_context.py --variants deep shallow none deep-nocoords --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import save, setup_threads, table  # noqa: E402

from diffusers_hpdm import HierarchicalPatchPipeline, HPDMTransformer  # noqa: E402
from diffusers_hpdm.evaluation.detector import detect_attributes  # noqa: E402
from diffusers_hpdm.evaluation.run import evaluation_prompts, real_clips  # noqa: E402
from diffusers_hpdm.geometry import area_downsample, extract_patches, sample_nested_boxes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# name: (model overrides, extra training arguments). "deep+shallow" (both paths) was probe 2; the option left the
# model after it (docs/probes.md).
VARIANTS = {
    "deep": ({"context_fusion": "deep"}, []),
    "shallow": ({"context_fusion": "shallow"}, []),
    "none": ({"context_fusion": "none"}, []),
    "deep-nocoords": ({"context_fusion": "deep", "use_coordinates": False}, []),
    # the per-level noise shift (paper §4.5; default sqrt(8) = 2.83 for 2x growth on every axis)
    "shallow-shift1": ({"context_fusion": "shallow"}, ["--level_noise_shift", "1"]),
    "shallow-shift2": ({"context_fusion": "shallow"}, ["--level_noise_shift", "2"]),
    # base then fine-tune (the bundled recipe's shape): the 2-level shallow model starts from a trained 1-level
    # model, `--base-dir`/paper-s<seed> (benchmarks/probe_level0.py's plain preset), instead of from scratch
    "shallow-finetune": ({"context_fusion": "shallow"}, []),
    # the same, but the base's tokenizer gets random (Xavier) context-pixel columns, as a shallow 1-level base has
    # them (level 0's zero context never trains them): from_base's zero columns against what probe 5's base had
    "shallow-finetune-randctx": ({"context_fusion": "shallow"}, []),
    # the same plain base, fine-tuned under the bundled recipe's training noise (examples/train_demo.py's base
    # scheduler: ln sigma ~ N(-0.4, 1.4), half of every batch at sigma ~ 20, conditioning kept above sigma 10),
    # which the bundled model's finer levels train under (probe 13)
    "shallow-finetune-recipenoise": (
        {"context_fusion": "shallow"},
        ["--p_mean", "-0.4", "--p_std", "1.4", "--high_noise_fraction", "0.5", "--keep_condition_above_sigma", "10"],
    ),
}
FROM_BASE = {  # the probe_level0 base they tune
    "shallow-finetune": "paper",
    "shallow-finetune-randctx": "paper",
    "shallow-finetune-recipenoise": "paper",
}
ATTRIBUTES = ("colour", "shape", "direction")
LEVEL_SIZES = [(4, 16, 16), (8, 32, 32)]  # tiny-t2v's patch, 2 levels


def train(variant: str, seed: int, args) -> Path:
    """Train (or reuse) one 2-level model; returns its pipeline folder."""
    out = Path(args.work_dir) / f"{variant}-s{seed}"
    if (out / "model_index.json").exists():
        return out
    cmd = [
        sys.executable, str(ROOT / "examples" / "train_t2v.py"),
        "--train_data_dir", args.data_dir, "--cache_videos", "--preset", "tiny-t2v", "--num_levels", "2",
        "--train_batch_size", str(args.batch_size), "--max_train_steps", str(args.steps), "--seed", str(seed),
        "--lr_warmup_steps", "50", "--ema_half_life", str(args.steps // 8), "--checkpointing_steps", "100000",
        "--logging_steps", "250", "--model_overrides", json.dumps(VARIANTS[variant][0]), *VARIANTS[variant][1], "--output_dir", str(out),
    ]  # fmt: skip
    if variant in FROM_BASE:
        base = Path(args.base_dir) / f"{FROM_BASE[variant]}-s{seed}"
        if not (base / "model_index.json").exists():
            raise FileNotFoundError(f"{variant} fine-tunes {base}: train it first with benchmarks/probe_level0.py.")
        if variant.endswith("-randctx"):
            base = random_context_columns(
                base, Path(args.work_dir) / f"base-{FROM_BASE[variant]}-randctx-s{seed}", seed
            )
        cmd += ["--pretrained_base", str(base)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or 1)}
    start, cpu_before = time.perf_counter(), sum(os.times()[2:4])  # CPU seconds of finished children
    subprocess.run(cmd, check=True, env=env)
    (out / "probe_train_seconds.txt").write_text(f"{time.perf_counter() - start:.0f}\n")
    (out / "probe_train_cpu_seconds.txt").write_text(f"{sum(os.times()[2:4]) - cpu_before:.0f}\n")
    return out


def random_context_columns(base: Path, out: Path, seed: int) -> Path:
    """``base`` (a 1-level pipeline) as a shallow 1-level pipeline whose tokenizer's context-pixel columns are
    those of a freshly initialised shallow model (seed ``seed``), saved to ``out``."""
    if (out / "model_index.json").exists():
        return out
    pipe = HierarchicalPatchPipeline.from_pretrained(base)
    shallow = HPDMTransformer.from_base(pipe.transformer, 1, context_fusion="shallow")
    torch.manual_seed(seed)
    fresh = HPDMTransformer(**{k: v for k, v in shallow.config.items() if not k.startswith("_")})
    voxels = shallow.config.in_channels * math.prod(shallow.config.tokenizer_patch)
    with torch.no_grad():
        shallow.tokenizer.weight[:, voxels:-3] = fresh.tokenizer.weight[:, voxels:-3]
    pipe.transformer = shallow
    pipe.register_modules(transformer=shallow)
    pipe.save_pretrained(out)
    return out


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two videos in [-1, 1] (peak-to-peak 2)."""
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return float(10 * np.log10(4.0 / max(mse, 1e-12)))


def real_levels(prompts: list[str], args) -> tuple[torch.Tensor, torch.Tensor]:
    """The real clips of ``prompts`` (rendered at 16x64x64) area-downsampled to levels 0 and 1, in [-1, 1]."""
    real = torch.from_numpy(real_clips(prompts, (16, 64, 64), args.eval_seed)).permute(0, 4, 1, 2, 3)
    real = real.float() / 127.5 - 1  # (N, 3, 16, 64, 64)
    return area_downsample(real, LEVEL_SIZES[0]), area_downsample(real, LEVEL_SIZES[1])


def score(fine: torch.Tensor, level0: torch.Tensor, level1: torch.Tensor) -> dict:
    """Scores of one level-1 video ``fine`` ``(3, 8, 32, 32)`` against the real clip's two levels."""
    found = detect_attributes(((fine + 1) / 2).permute(1, 2, 3, 0).clamp(0, 1).numpy())
    wanted = detect_attributes(((level1 + 1) / 2).permute(1, 2, 3, 0).numpy())
    return {
        "psnr_real": psnr(fine, level1),
        "psnr_context": psnr(area_downsample(fine[None], LEVEL_SIZES[0])[0], level0),
        **{a: float(found[a] == wanted[a]) for a in ATTRIBUTES},
    }


def mean_scores(rows: list[dict]) -> dict:
    return {key: statistics.mean(r[key] for r in rows) for key in rows[0]}


def upsampled_context(prompts: list[str], args) -> dict:
    """The no-model yardstick: the real level 0 trilinearly upsampled to level 1 (what a level that copies its
    context and adds nothing would draw)."""
    level0, level1 = real_levels(prompts, args)
    up = torch.nn.functional.interpolate(level0, size=LEVEL_SIZES[1], mode="trilinear", align_corners=False)
    return mean_scores([score(up[k], level0[k], level1[k]) for k in range(len(prompts))])


@torch.no_grad()
def context_usage(pipe, prompts: list[str], args, sigmas_1=(0.5, 2.0, 8.0), sigma_0: float = 0.1) -> dict:
    """Teacher-forced: level 1's denoising error (x0 MSE) with its real level-0 context over the error with the
    level-0 context of *another* clip (the batch rolled by one), on the nested training patches of the held-out
    clips, level 0 noised to ``sigma_0`` (the pipeline's context_sigma), level 1 at each of ``sigmas_1``. 1.0: the
    context is not used (exactly 1 for ``"none"``); far below 1: level 1 reads its context. Also the PSNR of that
    denoised estimate (with the real context) against the real patch."""
    tm, sch = pipe.transformer, pipe.scheduler
    level0, level1 = real_levels(prompts, args)
    g = torch.Generator().manual_seed(args.eval_seed)
    boxes = sample_nested_boxes(len(prompts), tm.config.patch_size, 2, tm.config.level_growth, generator=g)
    x0 = extract_patches(level1, boxes, tm.config.patch_size)  # (N, 2, C, f, h, w): level 0 = whole clip
    embeds, mask, _, _ = pipe.encode_prompt(prompts, None, False, 1, None, None, None, None, 16)
    ratios = {}
    for s1 in sigmas_1:
        sig = torch.tensor([sigma_0, s1]).expand(len(prompts), 2)  # (N, 2)
        noise = torch.randn(x0.shape, generator=g)
        x_noisy = sch.add_noise_at_sigmas(x0, noise, sig)
        c_skip, c_out, c_in, c_noise = (sch.broadcast_sigma(c, x_noisy) for c in sch.precondition(sig))
        errors = []
        for shuffle in (False, True):
            x_in = (c_in * x_noisy).clone()
            if shuffle:  # level 0 (input and box) of the next clip
                x_in[:, 0] = x_in[:, 0].roll(1, 0)
            out = tm(x_in, sch.precondition(sig)[3], boxes, encoder_hidden_states=embeds,
                     encoder_attention_mask=mask).sample  # fmt: skip
            x0_hat = c_skip[:, 1] * x_noisy[:, 1] + c_out[:, 1] * out[:, 1]
            errors.append(torch.mean((x0_hat - x0[:, 1]) ** 2).item())
        ratios[f"context_mse_ratio_s{s1:g}"] = errors[0] / errors[1]
        ratios[f"denoised_psnr_s{s1:g}"] = float(10 * np.log10(4.0 / errors[0]))  # with the real context
    return ratios


@torch.no_grad()
def evaluate(folder: Path, prompts: list[str], args) -> dict:
    """Scores of one trained model, cached in ``folder`` per evaluation setting."""
    ctx = "" if args.context_sigma == 0.1 else f"_c{args.context_sigma:g}"  # 0.1: the pipeline's default
    cache = folder / f"probe_eval_{len(prompts)}v_{args.inference_steps}s_g{args.guidance}_e{args.eval_seed}{ctx}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    pipe = HierarchicalPatchPipeline.from_pretrained(folder)
    assert [tuple(s) for s in pipe.transformer.level_sizes] == LEVEL_SIZES
    level0, level1 = real_levels(prompts, args)
    usage = context_usage(pipe, prompts, args)
    rows = []
    for i in range(0, len(prompts), args.eval_batch):
        batch = slice(i, i + args.eval_batch)
        generators = [torch.Generator().manual_seed(args.eval_seed + j) for j in range(i, i + len(prompts[batch]))]
        out = pipe(
            prompts[batch], video=level0[batch], num_inference_steps=args.inference_steps,
            guidance_scale=args.guidance, generator=generators, output_type="pt", return_levels=True,
            context_sigma=args.context_sigma,
        )  # fmt: skip
        fine = out.frames.permute(0, 2, 1, 3, 4) * 2 - 1  # (n, 3, 8, 32, 32) in [-1, 1]
        rows += [score(fine[j], level0[i + j], level1[i + j]) for j in range(len(fine))]
    scores = {**mean_scores(rows), **usage}
    cache.write_text(json.dumps(scores))
    return scores


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--data-dir", default="data/shapes")
    p.add_argument("--work-dir", default="outputs/probe_context")
    p.add_argument("--base-dir", default="outputs/probe_level0", help="the 1-level bases of *-finetune variants")
    p.add_argument("--num-videos", type=int, default=32)
    p.add_argument("--inference-steps", type=int, default=16, help="level 1 gets half (appendix C)")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--context-sigma", type=float, default=0.1, help="the pipeline's context_sigma at inference")
    p.add_argument("--eval-seed", type=int, default=0)
    p.add_argument("--eval-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--name", default="probe_context", help="results file name")
    p.add_argument("--train-only", action="store_true", help="train (or reuse) the models, evaluate nothing")
    args = p.parse_args()
    setup_threads(args.threads or 1)
    if not (Path(args.data_dir) / "metadata.jsonl").exists():
        subprocess.run([sys.executable, "-m", "diffusers_hpdm.cli", "make-dataset", args.data_dir], check=True)

    folders = {(v, s): train(v, s, args) for v in args.variants for s in args.seeds}
    if args.train_only:
        return 0
    prompts = evaluation_prompts(args.num_videos)
    results, rows = {}, []
    for variant in args.variants:
        per_seed = []
        for seed in args.seeds:
            folder = folders[variant, seed]
            scores = evaluate(folder, prompts, args)
            seconds = (folder / "probe_train_seconds.txt").read_text().strip()
            per_seed.append({"seed": seed, "train_seconds": int(seconds), **scores})
            print(json.dumps({"variant": variant, **per_seed[-1]}), flush=True)
        results[variant] = per_seed
        row = {"variant": variant}
        for key in ("psnr_real", "psnr_context", *ATTRIBUTES, "context_mse_ratio_s2", "denoised_psnr_s0.5"):
            values = [s[key] for s in per_seed]
            scale, digits = (100, 0) if key in ATTRIBUTES else (1, 2 if key.startswith("context") else 1)
            mean, half_range = scale * statistics.mean(values), scale * (max(values) - min(values)) / 2
            row[key] = f"{mean:.{digits}f} ± {half_range:.{digits}f}"
        rows.append(row)
    baseline = upsampled_context(prompts, args)
    rows.append(
        {
            "variant": "real level 0 upsampled (no model)",
            **{k: f"{(100 if k in ATTRIBUTES else 1) * v:.1f}" for k, v in baseline.items()},
        }
    )
    print(table(rows, list(rows[0])), flush=True)
    path = save(args.name, dict(args=vars(args), results=results, upsampled_context=baseline, table=rows))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
