"""Probe 9: how much does level 0's denoiser read the prompt's shape word? (docs/probes.md)

Teacher-forced, no sampling: each held-out prompt's real clip at level 0's size is noised to a sigma, and the
conditional denoised estimate ``x0_hat`` is computed twice with the same noise: with the prompt, and with the prompt
whose shape word (or, as a positive control, colour word) names another value. The clip rendered for the swapped
prompt with the same seed differs from the real one only where the shape (colour) differs; inside that region
``M``:

    ratio = MSE_M(x0_hat(swapped prompt), clip) / MSE_M(x0_hat(prompt), clip)

1.0: the word is not read at that sigma; above 1: the right word brings the estimate closer to the clip.
``toward`` is the fraction of the way the swapped-word estimate moves toward the swapped clip in ``M``:
``<x0_hat(swap) - x0_hat(right), clip_swap - clip>_M / |clip_swap - clip|^2_M`` (1: it draws the other shape).

    python benchmarks/probe_shape_signal.py --models outputs/probe_level0/paper-s0 outputs/probe_level0/paper-s1 \
        --references outputs/reference/4x16x16
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import save, setup_threads, table  # noqa: E402
from probe_level0_sdedit import real_level0, swap_word  # noqa: E402

from diffusers_hpdm import HierarchicalPatchPipeline  # noqa: E402
from diffusers_hpdm.data.synthetic import COLOURS, SHAPES  # noqa: E402
from diffusers_hpdm.evaluation.run import evaluation_prompts  # noqa: E402
from diffusers_hpdm.geometry import sample_nested_boxes  # noqa: E402

SWAPS = {"shape": tuple(SHAPES), "colour": tuple(COLOURS)}


def hpdm_denoiser(folder: str):
    """Level 0 of an HPDM pipeline: its canvas size and ``denoise(x_noisy, sigma, prompts) -> x0_hat``, the
    conditional (no guidance) EDM estimate from ``x_noisy = x0 + sigma * noise``, ``(N, 3, f, h, w)``."""
    pipe = HierarchicalPatchPipeline.from_pretrained(folder)
    tm, sch = pipe.transformer, pipe.scheduler

    def denoise(x_noisy: torch.Tensor, sigma: float, prompts: list[str]) -> torch.Tensor:
        n = len(prompts)
        embeds, mask, _, _ = pipe.encode_prompt(prompts, None, False, 1, None, None, None, None, 16)
        boxes = sample_nested_boxes(n, tm.config.patch_size, 1, tm.config.level_growth)  # the whole canvas
        sig = torch.full((n, 1), sigma)  # (N, L=1)
        c_in, c_noise = sch.precondition(sig)[2:]
        out = tm((sch.broadcast_sigma(c_in, x_noisy) * x_noisy)[:, None], c_noise, boxes,
                 encoder_hidden_states=embeds, encoder_attention_mask=mask).sample[:, 0]  # fmt: skip
        return sch.denoise(out, x_noisy, torch.full((n,), sigma))

    return tuple(tm.level_sizes[0]), denoise


def unet_denoiser(folder: str):
    """The reference UNet (``benchmarks/reference_model.py``'s output folder), as ``hpdm_denoiser``: the EDM input
    ``x0 + sigma * noise`` is the VP sample ``sqrt(a) * (x0 + sigma * noise)`` with ``a = 1 / (1 + sigma^2)``, at
    the DDPM timestep whose sigma is nearest (on the 1000-step cosine schedule: within 0.3% at the default sigmas,
    0.7% anywhere in 0.1-10)."""
    from diffusers import DDPMScheduler, UNet3DConditionModel
    from reference_model import MAX_TOKENS
    from transformers import AutoTokenizer, T5EncoderModel

    from diffusers_hpdm.training import PromptEncoder

    unet = UNet3DConditionModel.from_pretrained(f"{folder}/unet").eval()
    ddpm = DDPMScheduler.from_pretrained(f"{folder}/scheduler")
    encoder = PromptEncoder(
        AutoTokenizer.from_pretrained(f"{folder}/tokenizer"), T5EncoderModel.from_pretrained(f"{folder}/text_encoder"),
        MAX_TOKENS,
    )  # fmt: skip
    ddpm_sigmas = ((1 - ddpm.alphas_cumprod) / ddpm.alphas_cumprod).sqrt()  # (1000,)

    def denoise(x_noisy: torch.Tensor, sigma: float, prompts: list[str]) -> torch.Tensor:
        t = int((ddpm_sigmas.log() - math.log(sigma)).abs().argmin())
        a = ddpm.alphas_cumprod[t]
        x_t = x_noisy / math.sqrt(1 + sigma**2)
        v = unet(x_t, t, encoder_hidden_states=encoder(prompts, "cpu")[0]).sample
        return a.sqrt() * x_t - (1 - a).sqrt() * v  # v-prediction's x0

    return tuple(json.loads(Path(folder, "training.json").read_text())["args"]["size"]), denoise


@torch.no_grad()
def word_signal(size, denoise, prompts: list[str], sigmas: list[float], args) -> dict:
    """Per swapped attribute and sigma: ``ratio`` and ``toward`` (module docstring), pooled over the prompts."""
    real = real_level0(prompts, size, args.clip_seed)  # (N, 3, f, h, w)
    result = {}
    for attribute, values in SWAPS.items():
        swapped = [swap_word(p, values) for p in prompts]
        delta = real_level0(swapped, size, args.clip_seed) - real  # the swapped clip minus the real one
        region = (delta.abs().amax(1, keepdim=True) > 1 / 127.5).expand_as(real)  # where the two clips differ
        for sigma in sigmas:
            g = torch.Generator().manual_seed(args.noise_seed)
            x_noisy = real + sigma * torch.randn(real.shape, generator=g)
            right, wrong = denoise(x_noisy, sigma, prompts), denoise(x_noisy, sigma, swapped)
            err_right = ((right - real)[region] ** 2).mean()
            err_wrong = ((wrong - real)[region] ** 2).mean()
            toward = ((wrong - right)[region] * delta[region]).sum() / (delta[region] ** 2).sum()
            result[f"{attribute}_ratio_s{sigma:g}"] = (err_wrong / err_right).item()
            result[f"{attribute}_toward_s{sigma:g}"] = toward.item()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=[], help="HPDM pipeline folders (level 0 of each is probed)")
    p.add_argument(
        "--references", nargs="*", default=[], help="reference UNet folders (benchmarks/reference_model.py)"
    )
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    p.add_argument("--num-videos", type=int, default=64)
    p.add_argument("--clip-seed", type=int, default=0)
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--name", default="probe_shape_signal")
    args = p.parse_args()
    setup_threads(1)
    prompts = evaluation_prompts(args.num_videos)
    results, rows = {}, []
    models = [(f, hpdm_denoiser) for f in args.models] + [(f, unet_denoiser) for f in args.references]
    for folder, load in models:
        results[folder] = word_signal(*load(folder), prompts, args.sigmas, args)
        for attribute in SWAPS:
            rows.append(
                {"model": folder, "word": attribute}
                | {f"ratio s{s:g}": results[folder][f"{attribute}_ratio_s{s:g}"] for s in args.sigmas}
                | {f"toward s{s:g}": results[folder][f"{attribute}_toward_s{s:g}"] for s in args.sigmas}
            )
        print(table(rows[-2:], list(rows[-1])), flush=True)
    print(table(rows, list(rows[0])))
    print(f"\nwrote {save(args.name, dict(args=vars(args), results=results, table=rows))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
