"""Probe: at which noise level does level 0 lose the shape? (docs/probes.md, "Probe 6")

For each held-out prompt, the real clip at level 0's size (rendered at 16x64x64, area-downsampled to 4x16x16) is
noised to ``sigma_start`` and the model samples from there down to 0 (SDEdit): the pipeline's own sampler and
guidance, with the canvas replaced by ``real + sigma * noise`` at the first finished sampling interval whose sigma
is at most ``sigma_start``. The detector then reads the sample's shape, colour and direction and compares them with
what it reads on the real clip. Near 0 a denoiser that keeps what it is given scores ~100%; as ``sigma_start`` grows
the score falls to what the model draws from pure noise. Where it falls says whether the shape is lost in the
low-noise detail (the tokenizer and readout) or never drawn at the high-noise layout stage.

``--swap-shape``: the pipeline gets the prompt with its shape word replaced by the next shape (circle -> square ->
triangle -> circle) while the canvas restarts from the real clip of the original prompt. ``shape`` is then how often
the sample keeps the clip's shape and ``prompt_shape`` how often it draws the prompt's: a model that uses the shape
word moves from the first to the second as ``sigma_start`` grows; one that ignores it does not.

    .venv/bin/python benchmarks/probe_level0_sdedit.py --variants recipe paper --seeds 0 1 --sigmas 0.5 2 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import report, seed_row, setup_threads  # noqa: E402

from diffusers_hpdm import HierarchicalPatchPipeline  # noqa: E402
from diffusers_hpdm.data.synthetic import SHAPES  # noqa: E402
from diffusers_hpdm.evaluation.detector import detect_attributes  # noqa: E402
from diffusers_hpdm.evaluation.run import evaluation_prompts, real_clips  # noqa: E402
from diffusers_hpdm.geometry import area_downsample  # noqa: E402

ATTRIBUTES = ("colour", "shape", "direction")


def swap_word(prompt: str, values) -> str:
    """The prompt with its word from ``values`` (e.g. ``SHAPES``) replaced by the next one."""
    words = prompt.split()
    i = next(k for k, w in enumerate(words) if w in values)
    words[i] = values[(values.index(words[i]) + 1) % len(values)]
    return " ".join(words)


def swap_shape(prompt: str) -> str:
    """The prompt with its shape word replaced by the next one in ``SHAPES``."""
    return swap_word(prompt, tuple(SHAPES))


def real_level0(prompts: list[str], size: tuple[int, int, int], seed: int) -> torch.Tensor:
    """The prompts' real clips at ``size``, ``(N, 3, f, h, w)`` in [-1, 1]."""
    real = torch.from_numpy(real_clips(prompts, (16, 64, 64), seed)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    return area_downsample(real, size)


def attributes(video: torch.Tensor) -> dict:
    """Detector reading of one ``(3, f, h, w)`` video in [-1, 1]."""
    return detect_attributes(((video + 1) / 2).permute(1, 2, 3, 0).clamp(0, 1).numpy())


class RestartFromReal:
    """``callback_on_step_end`` that replaces the canvas by ``real + sigma * noise`` once, after the first finished
    sampling interval whose sigma is at most ``sigma_start``; records the sigma it restarted at."""

    def __init__(self, real: torch.Tensor, noise: torch.Tensor, sigma_start: float):
        self.real, self.noise, self.sigma_start, self.restarted_at = real, noise, sigma_start, None

    def __call__(self, pipe, step: int, timestep, tensors: dict) -> dict:
        sch = pipe.scheduler
        interval, _ = sch._evals[step]
        finished = sch._heun_state is None  # not between a Heun predictor and its corrector
        sigma = sch.sigmas[interval + 1].item()
        if self.restarted_at is None and finished and 0 < sigma <= self.sigma_start:
            self.restarted_at = sigma
            return {"latents": (self.real + sigma * self.noise).to(tensors["latents"].dtype)}
        return {}


@torch.no_grad()
def evaluate(folder: Path, sigma_start: float, args) -> dict:
    swap = "_swap" if args.swap_shape else ""
    cache = folder / f"probe_sdedit_{args.num_videos}v_s{sigma_start:g}{swap}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    pipe = HierarchicalPatchPipeline.from_pretrained(folder)
    prompts = evaluation_prompts(args.num_videos)
    size = tuple(pipe.transformer.level_sizes[-1])
    real = real_level0(prompts, size, args.eval_seed)
    if args.swap_shape:
        prompts = [swap_shape(p) for p in prompts]
    hits = {a: [] for a in (*ATTRIBUTES, "prompt_shape")}
    restarted = set()
    for i in range(0, len(prompts), args.batch_size):
        batch = slice(i, i + args.batch_size)
        noise = torch.randn(real[batch].shape, generator=torch.Generator().manual_seed(args.eval_seed + i))
        restart = RestartFromReal(real[batch], noise, sigma_start)
        out = (
            pipe(
                prompts[batch],
                num_inference_steps=args.inference_steps,
                guidance_scale=args.guidance,
                generator=[torch.Generator().manual_seed(args.eval_seed + j) for j in range(i, i + len(noise))],
                output_type="pt",
                callback_on_step_end=restart,
                callback_on_step_end_tensor_inputs=["latents"],
            ).frames.permute(0, 2, 1, 3, 4)
            * 2
            - 1
        )  # fmt: skip  (n, 3, f, h, w) in [-1, 1]
        restarted.add(restart.restarted_at)
        for j, video in enumerate(out):
            found, wanted = attributes(video), attributes(real[i + j])
            for a in ATTRIBUTES:
                hits[a].append(float(found[a] == wanted[a]))
            hits["prompt_shape"].append(
                float(found["shape"] == next(w for w in prompts[i + j].split() if w in SHAPES))
            )
    scores = {a: statistics.mean(v) for a, v in hits.items()}
    scores["restarted_at_sigma"] = sorted(restarted)
    cache.write_text(json.dumps(scores))
    return scores


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=["recipe", "paper"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 2.0, 8.0])
    p.add_argument("--work-dir", default="outputs/probe_level0", help="benchmarks/probe_level0.py's models")
    p.add_argument("--num-videos", type=int, default=64)
    p.add_argument("--inference-steps", type=int, default=32)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--eval-seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--swap-shape", action="store_true", help="prompt names another shape than the clip's")
    p.add_argument("--name", default="probe_level0_sdedit", help="results file name")
    args = p.parse_args()
    setup_threads(1)
    results, rows = {}, []
    for variant in args.variants:
        for sigma in args.sigmas:
            per_seed = [evaluate(Path(args.work_dir) / f"{variant}-s{s}", sigma, args) for s in args.seeds]
            results[f"{variant}@{sigma:g}"] = per_seed
            keys = (*ATTRIBUTES, "prompt_shape") if args.swap_shape else ATTRIBUTES
            rows.append(seed_row({"variant": variant, "sigma_start": f"{sigma:g}"}, per_seed, keys))
    report(args.name, args, results, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
