"""LAMB with and without Adam's second-moment bias correction on its trust-ratio-1 steps, next to AdamW, over the
first steps of the demo base's recipe (`examples/train_demo.py`, stage 1).

The 1-level demo base (``tiny-t2v`` with the demo's model overrides) learns 4x16x16 level-0 clips of the synthetic
moving-shapes data (16x64x64 renders, area-downsampled as ``hpdm_loss`` would) with the demo's noise distribution
(``p_mean`` -0.4, ``p_std`` 1.4, half the samples at high noise, prompts kept above sigma 10, dropout 0.1), batch
16, gradient clipping 1.0, frozen tiny T5 embeddings, and the demo's learning-rate schedule (linear warm-up over 50
steps, cosine decay over its 8000 steps) of which only the first ``--steps`` are run: one step costs ~1 s of CPU,
so 300 steps of the 6 runs would take ~30 min; the default 100 keep the probe under 10 min. Those are also the steps
where the missing correction matters most (``1 / sqrt(1 - 0.999**t)``: 31.6 at step 1, 3.2 at step 100).
Optimizers:

* ``lamb-uncorrected``: `diffusers_hpdm.training.Lamb` with the correction removed (probe-only subclass): what
  `lamb_param_groups`' Adam group (biases, gains, zero-initialised and embedding parameters) used to get;
* ``lamb``: `diffusers_hpdm.training.Lamb` as shipped (lr 5e-3, weight decay 0.01);
* ``adamw``: ``torch.optim.AdamW`` lr 1e-3, weight decay 0.01 on the same groups (none on the exempt group).

Each runs with every seed; a seed fixes the weights, the clips drawn and every noise draw, so runs with the same seed
differ only by the optimizer. Reported: the mean training loss of the last 50 steps (and of steps 1-50).

    .venv/bin/python benchmarks/probe_optimizer.py                  # 100 steps x 3 optimizers x 2 seeds, ~10 min CPU
    .venv/bin/python benchmarks/probe_optimizer.py --steps 300 --out probe_optimizer_300   # ~30 min CPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import save, setup_threads, table  # noqa: E402
from diffusers.optimization import get_scheduler  # noqa: E402
from train_demo import MODEL_OVERRIDES  # noqa: E402

from diffusers_hpdm import HPDMScheduler, HPDMTransformer  # noqa: E402
from diffusers_hpdm.data.synthetic import caption, render_video, training_attributes  # noqa: E402
from diffusers_hpdm.geometry import area_downsample  # noqa: E402
from diffusers_hpdm.models.presets import PRESETS  # noqa: E402
from diffusers_hpdm.text import build_tiny_text_encoder, build_word_tokenizer  # noqa: E402
from diffusers_hpdm.training import (  # noqa: E402
    Lamb,
    PromptEncoder,
    clip_grad_norm_,
    freeze_parameters,
    hpdm_loss,
    lamb_param_groups,
    sample_generators,
    unused_parameters,
)

FINEST, LEVEL0 = (16, 64, 64), (4, 16, 16)  # the demo pyramid's final video and its level-0 canvas
BATCH, WARMUP, WINDOW = 16, 50, 50
OPTIMIZERS = ("lamb-uncorrected", "lamb", "adamw")


class UncorrectedLamb(Lamb):
    """`Lamb` whose trust-ratio-1 steps skip the second-moment bias correction (the library before the fix)."""

    @staticmethod
    def _update(w, exp_avg, exp_avg_sq, group, bias_correction2_sqrt: float = 1.0) -> torch.Tensor:
        return Lamb._update(w, exp_avg, exp_avg_sq, group)


def clips(num: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """``(num, 3, *LEVEL0)`` training clips in ``[-1, 1]`` and their captions."""
    attrs = [training_attributes(i, seed) for i in range(num)]
    videos = [render_video(a, *FINEST, np.random.default_rng([seed, i])) for i, a in enumerate(attrs)]
    x = torch.from_numpy(np.stack(videos)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (N, 3, F, H, W)
    return area_downsample(x, LEVEL0), [caption(a) for a in attrs]


def text_conditioning(captions: list[str]) -> PromptEncoder:
    tokenizer = build_word_tokenizer(captions, 16)
    encoder = PromptEncoder(tokenizer, build_tiny_text_encoder(tokenizer, d_model=64, seed=0), 16)
    encoder.precompute([*captions, ""])
    return encoder


def build_model(seed: int, prompts: PromptEncoder, scheduler: HPDMScheduler) -> HPDMTransformer:
    """The demo base, with the parameters training never reaches frozen (as ``train_t2v.py`` does)."""
    torch.manual_seed(seed)
    config = {**PRESETS["tiny-t2v"], **MODEL_OVERRIDES, "num_levels": 1, "levels_per_block": None}
    model = HPDMTransformer(**config).train()
    embeds, mask = prompts([""], "cpu")

    def probe(m: torch.nn.Module) -> torch.Tensor:
        video = torch.zeros(1, 3, *LEVEL0)
        return hpdm_loss(m, scheduler, video, embeds, mask, None, torch.Generator().manual_seed(0)).loss

    freeze_parameters(model, unused_parameters(model, probe))
    return model


def build_optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    groups = lamb_param_groups(model, 0.01)
    if name == "adamw":
        return torch.optim.AdamW([{k: v for k, v in g.items() if k != "adam"} for g in groups], lr=1e-3)
    cls = UncorrectedLamb if name == "lamb-uncorrected" else Lamb
    return cls(groups, lr=5e-3, betas=(0.9, 0.999), weight_decay=0.01, eps=1e-6)


def train(
    name: str, seed: int, steps: int, schedule_steps: int, x0: torch.Tensor, captions: list[str], prompts
) -> dict:
    scheduler = HPDMScheduler(p_mean=-0.4, p_std=1.4, high_noise_fraction=0.5, level_growth=(2, 2, 2))
    model = build_model(seed, prompts, scheduler)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(name, model)
    schedule = get_scheduler("cosine", optimizer=opt, num_warmup_steps=WARMUP, num_training_steps=schedule_steps)
    order = torch.Generator().manual_seed(seed)
    losses, t0, cpu0 = [], time.perf_counter(), time.process_time()
    for step in range(steps):
        idx = torch.randint(len(x0), (BATCH,), generator=order)
        embeds, mask = prompts([captions[i] for i in idx], "cpu")
        out = hpdm_loss(
            model, scheduler, x0[idx], embeds, mask, None, sample_generators(seed, step, range(BATCH)),
            cond_drop_prob=0.1, keep_condition_above_sigma=10.0,
        )  # fmt: skip
        out.loss.backward()
        clip_grad_norm_(trainable, 1.0)
        opt.step()
        schedule.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
    return {
        "optimizer": name,
        "seed": seed,
        "steps": steps,
        "first_50": statistics.fmean(losses[:WINDOW]),
        "last_50": statistics.fmean(losses[-WINDOW:]),
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - cpu0,
        "losses": losses,
    }


def summarize(runs: list[dict]) -> list[dict]:
    """Per optimizer: last-50 loss per seed, mean, seed spread (max - min), and the mean over seeds of the difference
    to ``lamb`` with the same seed (same weights and draws)."""
    rows = []
    lamb = {r["seed"]: r["last_50"] for r in runs if r["optimizer"] == "lamb"}
    for name in OPTIMIZERS:
        mine = [r for r in runs if r["optimizer"] == name]
        last = [r["last_50"] for r in mine]
        row = {"optimizer": name, **{f"seed {r['seed']}": r["last_50"] for r in mine}}
        row |= {"mean": statistics.fmean(last), "spread": max(last) - min(last)}
        if lamb:
            row["minus lamb (paired)"] = statistics.fmean(r["last_50"] - lamb[r["seed"]] for r in mine)
        rows.append(row)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100, help="steps run")
    p.add_argument("--schedule_steps", type=int, default=8000, help="length of the cosine schedule (the demo's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--clips", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="probe_optimizer", help="results/<out>.json")
    args = p.parse_args()
    setup_threads(args.threads)
    x0, captions = clips(args.clips)
    prompts = text_conditioning(captions)
    runs = []
    for seed in args.seeds:
        for name in OPTIMIZERS:
            runs.append(train(name, seed, args.steps, args.schedule_steps, x0, captions, prompts))
            print(f"{name} seed {seed}: last-50 loss {runs[-1]['last_50']:.4f} ({runs[-1]['seconds']:.0f} s)")
    rows = summarize(runs)
    columns = ["optimizer", *(f"seed {s}" for s in args.seeds), "mean", "spread", "minus lamb (paired)"]
    print(table(rows, columns))
    config = dict(steps=args.steps, schedule_steps=args.schedule_steps, seeds=args.seeds, clips=args.clips)
    config |= dict(batch=BATCH, warmup=WARMUP, window=WINDOW)
    path = save(args.out, {"config": config, "summary": rows, "runs": runs})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
