"""Frames of held-out prompts beside the real clips of the same prompts (docs/evaluation.md, "Frames").

For the first ``--num-videos`` held-out prompts of ``hpdm evaluate`` (attribute combinations never seen in
training), video ``i`` is sampled with seed ``seed + i`` and the pipeline's evaluation settings, and the synthetic
domain renders its own clip of the prompt with the same seed (``evaluation.run.real_clips``). Each prompt gets two
rows of evenly spaced frames, generated above real, in one PNG:

    .venv/bin/python benchmarks/heldout_frames.py --model models/hpdm-shapes-demo --out docs/images/heldout_vs_real.png
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

from diffusers_hpdm import HierarchicalPatchPipeline
from diffusers_hpdm.evaluation import detect_attributes, grain_ratio
from diffusers_hpdm.evaluation.run import evaluation_prompts, real_clips
from diffusers_hpdm.visualize import contact_sheet, save_image

LABEL_HEIGHT = 14  # pixels of caption text above each prompt's pair of rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/hpdm-shapes-demo")
    p.add_argument("--out", default="docs/images/heldout_vs_real.png")
    p.add_argument("--num-videos", type=int, default=6)
    p.add_argument("--frames", type=int, default=8, help="frames shown per video")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--guidance", type=float, default=3.0)
    args = p.parse_args()

    pipe = HierarchicalPatchPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    prompts = evaluation_prompts(args.num_videos)
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(len(prompts))]
    videos = pipe(
        prompts, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=generators, output_type="np"
    ).frames  # (N, F, H, W, 3) in [0, 1]
    real = real_clips(prompts, videos.shape[1:4], args.seed).astype(np.float32) / 255.0

    sheets = [contact_sheet([gen, ref], max_frames=args.frames) for gen, ref in zip(videos, real)]
    width = max(s.width for s in sheets)
    figure = PIL.Image.new("RGB", (width, sum(s.height + LABEL_HEIGHT for s in sheets)), (255, 255, 255))
    draw, y, readings = PIL.ImageDraw.Draw(figure), 0, []
    for prompt, sheet, gen in zip(prompts, sheets, videos):
        detected = detect_attributes(gen)
        readings.append({"prompt": prompt, **{k: detected[k] for k in ("colour", "shape", "direction", "speed")}})
        draw.text((2, y + 1), f"{prompt}  (read: {detected['colour']} {detected['shape']} {detected['direction']})",
                  fill=(40, 40, 48))  # fmt: skip
        figure.paste(sheet, (0, y + LABEL_HEIGHT))
        y += sheet.height + LABEL_HEIGHT
    save_image(figure, args.out)
    grain = grain_ratio(list(videos), list(real))
    print(json.dumps({"out": args.out, "model": args.model, "grain": grain, "videos": readings}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
