"""Why a trained text-to-video HPDM misses the prompt's motion direction: the measurements behind the "What limits
it" section of docs/evaluation.md and behind docs/direction.md, on real level-0 clips of the synthetic
moving-shapes domain (rendered in memory, area-downsampled to the model's level-0 canvas).

1. **Denoiser**: one-step error of ``x̂0 = D(x0 + sigma * n)`` against the best per-pixel linear estimate
   (Wiener: ``var * sigma^2 / (var + sigma^2)``), and the share of the input gradient of one token's network output
   ``c_out * F`` that comes from that token's own pixels (the rest reaches it through the latents).
2. **Round trip**: re-noise real clips to ``sigma = 1`` and solve the probability-flow ODE back (64 Euler steps);
   the error, and a PNG (row 0 real, row 1 returned).
3. **Which prompt words the denoiser uses**: the increase of its one-step error on real clips at sigma 1 and 4 when
   one attribute word of each caption is swapped for another value (colour, shape, direction, speed, background).
   A word the model ignores costs nothing when it is wrong.
4. **Prompt sensitivity** of the high-noise estimate ``x̂0(sigma=20)`` (about the conditional mean of the data): rms
   change between prompts that differ only in the direction or only in the colour, next to the same difference
   between the data's conditional means.
5. **Probes** trained only at sigma = 20 on the same clips: a linear map from the masked-mean text embedding to the
   pixels (always; seconds), with ``--mlp-steps N`` a per-token MLP over (token position + projected text), and
   with ``--rin-steps N`` a fresh copy of the model's transformer (minutes). Besides the rms sensitivities, each
   probe reports how much of the data's left-minus-right conditional mean its own left-minus-right estimate
   reproduces (``lr_projection``: 1 = all of it, 0 = none; ``lr_cosine``: the direction of that difference),
   averaged over 12 prompt pairs; the MLP and the RIN also log that projection along their training runs. With
   ``--rin-input-modulation`` a third RIN probe has the noise-level gain on its pixel input (``input_modulation``);
   ``--rin-option NAME`` (repeatable) adds one more RIN probe per boolean transformer option turned on, e.g.
   ``text_layout``.

    .venv/bin/python benchmarks/diagnose_demo.py                                # bundled model, ~1 min
    .venv/bin/python benchmarks/diagnose_demo.py --model DIR --rin-steps 600    # + the RIN probe, ~5 min
    .venv/bin/python benchmarks/diagnose_demo.py --rin-steps 600 --rin-zero-input   # + one on zero input, ~8 min
    .venv/bin/python benchmarks/diagnose_demo.py --mlp-steps 3000                # + the per-token MLP, ~2 min
    .venv/bin/python benchmarks/diagnose_demo.py --rin-steps 1600 --rin-zero-input --rin-input-modulation \
        --mlp-steps 3000                                                         # the docs' table, ~35 min
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import RESULTS, save, setup_threads, table  # noqa: E402

from diffusers_hpdm import HierarchicalPatchPipeline, HPDMTransformer  # noqa: E402
from diffusers_hpdm.data.synthetic import caption, render_video, training_attributes  # noqa: E402
from diffusers_hpdm.geometry import area_downsample  # noqa: E402

BASE = "a red square moving left quickly on a black background"
VARIANTS = {"left vs right": BASE.replace("left", "right"), "red vs blue": BASE.replace("red", "blue")}


def real_clips(num: int, finest: tuple[int, int, int], level0: tuple[int, int, int], seed: int):
    """``num`` training clips at level 0 in [-1, 1] ``(num, C, f, h, w)`` and their attributes and captions."""
    attrs = [training_attributes(i, seed) for i in range(num)]
    videos = [render_video(a, *finest, np.random.default_rng([seed, i])) for i, a in enumerate(attrs)]
    x = torch.from_numpy(np.stack(videos)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    return area_downsample(x, level0), attrs, [caption(a) for a in attrs]


class Level0:
    """The pipeline's transformer as the level-0 denoiser ``D(x, sigma)`` (EDM preconditioning, no guidance)."""

    def __init__(self, pipe: HierarchicalPatchPipeline, model: torch.nn.Module | None = None, pixels_in: bool = True):
        self.pipe, self.model, self.pixels_in = pipe, model or pipe.transformer, pixels_in

    @torch.no_grad()
    def text(self, prompts: list[str]):
        emb, mask, _, _ = self.pipe.encode_prompt(prompts, do_classifier_free_guidance=False)
        return emb, mask

    def __call__(self, x: torch.Tensor, sigma: float, emb, mask) -> torch.Tensor:
        sched, n, s = self.pipe.scheduler, x.shape[0], torch.tensor(float(sigma))
        inp = sched.precondition_inputs(x, s) if self.pixels_in else torch.zeros_like(x)  # zeros: positions + text
        box = torch.tensor([0, 0, 0, 1, 1, 1.0]).repeat(n, 1, 1)
        out = self.model(inp[:, None], timestep=sched.sigma_to_timestep(s).repeat(n, 1), boxes=box,
                         encoder_hidden_states=emb, encoder_attention_mask=mask).sample[:, 0]  # fmt: skip
        return sched.denoise(out, x, s)


