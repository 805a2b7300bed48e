"""Which level limits the demo model: the held-out evaluation of ``hpdm evaluate`` with the coarsest ``K`` levels'
samples replaced by the real clips of the same prompts (rendered in memory, area-downsampled to each level).

For every ``K`` in ``--oracle-levels`` (default ``0 1 2``; ``0`` is the model alone) the pipeline gets the real
clip at level ``K - 1``'s size as ``video=`` (its coarser levels are its area-downsamplings) and samples only levels
``K..``, which start from a perfect coarse video and see it through context fusion exactly as they see their own.
What moves between ``K = 0`` and ``K = 1`` is level 0's doing; what does not (the bundled model's seam score, most
of its shapes) is the finer levels'. The real clips' own accuracy, seam score and border energy profile
are the ceiling and the floor of those metrics on this domain.

    .venv/bin/python benchmarks/oracle_levels.py                          # 32 videos, K = 0 1 2, ~25 min on 2 cores
    .venv/bin/python benchmarks/oracle_levels.py --num-videos 8 --oracle-levels 0 1   # ~4 min
    .venv/bin/python benchmarks/oracle_levels.py --num-videos 2 --out /tmp/oracle.json  # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import machine, save, setup_threads, table  # noqa: E402

from diffusers_hpdm.cli import _load_pipeline  # noqa: E402
from diffusers_hpdm.evaluation.run import evaluate_pipeline, evaluation_prompts, real_clips  # noqa: E402
from diffusers_hpdm.geometry import area_downsample  # noqa: E402
from diffusers_hpdm.pipelines.tiling import BLENDINGS  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/hpdm-shapes-demo")
    p.add_argument("--num-videos", type=int, default=32)
    p.add_argument("--oracle-levels", type=int, nargs="+", default=[0, 1, 2], help="K values: real levels 0..K-1")
    p.add_argument("--guidance", type=float, nargs="+", default=[3.0], help="as `hpdm evaluate --guidance`")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--level-steps", type=int, nargs="+", default=None, help="steps per level (default: halving)")
    p.add_argument("--blending", choices=BLENDINGS, default="smooth")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the RIN blocks")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="write the JSON here (default: benchmarks/results/oracle_levels.json)")
    args = p.parse_args()
    setup_threads(args.threads)

    pipe = _load_pipeline(args.model, bf16=False, compile_blocks=args.compile)
    sizes = pipe.transformer.level_sizes
    if max(args.oracle_levels) >= len(sizes):
        raise SystemExit(f"--oracle-levels: at most {len(sizes) - 1} (the model has {len(sizes)} levels)")
    guidance = args.guidance[0] if len(args.guidance) == 1 else args.guidance
    prompts = evaluation_prompts(args.num_videos)
    # (N, C, F, H, W) in [0, 1]: the range `video=` reads unambiguously (a [-1, 1] clip needs a negative value)
    real = torch.from_numpy(real_clips(prompts, sizes[-1], args.seed)).permute(0, 4, 1, 2, 3).float() / 255

    ph = pipe.transformer.config.patch_size[1]
    rows, reports = [], {}
    for k in args.oracle_levels:
        video = area_downsample(real, sizes[k - 1]) if k else None  # real levels 0..k-1: level k-1 given
        report = evaluate_pipeline(
            pipe, num_videos=len(prompts), num_inference_steps=args.steps, guidance_scale=guidance, seed=args.seed,
            prompts=prompts, blending=args.blending, video=video, level_steps=args.level_steps,
        )["summary"]  # fmt: skip
        reports[k] = report
        if not rows:
            ref = report["real_clips"]
            rows.append({"real levels": "real clips", **ref["accuracy"], "seam_score": ref["seam_score"],
                         "profile_0": ref["border_energy_profile"][0],
                         "profile_8": ref["border_energy_profile"][ph // 2], "grain": 1.0})  # fmt: skip
        acc = report["accuracy"]
        rows.append(
            {
                "real levels": k,
                "colour": acc["colour"],
                "shape": acc["shape"],
                "direction": acc["direction"],
                "speed": acc["speed"],
                "all": acc["all"],
                "seam_score": report["seam_score"],
                "level 1 seams": report["seam_score_per_level"][1],
                "profile_0": report["border_energy_profile"][0],
                "profile_8": report["border_energy_profile"][ph // 2],
                "level_psnr": " / ".join(f"{x:.1f}" for x in report["level_psnr"]),
                "grain": report["grain"],  # the final level's high-frequency energy / the real clips'
            }
        )
        print(table(rows, list(rows[-1])), flush=True)
    payload = dict(model=args.model, num_videos=len(prompts), guidance=guidance, seed=args.seed,
                   blending=args.blending, level_steps=args.level_steps, rows=rows,
                   reports={str(k): r for k, r in reports.items()})  # fmt: skip
    if args.out:
        path = Path(args.out)
        path.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=float))
    else:
        path = save("oracle_levels", payload)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
