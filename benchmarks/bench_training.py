"""Patch-wise (HPDM) vs full-resolution training, and adaptive vs uniform computation (paper table 1, §4.3).

Same RIN backbone (the ``tiny`` preset's widths: 64-wide tokens, 32 latents of 128, 6 blocks x 2 compute layers) and
the same final video size for both models:

* **HPDM**: 3 levels, adaptive ``[1,1,2,2,3,3]``, one nested patch chain per sample, joint forward + backward;
* **full resolution**: an ``HPDMTransformer`` with ``num_levels=1`` and ``patch_size`` = the video size (it sees every
  voxel), same tokenizer, same widths.

One training step = (HPDM: draw nested boxes and cut the patches out of the video) + sigmas from
``sample_training_sigmas``, ``add_noise_at_sigmas``, ``training_target``, ``precondition`` + forward + MSE on ``v`` (summed over
levels) + backward + AdamW step. Throughput is timed interleaved in one process; peak memory is the peak RSS
(``VmHWM``, reset after imports) of a fresh subprocess per configuration at batch size 1 (as the paper's table 1),
minus the interpreter's RSS after imports.

    .venv/bin/python benchmarks/bench_training.py            # both sizes, ~4 min on 2 cores
    .venv/bin/python benchmarks/bench_training.py --quick    # small size only, ~30 s
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import (  # noqa: E402
    count_flops,
    current_rss_mb,
    interleave,
    paired_ratios,
    peak_rss_mb,
    perturb_,
    reset_peak_rss,
    run_child,
    save,
    setup_threads,
    table,
)
from variants import PREVIOUS, applied  # noqa: E402

from diffusers_hpdm import HPDMScheduler, HPDMTransformer  # noqa: E402
from diffusers_hpdm.geometry import extract_patches, sample_nested_boxes  # noqa: E402

SIZES = {
    # name: (final video, patch)
    "16x64x64": ((16, 64, 64), (4, 16, 16)),
    "32x128x128": ((32, 128, 128), (8, 32, 32)),
}
GROWTH = (2, 2, 2)
NUM_CLASSES = 10


KINDS = {
    # name: (num_levels, levels_per_block)
    "full": (1, None),
    "hpdm": (3, [1, 1, 2, 2, 3, 3]),
    "hpdm-uniform": (3, [3] * 6),
    # the paper's 4-level schedule (§4.6): [1,1,2,2,3,4] vs [4]*6, patch = video / 8
    "hpdm4": (4, [1, 1, 2, 2, 3, 4]),
    "hpdm4-uniform": (4, [4] * 6),
}


def build(kind: str, size: str) -> HPDMTransformer:
    """``kind`` (see ``KINDS``): ``full`` is 1 level with patch = video; the others share the ``tiny`` widths."""
    video, patch = SIZES[size]
    levels, lpb = KINDS[kind]
    if levels == 4:
        patch = tuple(v // 8 for v in video)
    torch.manual_seed(0)
    model = HPDMTransformer.from_preset(
        "tiny", patch_size=video if kind == "full" else patch, num_levels=levels, levels_per_block=lpb
    )
    return perturb_(model, std=0.02).train()


class Trainer:
    """One model + optimizer + a fixed batch of videos; ``step()`` is one full training step."""

    def __init__(self, kind: str, size: str, batch_size: int, seed: int = 0):
        self.model = build(kind, size)
        self.sched = HPDMScheduler(level_growth=GROWTH)
        # fused: one kernel for all parameters; the foreach/for-loop paths launch ~10 tiny ops per parameter
        # tensor (422 here), which dominate a small model's step on a contended 2-core machine.
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=True)
        self.B, self.L = batch_size, self.model.config.num_levels
        self.patch = tuple(self.model.config.patch_size)
        video, _ = SIZES[size]
        g = torch.Generator().manual_seed(seed)
        self.videos = torch.rand(batch_size, 3, *video, generator=g) * 2 - 1
        self.labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
        self.gen = torch.Generator().manual_seed(seed + 1)

    def loss(self) -> torch.Tensor:
        B, L, g, sched = self.B, self.L, self.gen, self.sched
        if L > 1:
            boxes = sample_nested_boxes(B, self.patch, L, GROWTH, generator=g)  # (B, L, 6)
            x0 = extract_patches(self.videos, boxes, self.patch)  # (B, L, C, f, h, w)
        else:
            boxes = torch.tensor([0.0, 0, 0, 1, 1, 1]).expand(B, 1, 6)
            x0 = self.videos[:, None]
        sigmas = sched.sample_training_sigmas(B, L, generator=g)  # (B, L)
        noise = torch.randn(x0.shape, generator=g)
        x_noisy = sched.add_noise_at_sigmas(x0, noise, sigmas)
        target = sched.training_target(x0, noise, sigmas)
        _, _, c_in, c_noise = sched.precondition(sigmas)
        out = self.model(
            sched.broadcast_sigma(c_in, x_noisy) * x_noisy, c_noise, boxes, class_labels=self.labels
        ).sample
        return (out - target).pow(2).flatten(2).mean(-1).mean(0).sum()  # per-level MSE, summed over levels

    def step(self) -> float:
        loss = self.loss()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def child(config: dict) -> dict:
    """Peak-RSS measurement of one configuration in a fresh process."""
    setup_threads(config.get("threads"))
    reset = reset_peak_rss()
    base = current_rss_mb()  # interpreter + torch + diffusers imported, nothing built yet
    trainer = Trainer(config["kind"], config["size"], config["batch_size"])
    after_setup = peak_rss_mb()
    for _ in range(config.get("steps", 2)):
        trainer.step()
    peak = peak_rss_mb()
    params = sum(p.numel() for p in trainer.model.parameters())
    return {
        "peak_reset": reset,
        "rss_after_imports_mb": base,
        "rss_after_setup_mb": after_setup,
        "peak_rss_mb": peak,
        "peak_delta_mb": peak - base,
        # weights + grads + 2 AdamW moments (fp32): what is left is activations and allocator slack
        "peak_minus_weight_state_mb": peak - base - 16 * params / 2**20,
        "params": params,
    }


def throughput_ratio(times: dict, batches: dict, a: str, b: str) -> dict:
    """Throughput of ``a`` over ``b`` (samples/s), per round (adjacent runs) and its median."""
    r = paired_ratios(times, b, a)  # t_b / t_a
    scale = batches[a] / batches[b]
    return {k: v * scale for k, v in r.items()}


def measure_size(size: str, batches: dict[str, int], repeats: int, threads: int) -> dict:
    kinds = list(batches)
    trainers = {k: Trainer(k, size, batches[k]) for k in kinds}
    flops = {k: count_flops(t.step) / batches[k] for k, t in trainers.items()}  # per sample, forward + backward
    times = interleave({k: t.step for k, t in trainers.items()}, repeats=repeats, warmup=1)
    del trainers
    mem = {k: run_child(__file__, {"kind": k, "size": size, "batch_size": 1, "threads": threads}) for k in kinds}
    entry: dict = {
        "batch_sizes": batches,
        "video": SIZES[size][0],
        "patch": SIZES[size][1],
        "flops_per_sample": flops,
        "times": times,
        "samples_per_s": {k: batches[k] / v["median_s"] for k, v in times.items()},
        "memory_bs1": mem,
    }
    if "full" in kinds:
        entry["throughput_ratio_hpdm_vs_full"] = throughput_ratio(times, batches, "hpdm", "full")
        entry["memory_ratio_full_vs_hpdm"] = mem["full"]["peak_delta_mb"] / mem["hpdm"]["peak_delta_mb"]
        entry["activation_memory_ratio_full_vs_hpdm"] = (
            mem["full"]["peak_minus_weight_state_mb"] / mem["hpdm"]["peak_minus_weight_state_mb"]
        )
        entry["flop_ratio_full_vs_hpdm"] = flops["full"] / flops["hpdm"]
    entry["adaptive"] = {}
    for a, u in (("hpdm", "hpdm-uniform"), ("hpdm4", "hpdm4-uniform")):
        if a in kinds and u in kinds:
            r = throughput_ratio(times, batches, a, u)
            fr = flops[u] / flops[a]
            entry["adaptive"][a] = {
                "throughput_ratio": r,
                "flop_ratio": fr,
                "fraction_of_flop_ratio": r["median_paired"] / fr,
            }
    return entry


def adaptive_vs_batch(size: str, batch_sizes: list[int], repeats: int) -> list[dict]:
    """Adaptive/uniform throughput ratio as the batch grows: per-step fixed costs (optimizer, per-op dispatch,
    patch extraction) do not shrink with adaptive computation and are amortised by larger batches."""
    rows = []
    for B in batch_sizes:
        trainers = {k: Trainer(k, size, B) for k in ("hpdm", "hpdm-uniform")}
        times = interleave({k: t.step for k, t in trainers.items()}, repeats=repeats, warmup=1)
        r = paired_ratios(times, "hpdm-uniform", "hpdm")
        rows.append(
            {
                "video": size,
                "batch": B,
                "adaptive throughput x": r["median_paired"],
                "hpdm samples/s": B / times["hpdm"]["median_s"],
            }
        )
        del trainers
    return rows


def implementation_variants(size: str, B: int, repeats: int) -> dict:
    """HPDM training step as is vs its previous implementation (``variants.py``), interleaved, same trainer."""
    trainer = Trainer("hpdm", size, B)
    variants = {
        "as is": (),
        "previous (grid_sample + tanh GELU)": PREVIOUS,
        "previous context lookup (grid_sample)": ("grid_sample_context",),
        "previous GELU (tanh)": ("tanh_gelu",),
    }

    def run(v):
        with applied(trainer.model, v):
            trainer.step()

    times = interleave({k: (lambda v=v: run(v)) for k, v in variants.items()}, repeats=repeats, warmup=1)
    rows = [
        {
            "variant": k,
            "samples/s": B / times[k]["median_s"],
            "time / as is (paired median)": paired_ratios(times, k, "as is")["median_paired"],
        }
        for k in variants
    ]
    return {"video": size, "batch": B, "times": times, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small size only, few repeats (smoke test)")
    ap.add_argument("--sizes", nargs="+", default=None, choices=list(SIZES))
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="HPDM throughput batch (default 16, quick 4)")
    ap.add_argument("--full-batch-size", type=int, default=None, help="full-res batch (default 4; 1 at 32x128x128)")
    ap.add_argument(
        "--threads", type=int, default=1, help="intra-op threads (1: see docs, 2 threads stall on a shared box)"
    )
    ap.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    threads = setup_threads(args.threads)
    sizes = args.sizes or (["16x64x64"] if args.quick else list(SIZES))
    repeats = args.repeats or (3 if args.quick else 5)
    results: dict = {"sizes": {}, "repeats": repeats, "quick": args.quick}
    rows, adaptive_rows = [], []
    for size in sizes:
        # "maxed-out" batches as in the paper's table 1, within this machine's 23 GB: the full-resolution model's
        # GEMMs are already large at batch 1-4 (4k-32k tokens per sample); the HPDM ones need a batch to amortise
        # per-step fixed costs.
        hb = args.batch_size or (4 if args.quick else 16)
        fb = args.full_batch_size or (4 if size == "16x64x64" else 1)
        kinds = ["hpdm", "hpdm-uniform"] + (["hpdm4", "hpdm4-uniform"] if size == "32x128x128" else [])
        batches = {"full": fb, **{k: hb for k in kinds}}
        kinds = list(batches)
        entry = measure_size(size, batches, repeats, threads)
        results["sizes"][size] = entry
        for k in kinds:
            rows.append(
                {
                    "video": size,
                    "model": k,
                    "levels": KINDS[k][0],
                    "batch": batches[k],
                    "samples/s": entry["samples_per_s"][k],
                    "GFLOP/sample": entry["flops_per_sample"][k] / 1e9,
                    "peak RSS delta MB (bs 1)": entry["memory_bs1"][k]["peak_delta_mb"],
                    "minus weight state MB": entry["memory_bs1"][k]["peak_minus_weight_state_mb"],
                    "params M": entry["memory_bs1"][k]["params"] / 1e6,
                }
            )
        for a, v in entry["adaptive"].items():
            adaptive_rows.append(
                {
                    "video": size,
                    "schedule": str(KINDS[a][1]) + " vs " + str(KINDS[a + "-uniform"][1]),
                    "throughput x (paired median)": v["throughput_ratio"]["median_paired"],
                    "FLOP ratio": v["flop_ratio"],
                    "fraction of FLOP ratio": v["fraction_of_flop_ratio"],
                }
            )
        sp = entry["throughput_ratio_hpdm_vs_full"]
        print(
            f"[{size}] HPDM vs full: throughput x{sp['median_paired']:.2f} "
            f"(paired rounds {sp['min_paired']:.2f}..{sp['max_paired']:.2f}), "
            f"peak memory x{entry['memory_ratio_full_vs_hpdm']:.2f} "
            f"(x{entry['activation_memory_ratio_full_vs_hpdm']:.2f} without weight state), FLOPs x{entry['flop_ratio_full_vs_hpdm']:.2f}",
            flush=True,
        )
    if not args.quick:
        fx = results["variants"] = implementation_variants("32x128x128", 16, repeats)
        print("\nAs is vs the previous implementation, HPDM training step (32x128x128, batch 16)")
        print(table(fx["rows"], list(fx["rows"][0])))
        results["adaptive_vs_batch"] = adaptive_vs_batch("32x128x128", [1, 4, 16], repeats)
        print("\nAdaptive vs uniform throughput as the batch grows")
        print(table(results["adaptive_vs_batch"], list(results["adaptive_vs_batch"][0])))
    print("\nTraining step throughput and peak memory (same RIN widths, same final video)")
    print(table(rows, list(rows[0])))
    print("\nAdaptive computation vs uniform")
    print(table(adaptive_rows, list(adaptive_rows[0])))
    path = save("bench_training" + ("_quick" if args.quick else ""), results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
