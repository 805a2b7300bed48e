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

from diffusers_hpdm import HierarchicalPatchPipeline  # noqa: E402
from diffusers_hpdm.evaluation.detector import detect_attributes  # noqa: E402
from diffusers_hpdm.evaluation.run import evaluation_prompts, real_clips  # noqa: E402
from diffusers_hpdm.geometry import area_downsample  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "deep": {"context_fusion": "deep"},
    "shallow": {"context_fusion": "shallow"},
    "none": {"context_fusion": "none"},
    "deep-nocoords": {"context_fusion": "deep", "use_coordinates": False},
}
ATTRIBUTES = ("colour", "shape", "direction")


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
        "--logging_steps", "250", "--model_overrides", json.dumps(VARIANTS[variant]), "--output_dir", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or 1)}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    (out / "probe_train_seconds.txt").write_text(f"{time.perf_counter() - start:.0f}\n")
    return out


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two videos in [-1, 1] (peak-to-peak 2)."""
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return float(10 * np.log10(4.0 / max(mse, 1e-12)))


@torch.no_grad()
def evaluate(folder: Path, prompts: list[str], args) -> dict:
    pipe = HierarchicalPatchPipeline.from_pretrained(folder)
    sizes = pipe.transformer.level_sizes  # [(4, 16, 16), (8, 32, 32)]
    real = torch.from_numpy(real_clips(prompts, (16, 64, 64), args.eval_seed)).permute(0, 4, 1, 2, 3)
    real = real.float() / 127.5 - 1  # (N, 3, 16, 64, 64) in [-1, 1]
    level0, level1 = (area_downsample(real, s) for s in sizes)
    rows = []
    for i in range(0, len(prompts), args.eval_batch):
        batch = slice(i, i + args.eval_batch)
        generators = [torch.Generator().manual_seed(args.eval_seed + j) for j in range(i, i + len(prompts[batch]))]
        out = pipe(
            prompts[batch], video=level0[batch], num_inference_steps=args.inference_steps,
            guidance_scale=args.guidance, generator=generators, output_type="pt", return_levels=True,
        )  # fmt: skip
        fine = out.frames.permute(0, 2, 1, 3, 4) * 2 - 1  # (n, 3, 8, 32, 32) in [-1, 1]
        for j in range(len(prompts[batch])):
            k = i + j
            found = detect_attributes(((fine[j] + 1) / 2).permute(1, 2, 3, 0).clamp(0, 1).numpy())
            wanted = detect_attributes(((level1[k] + 1) / 2).permute(1, 2, 3, 0).numpy())
            rows.append(
                {
                    "psnr_real": psnr(fine[j], level1[k]),
                    "psnr_context": psnr(area_downsample(fine[j : j + 1], sizes[0])[0], level0[k]),
                    **{a: float(found[a] == wanted[a]) for a in ATTRIBUTES},
                }
            )
    return {key: statistics.mean(r[key] for r in rows) for key in rows[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--data-dir", default="data/shapes")
    p.add_argument("--work-dir", default="outputs/probe_context")
    p.add_argument("--num-videos", type=int, default=32)
    p.add_argument("--inference-steps", type=int, default=16, help="level 1 gets half (appendix C)")
    p.add_argument("--guidance", type=float, default=3.0)
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
        for key in ("psnr_real", "psnr_context", *ATTRIBUTES):
            values = [s[key] for s in per_seed]
            scale = 1 if key.startswith("psnr") else 100
            row[key] = f"{scale * statistics.mean(values):.1f} ± {scale * (max(values) - min(values)) / 2:.1f}"
        rows.append(row)
    print(table(rows, list(rows[0])), flush=True)
    path = save(args.name, dict(args=vars(args), results=results, table=rows))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