def denoiser_rows(D: Level0, x0, captions, sigmas=(0.3, 1.0, 3.0)) -> list[dict]:
    emb, mask = D.text(captions)
    g = torch.Generator().manual_seed(0)
    tf, th, tw = D.model.config.tokenizer_patch
    var = x0.var().item()
    rows = []
    for s in sigmas:
        x = (x0 + s * torch.randn(x0.shape, generator=g)).requires_grad_(True)
        d = D(x, s, emb, mask)
        # gradient of one token's network output (frame 1, second token row and column) w.r.t. every input pixel
        f0, h0, w0 = min(1, x0.shape[2] // tf - 1) * tf, th, tw
        network = d - D.pipe.scheduler.precondition(torch.tensor(s))[0] * x  # c_out * F: what the network adds
        (grad,) = torch.autograd.grad(network[:, :, f0 : f0 + tf, h0 : h0 + th, w0 : w0 + tw].sum(), x)
        grad = grad.abs().sum(1)
        own = grad[:, f0 : f0 + tf, h0 : h0 + th, w0 : w0 + tw].sum() / grad.sum()
        mse, wiener = (d.detach() - x0).pow(2).mean().item(), var * s**2 / (var + s**2)
        rows.append(dict(sigma=s, mse=mse, wiener_mse=wiener, wiener_over_mse=wiener / mse, own_token_grad=own.item()))
    return rows


@torch.no_grad()
def round_trip(D: Level0, x0, captions, sigma: float = 1.0, steps: int = 64, png: Path | None = None) -> float:
    emb, mask = D.text(captions)
    rho, lo = 7.0, D.pipe.scheduler.config.sigma_min
    i = torch.arange(steps) / (steps - 1)
    sig = torch.cat([(sigma ** (1 / rho) + i * (lo ** (1 / rho) - sigma ** (1 / rho))) ** rho, torch.zeros(1)])
    x = x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    for k in range(steps):
        x = x + (x - D(x, sig[k].item(), emb, mask)) / sig[k] * (sig[k + 1] - sig[k])
    if png is not None:
        from PIL import Image

        def strip(v):  # (N, C, f, h, w) -> one row of frames
            v = ((v.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).numpy()
            return np.concatenate([frame for clip in v for frame in clip], axis=1)

        img = np.concatenate([strip(x0), strip(x)], axis=0)
        Image.fromarray(img).resize((img.shape[1] * 4, img.shape[0] * 4), Image.NEAREST).save(png)
    return (x - x0).pow(2).mean().item()


@torch.no_grad()
def sensitivity(D: Level0, sigma: float = 20.0, draws: int = 8) -> dict:
    prompts = [BASE, *VARIANTS.values()]
    emb, mask = D.text(prompts)
    size = (draws, D.model.config.in_channels, *D.model.level_sizes[0])
    x = sigma * torch.randn(size, generator=torch.Generator().manual_seed(1))
    out = [D(x, sigma, emb[k : k + 1].expand(draws, -1, -1), mask[k : k + 1].expand(draws, -1)) for k in range(3)]
    return {name: (out[0] - out[k + 1]).pow(2).mean().sqrt().item() for k, name in enumerate(VARIANTS)}


SWAPS = {
    "colour": {"red": "blue"},
    "shape": {"circle": "square", "square": "triangle", "triangle": "circle"},
    "direction": {"left": "right", "right": "left", "up": "down", "down": "up"},
    "speed": {"slowly": "quickly", "quickly": "slowly"},
    "background": {"black": "gray", "gray": "black", "dark blue": "dark green", "dark green": "dark blue"},
}


@torch.no_grad()
def word_ablation(D: Level0, x0, attrs, captions, sigmas=(1.0, 4.0)) -> list[dict]:
    """Relative increase of the one-step mse when one attribute word per caption is swapped (colours: red <-> blue
    for red clips, anything else -> red)."""
    emb, mask = D.text(captions)
    g = torch.Generator().manual_seed(0)
    rows = []
    for s in sigmas:
        x = x0 + s * torch.randn(x0.shape, generator=g)
        base = (D(x, s, emb, mask) - x0).pow(2).mean().item()
        row = dict(sigma=s, mse=base)
        for name, swap in SWAPS.items():
            wrong = [
                c.replace(f" {a[name]} ", f" {swap.get(a[name], 'red')} ") for c, a in zip(captions, attrs)
            ]  # every caption mentions every attribute, so each one changes
            e, m = D.text(wrong)
            row[name] = (D(x, s, e, m) - x0).pow(2).mean().item() / base - 1
        rows.append(row)
    return rows


def data_sensitivity(x0, attrs) -> dict:
    """The same rms differences between the data's conditional means (over every background, shape and speed)."""

    def mean(**want):
        keep = [i for i, a in enumerate(attrs) if all(a[k] == v for k, v in want.items())]
        return x0[keep].mean(0)

    return {
        "left vs right": (mean(colour="red", direction="left") - mean(colour="red", direction="right")).pow(2).mean().sqrt().item(),
        "red vs blue": (mean(colour="red", direction="left") - mean(colour="blue", direction="left")).pow(2).mean().sqrt().item(),
    }  # fmt: skip


PAIR_CONTEXTS = [(c, s, b) for c in ("red", "green", "blue") for s in ("circle", "square") for b in ("black", "gray")]


def lr_alignment(forward, text, x0, attrs, sigma: float = 20.0) -> dict:
    """How much of the data's ``mean(left clips) - mean(right clips)`` the estimator's own ``x̂0(left) - x̂0(right)``
    reproduces at ``sigma`` (same noise for both prompts, averaged over 12 colour/shape/background contexts)."""
    left, right = ([a["direction"] == d for a in attrs] for d in ("left", "right"))
    data = x0[left].mean(0) - x0[right].mean(0)
    prompts = [
        f"a {c} {s} moving {d} quickly on a {b} background" for c, s, b in PAIR_CONTEXTS for d in ("left", "right")
    ]
    emb, mask = text(prompts)
    noise = sigma * torch.randn(len(PAIR_CONTEXTS), *x0.shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = forward(noise.repeat_interleave(2, 0), sigma, emb, mask)
    model = (out[0::2] - out[1::2]).mean(0)
    cosine = torch.nn.functional.cosine_similarity(model.flatten(), data.flatten(), dim=0)
    return dict(lr_projection=((model * data).sum() / (data * data).sum()).item(), lr_cosine=cosine.item())


class TokenMLP(torch.nn.Module):
    """``x̂0`` per token from (sine-cosine token position + projected pooled text): position and prompt meet only
    by addition, as in the RIN's tokens; the MLP has to learn their interaction."""

    def __init__(self, grid, patch, channels: int, text_dim: int, width: int = 64, hidden: int = 256):
        super().__init__()
        from diffusers_hpdm.models.positions import sincos_position_table

        self.grid, self.patch, self.channels = grid, patch, channels
        self.register_buffer("positions", sincos_position_table(grid, width))
        self.text = torch.nn.Linear(text_dim, width)
        out = channels * int(np.prod(patch))
        self.net = torch.nn.Sequential(
            torch.nn.LayerNorm(width), torch.nn.Linear(width, hidden), torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, out),
        )  # fmt: skip

    def forward(self, emb, mask):
        from einops import rearrange

        keep = mask.float()[..., None]
        tokens = self.net(self.positions[None] + self.text((emb * keep).sum(1) / keep.sum(1))[:, None])
        (f, h, w), (pf, ph, pw) = self.grid, self.patch
        pattern = "n (f h w) (c pf ph pw) -> n c (f pf) (h ph) (w pw)"
        return rearrange(tokens, pattern, f=f, h=h, w=w, pf=pf, ph=ph, pw=pw, c=self.channels)


def high_noise_probe(
    pipe,
    x0,
    captions,
    attrs,
    which: str,
    steps: int,
    sigma: float = 20.0,
    batch: int = 16,
    pixels_in: bool = True,
    overrides: dict | None = None,
) -> dict:
    """Train ``which`` ("linear", "mlp" or "rin") from scratch at ``sigma`` only; its final loss, prompt sensitivity
    and left/right alignment with the data, and for the MLP and the RIN that alignment along the run.
    ``pixels_in=False`` feeds the RIN zeros instead of the noisy clip; ``overrides`` change the RIN's config."""
    emb_all, mask_all = Level0(pipe).text(captions)
    torch.manual_seed(0)
    c_out = pipe.scheduler.precondition(torch.tensor(sigma))[1]
    if which == "linear":
        shape = x0.shape[1:]
        lin = torch.nn.Linear(emb_all.shape[-1], int(np.prod(shape)))
        opt = torch.optim.AdamW(lin.parameters(), lr=1e-2)

        def D(x, s, emb, mask):
            w = mask.float()[..., None]
            return lin((emb * w).sum(1) / w.sum(1)).view(-1, *shape)

        probe, forward = Level0(pipe), D
    elif which == "mlp":
        cfg = pipe.transformer.config
        mlp = TokenMLP(pipe.transformer.token_grid, cfg.tokenizer_patch, cfg.in_channels, emb_all.shape[-1])
        opt = torch.optim.AdamW(mlp.parameters(), lr=1e-3)
        probe, forward = Level0(pipe), lambda x, s, emb, mask: mlp(emb, mask)
    else:
        from diffusers_hpdm.training.lamb import Lamb
        from diffusers_hpdm.training.params import lamb_param_groups

        cfg = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
        model = HPDMTransformer(**{**cfg, "num_levels": 1, "levels_per_block": None, **(overrides or {})}).train()
        opt = Lamb(lamb_param_groups(model, 0.01), lr=3e-3, betas=(0.9, 0.999), weight_decay=0.01, eps=1e-6)
        probe = Level0(pipe, model, pixels_in)
        forward = probe.__call__
    from diffusers.optimization import get_scheduler

    schedule = get_scheduler("cosine", optimizer=opt, num_warmup_steps=min(50, steps // 10), num_training_steps=steps)
    g = torch.Generator().manual_seed(0)
    run, t0, curve = 0.0, time.perf_counter(), []
    for step in range(steps):
        idx = torch.randint(len(x0), (batch,), generator=g)
        x = x0[idx] + sigma * torch.randn(x0[idx].shape, generator=g)
        loss = (forward(x, sigma, emb_all[idx], mask_all[idx]) - x0[idx]).pow(2).mean() / c_out**2
        loss.backward()
        opt.step()
        schedule.step()
        opt.zero_grad()
        run = 0.98 * run + 0.02 * loss.item()
        if which != "linear" and (step + 1) % max(1, steps // 8) == 0:
            align = lr_alignment(forward, probe.text, x0, attrs, sigma)
            curve.append(dict(step=step + 1, loss=run / (1 - 0.98 ** (step + 1)), **align))
    loss = run / (1 - 0.98**steps)
    if which in ("linear", "mlp"):
        prompts = [BASE, *VARIANTS.values()]
        emb, mask = probe.text(prompts)
        with torch.no_grad():
            out = [forward(None, sigma, emb[k : k + 1], mask[k : k + 1]) for k in range(3)]
        sens = {name: (out[0] - out[k + 1]).pow(2).mean().sqrt().item() for k, name in enumerate(VARIANTS)}
    else:
        model.eval()
        sens = sensitivity(probe, sigma)
    seconds = time.perf_counter() - t0
    align = lr_alignment(forward, probe.text, x0, attrs, sigma)
    name = ", ".join(
        [which, *([] if pixels_in else ["zero input"]), *(f"{k}={v}" for k, v in (overrides or {}).items())]
    )
    row = dict(probe=name, steps=steps, loss=loss, seconds=seconds)
    return dict(**row, **sens, **align, **({"curve": curve} if curve else {}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/hpdm-shapes-demo")
    p.add_argument("--clips", type=int, default=2000, help="real clips for the probes and the data's means")
    p.add_argument("--rin-steps", type=int, default=0, help="also train the RIN probe for this many steps")
    p.add_argument("--mlp-steps", type=int, default=0, help="also train the per-token MLP probe this many steps")
    p.add_argument("--rin-zero-input", action="store_true", help="also train the RIN probe on zero pixel input")
    p.add_argument(
        "--rin-input-modulation",
        action="store_true",
        help="also train the RIN probe with input_modulation=True (noisy input, a noise-level gain on the pixels)",
    )
    p.add_argument(
        "--rin-option",
        action="append",
        default=[],
        metavar="NAME",
        help="also train a RIN probe with this boolean transformer option on (repeatable), e.g. text_layout",
    )
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    setup_threads(args.threads)

    pipe = HierarchicalPatchPipeline.from_pretrained(args.model)
    pipe.transformer.eval()
    finest, level0 = pipe.transformer.level_sizes[-1], pipe.transformer.level_sizes[0]
    x0, attrs, captions = real_clips(args.clips, finest, level0, seed=0)
    D = Level0(pipe)

    rows = denoiser_rows(D, x0[:4], captions[:4])
    print("1. one-step denoiser on real level-0 clips\n" + table(rows, list(rows[0])))
    png = RESULTS / "diagnose_demo_round_trip.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    rt = round_trip(D, x0[:4], captions[:4], png=png)
    print(f"\n2. round trip from sigma = 1 (64 Euler steps): mse {rt:.4f}; real (top) vs returned (bottom): {png}")
    words = word_ablation(D, x0[:256], attrs[:256], captions[:256])
    print(
        "\n3. one-step mse increase (fraction) when one word of every caption is wrong\n"
        + table(words, list(words[0]))
    )
    sens = dict(model=sensitivity(D), data_conditional_means=data_sensitivity(x0, attrs))
    alignment = lr_alignment(D, D.text, x0, attrs)
    print(f"model's x̂0(sigma=20) left - right vs the data's: {alignment}")
    print("\n4. rms change of x̂0(sigma=20) between prompts\n" + table([{"": k, **v} for k, v in sens.items()],
                                                                      ["", *VARIANTS]))  # fmt: skip
    probes = [high_noise_probe(pipe, x0, captions, attrs, "linear", 200)]
    if args.mlp_steps:
        probes.append(high_noise_probe(pipe, x0, captions, attrs, "mlp", args.mlp_steps))
    if args.rin_steps:
        probes.append(high_noise_probe(pipe, x0, captions, attrs, "rin", args.rin_steps))
        if args.rin_zero_input:
            probes.append(high_noise_probe(pipe, x0, captions, attrs, "rin", args.rin_steps, pixels_in=False))
        if args.rin_input_modulation:
            modulated = dict(input_modulation=True)
            probes.append(high_noise_probe(pipe, x0, captions, attrs, "rin", args.rin_steps, overrides=modulated))
        for option in args.rin_option:
            if option not in pipe.transformer.config:
                raise SystemExit(f"--rin-option {option}: not an HPDMTransformer option")
            probes.append(high_noise_probe(pipe, x0, captions, attrs, "rin", args.rin_steps, overrides={option: True}))
    columns = [k for k in probes[0] if k != "curve"]
    print("\n5. probes trained at sigma = 20 only\n" + table(probes, columns))
    for row in probes:
        if "curve" in row:
            print(f"\n{row['probe']} probe along its run\n" + table(row["curve"], list(row["curve"][0])))
    path = save("diagnose_demo", dict(model=args.model, denoiser=rows, round_trip_mse=rt, word_ablation=words,
                                      sensitivity=sens, lr_alignment=alignment, probes=probes))  # fmt: skip
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
