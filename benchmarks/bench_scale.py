"""Sampling a 64x288x512 video with the ``tiny-t2v-4`` preset (patch 8x36x64, tokenizer 1x3x4, levels per block
[1,2,2,3,3,4], 4 levels) on this 2-core machine: wall time, peak RSS, tiles per level, and how both grow with the
resolution (stopping after 2, 3 or 4 levels: 16x72x128, 32x144x256, 64x288x512).

Random weights (the zero-initialised head perturbed), the offline tiny T5 encoder, classifier-free guidance 3.0 (two
streams per tile), ``num_inference_steps=4`` (4 Heun steps = 7 evaluations at level 0, then 2, 1, 1 Euler steps),
50% overlap on every axis, cached context, ``tile_batch_size=64``. Every size runs in a fresh subprocess; peak RSS is
the ``VmHWM`` after the pipeline is built (reset) plus what the process already held.

The time of the full size is also *predicted* from the 3-level run (cost per tile-block evaluation at level 2,
times the level-3 workload), to check that the scaling model holds.

    .venv/bin/python benchmarks/bench_scale.py            # 2, 3, 4 levels + 4 levels previous / proposed: ~5 min
    .venv/bin/python benchmarks/bench_scale.py --quick    # 2 and 3 levels only + the predicted 4-level time (~1 min)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import current_rss_mb, peak_rss_mb, perturb_, reset_peak_rss, run_child, save, setup_threads, table  # noqa: E402
from variants import PREVIOUS, applied  # noqa: E402

from diffusers_hpdm import HierarchicalPatchPipeline, HPDMScheduler, HPDMTransformer  # noqa: E402
from diffusers_hpdm.pipelines.tiling import TiledCanvas  # noqa: E402
from diffusers_hpdm.text import build_tiny_text_encoder, build_word_tokenizer  # noqa: E402

PROMPT = "a red circle moving right slowly on a gray background"
PRESET = "tiny-t2v-4"


def build_pipe() -> HierarchicalPatchPipeline:
    tok = build_word_tokenizer([PROMPT])
    enc = build_tiny_text_encoder(tok, 64)
    torch.manual_seed(0)
    model = perturb_(HPDMTransformer.from_preset(PRESET), std=0.02).eval()
    pipe = HierarchicalPatchPipeline(model, HPDMScheduler(level_growth=model.config.level_growth), enc, tok)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def child(cfg: dict) -> dict:
    setup_threads(cfg["threads"])
    rss_imports = current_rss_mb()
    pipe = build_pipe()
    tm, sched = pipe.transformer, pipe.scheduler
    levels = cfg["levels"]
    sizes = tm.level_sizes[:levels]
    tiles = [len(TiledCanvas(s, tm.config.patch_size)) for s in sizes]
    stamps: list[tuple[int, float, int]] = []  # (level, start time, evaluations)
    orig = sched.set_timesteps

    def set_timesteps(*a, level=0, **k):
        out = orig(*a, level=level, **k)
        stamps.append((level, time.perf_counter(), len(sched.timesteps)))
        return out

    sched.set_timesteps = set_timesteps
    breakdown = None
    if cfg.get("breakdown"):
        from bench_sampling import Breakdown  # times the finest level's parts (wraps functions; tiny overhead)

        breakdown = Breakdown(pipe, levels - 1).__enter__()
    reset_peak_rss()
    rss_before = current_rss_mb()
    t0 = time.perf_counter()
    with applied(tm, cfg.get("variants", [])):
        video = pipe(
            PROMPT,
            num_frames=sizes[-1][0],
            height=sizes[-1][1],
            width=sizes[-1][2],
            num_inference_steps=cfg["steps"],
            tile_batch_size=cfg["tile_batch_size"],
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).frames
    total = time.perf_counter() - t0
    peak = peak_rss_mb()
    parts = None
    if breakdown is not None:
        breakdown.__exit__(None, None, None)
        level_s, parts = breakdown.rows()
    ends = [s[1] for s in stamps[1:]] + [t0 + total]
    blocks = tm.block_levels()
    streams = 2  # classifier-free guidance
    per_level = []
    for (lvl, start, evals), end, n in zip(stamps, ends, tiles):
        per_level.append(
            {
                "level": lvl,
                "canvas": list(sizes[lvl]),
                "tiles": n,
                "evaluations": evals,
                "blocks": len(blocks[lvl]),
                "tile_block_evals": n * evals * streams * len(blocks[lvl]),
                "seconds": end - start,  # this level's loop and its context pass for the finer levels
            }
        )
    return {
        "levels": levels,
        "variants": cfg.get("variants", []),
        "frames_checksum": float(video.double().sum()),
        "video": list(sizes[-1]),
        "output_shape": list(video.shape),
        "seconds": total,
        "per_level": per_level,
        "rss_after_imports_mb": rss_imports,
        "rss_before_sampling_mb": rss_before,
        "peak_rss_mb": peak,
        "peak_delta_mb": peak - rss_before,
        "finest_level_breakdown": parts,
    }


def predict_last_level(smaller: dict, target_levels: int, steps: int) -> dict:
    """Time of level ``L-1`` of a ``target_levels`` run from the cost per tile-block evaluation measured at the
    finest level of a smaller run (tile count, evaluations, streams and blocks run are known exactly)."""
    pipe_model = HPDMTransformer.from_preset(PRESET)
    sizes = pipe_model.level_sizes[:target_levels]
    tiles = [len(TiledCanvas(s, pipe_model.config.patch_size)) for s in sizes]
    sched = HPDMScheduler(level_growth=pipe_model.config.level_growth)
    blocks = pipe_model.block_levels()
    last = smaller["per_level"][-1]
    per_unit = last["seconds"] / last["tile_block_evals"]
    # blocks alone under-count the per-tile fixed work (tokenizer, head, context lookup): bound it with tiles x evals
    per_tile_eval = last["seconds"] / (last["tiles"] * last["evaluations"] * 2)
    known = sum(level["seconds"] for level in smaller["per_level"])
    lvl = target_levels - 1
    sched.set_timesteps(steps, level=lvl)
    evals = len(sched.timesteps)
    units = tiles[lvl] * evals * 2 * len(blocks[lvl])
    # the smaller run's finest level had no context pass; the target run adds one over that level's tiles
    ctx_pass = last["seconds"] / max(1, last["evaluations"])
    return {
        "from_levels": smaller["levels"],
        "predicted_s_by_blocks": known + ctx_pass + per_unit * units,
        "predicted_s_by_tiles": known + ctx_pass + per_tile_eval * tiles[lvl] * evals * 2,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 and 3 levels only; predict the 4-level time")
    ap.add_argument("--levels", type=int, nargs="+", default=None)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--tile-batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-breakdown", action="store_true", help="skip timing the finest level's parts")
    ap.add_argument(
        "--no-variants",
        action="store_true",
        help="skip re-running the largest size as previously implemented and with the proposed fix (then as is again)",
    )
    ap.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    setup_threads(args.threads)
    levels = args.levels or ([2, 3] if args.quick else [2, 3, 4])
    runs = []
    for lv in levels:
        cfg = {
            "levels": lv,
            "steps": args.steps,
            "tile_batch_size": args.tile_batch_size,
            "threads": args.threads,
            "breakdown": not args.no_breakdown and lv == max(levels),
        }
        r = run_child(__file__, cfg, timeout=1800)
        runs.append(r)
        print(
            f"{lv} levels -> {'x'.join(map(str, r['video']))}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
            f"(+{r['peak_delta_mb']:.0f} MB while sampling); tiles per level {[x['tiles'] for x in r['per_level']]}",
            flush=True,
        )
    rows = [
        {
            "video": "x".join(map(str, r["video"])),
            "level": x["level"],
            "canvas": "x".join(map(str, x["canvas"])),
            "tiles": x["tiles"],
            "evals": x["evaluations"],
            "blocks": x["blocks"],
            "tile-block evals": x["tile_block_evals"],
            "s": x["seconds"],
            "ms per tile-block eval": 1e3 * x["seconds"] / x["tile_block_evals"],
        }
        for r in runs
        for x in r["per_level"]
    ]
    compared, again = [], None
    if not args.no_variants:
        top = max(levels)
        base = dict(cfg, levels=top, breakdown=not args.no_breakdown)
        for variants in (PREVIOUS, ("context_once_per_level",)):
            compared.append(run_child(__file__, dict(base, variants=list(variants)), timeout=1800))
        again = run_child(__file__, dict(base, breakdown=False), timeout=1800)
        first = next(r for r in runs if r["levels"] == top)
        as_is = (first["seconds"] + again["seconds"]) / 2  # the as-is runs before and after
        for r in compared:
            print(
                f"{top} levels with {r['variants']}: {r['seconds']:.1f} s vs {as_is:.1f} s as is (mean of the runs "
                f"before and after) -> time x{r['seconds'] / as_is:.2f}; finest level "
                f"{r['per_level'][-1]['seconds']:.1f} s vs {first['per_level'][-1]['seconds']:.1f} s; "
                f"peak RSS {r['peak_rss_mb']:.0f} MB vs {first['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    print("\nPer level (time includes the level's context pass)")
    print(table(rows, list(rows[0])))
    summary = [
        {
            "video": "x".join(map(str, r["video"])),
            "levels": r["levels"],
            "voxels M": torch.tensor(r["video"]).prod().item() * 3 / 1e6,
            "total tiles": sum(x["tiles"] for x in r["per_level"]),
            "wall s": r["seconds"],
            "peak RSS MB": r["peak_rss_mb"],
        }
        for r in runs
    ]
    for r in [runs[-1], *compared]:
        if r.get("finest_level_breakdown"):
            tag = f" with {r['variants']}" if r["variants"] else " as is"
            print(f"\nWhere the finest level's time goes ({'x'.join(map(str, r['video']))}{tag})")
            print(table(r["finest_level_breakdown"], list(r["finest_level_breakdown"][0])))
    print("\nGrowth with resolution")
    print(table(summary, list(summary[0])))
    res = {
        "preset": PRESET,
        "steps": args.steps,
        "threads": args.threads,
        "runs": runs,
        "per_level": rows,
        "summary": summary,
        "variant_runs": compared,
        "as_is_again": again,
    }
    three = next((r for r in runs if r["levels"] == 3), None)
    if three is not None:
        pred = res["prediction_4_levels"] = predict_last_level(three, 4, args.steps)
        measured = next((r["seconds"] for r in runs if r["levels"] == 4), None)
        res["prediction_4_levels"]["measured_s"] = measured
        print(
            f"\n64x288x512 predicted from the 3-level run: {pred['predicted_s_by_blocks']:.0f} s (cost per tile-block) .. "
            f"{pred['predicted_s_by_tiles']:.0f} s (cost per tile)"
            + (f"; measured {measured:.0f} s" if measured else "")
        )
    path = save("bench_scale" + ("_quick" if args.quick else ""), res)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
