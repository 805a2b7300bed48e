"""Probe: is the finest level's denoising error larger at its patch's edges than inside it?

Teacher-forced on the real held-out clips: the nested training boxes of every level, each coarser level noised as the
pipeline re-noises it (``context_sigma * shift**level``), the finest level at each of a few sigmas; the finest level's x0 error per voxel of its
patch, averaged over clips, channels and the other axes, by distance (in pixels) to the patch's nearest spatial
border and to its nearest temporal border. The paper's tiled sampling averages every tile's estimate with equal
weight (``blending="uniform"``), so an error that grows at a tile's edge lands on the tile borders as a seam.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/probe_patch_edges.py --models models/hpdm-shapes-demo \
        --num-videos 64 --name probe_patch_edges
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import save, setup_threads, table  # noqa: E402

from diffusers_hpdm import HierarchicalPatchPipeline  # noqa: E402
from diffusers_hpdm.evaluation.run import evaluation_prompts, real_clips  # noqa: E402
from diffusers_hpdm.geometry import extract_patches, sample_nested_boxes  # noqa: E402


def border_distance(n: int) -> torch.Tensor:
    """``(n,)`` distance of each index to the nearer end of ``0 .. n-1``."""
    i = torch.arange(n)
    return torch.minimum(i, n - 1 - i)


@torch.no_grad()
def edge_profile(pipe, prompts: list[str], args) -> dict:
    """The finest level's x0 MSE by distance to the patch border and by column, relative to the patch's mean."""
    tm, sch = pipe.transformer, pipe.scheduler
    cfg = tm.config
    f, h, w = cfg.patch_size
    real = torch.from_numpy(real_clips(prompts, args.video_size, args.eval_seed)).permute(0, 4, 1, 2, 3)
    real = real.float() / 127.5 - 1  # (N, 3, F, H, W)
    g = torch.Generator().manual_seed(args.eval_seed)
    boxes = sample_nested_boxes(len(prompts), cfg.patch_size, cfg.num_levels, cfg.level_growth, generator=g)
    x0 = extract_patches(real, boxes, cfg.patch_size)  # (N, L, C, f, h, w)
    embeds, mask, _, _ = pipe.encode_prompt(prompts, None, False, 1, None, None, None, None, 16)
    space = torch.minimum(border_distance(h)[:, None], border_distance(w)[None, :])  # (h, w)
    time = border_distance(f)  # (f,)
    out = {}
    for s in args.sigmas:
        # The coarser levels at the pipeline's re-noising level, context_sigma * shift**level; the finest at s.
        sig = args.context_sigma * sch.noise_shift ** torch.arange(cfg.num_levels, dtype=torch.float32)
        sig = sig.expand(len(prompts), -1).clone()
        sig[:, -1] = s  # (N, L)
        noise = torch.randn(x0.shape, generator=g)
        x_noisy = sch.add_noise_at_sigmas(x0, noise, sig)
        c_skip, c_out, c_in, c_noise = sch.precondition(sig)
        c_skip, c_out, c_in = (sch.broadcast_sigma(c, x_noisy) for c in (c_skip, c_out, c_in))
        pred = tm(c_in * x_noisy, c_noise, boxes, encoder_hidden_states=embeds,
                  encoder_attention_mask=mask).sample  # fmt: skip
        x0_hat = c_skip[:, -1] * x_noisy[:, -1] + c_out[:, -1] * pred[:, -1]  # (N, C, f, h, w)
        err = ((x0_hat - x0[:, -1]) ** 2).mean(dim=(0, 1))  # (f, h, w)
        mean = err.mean().item()
        out[f"sigma {s:g}"] = {
            "patch_mse": mean,
            "space": [err[:, space == d].mean().item() / mean for d in range(int(space.max()) + 1)],
            "time": [err[time == d].mean().item() / mean for d in range(int(time.max()) + 1)],
            "columns": (err.mean(dim=(0, 1)) / mean).tolist(),  # (w,): along the width, the other axes averaged
        }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--num-videos", type=int, default=64)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.5, 2.0])
    p.add_argument("--context-sigma", type=float, default=0.1, help="the pipeline's context_sigma (level-0 units)")
    p.add_argument("--video-size", type=int, nargs=3, default=[16, 64, 64])
    p.add_argument("--eval-seed", type=int, default=0)
    p.add_argument("--name", default="probe_patch_edges")
    args = p.parse_args()
    setup_threads()
    prompts = evaluation_prompts(args.num_videos)
    results, rows = {}, []
    for model in args.models:
        pipe = HierarchicalPatchPipeline.from_pretrained(model)
        results[model] = prof = edge_profile(pipe, prompts, args)
        for key, v in prof.items():
            row = {"model": Path(model).name, "sigma": key, "patch mse": v["patch_mse"]}
            row.update({f"space d={d}": x for d, x in enumerate(v["space"])})
            rows.append({**row, **{f"time d={d}": x for d, x in enumerate(v["time"])}})
    print(table(rows, list(rows[0])))
    save(args.name, {"args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
