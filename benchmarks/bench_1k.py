"""The 1K size on this machine: a 4-level ``tiny-t2v-1k`` model (shaped like the paper's T2V-1K: 16 frames kept,
height and width doubling, 16x72x128 patches) sampled to 16x576x1024, its wall time and peak RSS, and how both grow
from 64x288x512 (``tiny-t2v-4``, the same widths) and over the 1K model's own levels (16x144x256, 16x288x512).

Random weights, the offline tiny text encoder, CFG 3.0, ``num_inference_steps=4``, 50% overlap on every axis that
tiles, cached context, ``tile_batch_size=16``; every run is a fresh subprocess (peak RSS: its ``VmHWM``, which
includes torch and the model). The machine load is recorded around every run.

    .venv/bin/python benchmarks/bench_1k.py                      # 64x288x512 and the 1K model at 2, 3, 4 levels
    .venv/bin/python benchmarks/bench_1k.py --offload-context    # the context cache kept on the CPU (GPU runs)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import machine, peak_rss_mb, perturb_, run_child, save, setup_threads  # noqa: E402

PROMPT = "a red circle moving right slowly on a gray background"
RUNS = [("tiny-t2v-4", 4), ("tiny-t2v-1k", 2), ("tiny-t2v-1k", 3), ("tiny-t2v-1k", 4)]


def child(cfg: dict) -> dict:
    from diffusers_hpdm import HierarchicalPatchPipeline, HPDMScheduler, HPDMTransformer
    from diffusers_hpdm.pipelines.tiling import TiledCanvas
    from diffusers_hpdm.text import build_tiny_text_encoder, build_word_tokenizer

    setup_threads(cfg["threads"])
    tok = build_word_tokenizer([PROMPT])
    torch.manual_seed(0)
    model = perturb_(HPDMTransformer.from_preset(cfg["preset"]), std=0.02).eval()
    pipe = HierarchicalPatchPipeline(
        model, HPDMScheduler(level_growth=model.config.level_growth), build_tiny_text_encoder(tok, 64), tok
    )
    pipe.set_progress_bar_config(disable=True)
    sizes = model.level_sizes[: cfg["levels"]]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    video = pipe(
        PROMPT, num_frames=sizes[-1][0], height=sizes[-1][1], width=sizes[-1][2], num_inference_steps=cfg["steps"],
        tile_batch_size=cfg["tile_batch_size"], offload_context=cfg["offload_context"],
        generator=torch.Generator().manual_seed(0), output_type="pt",
    ).frames  # fmt: skip
    seconds = time.perf_counter() - t0
    voxels = sizes[-1][0] * sizes[-1][1] * sizes[-1][2]
    return dict(
        preset=cfg["preset"], levels=cfg["levels"], video=list(sizes[-1]), voxels=voxels, seconds=seconds,
        peak_rss_mb=peak_rss_mb(), tiles=[len(TiledCanvas(s, model.config.patch_size)) for s in sizes],
        finite=bool(torch.isfinite(video).all()), loadavg_before=load, loadavg_after=os.getloadavg()[0],
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--tile-batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--offload-context", action="store_true")
    ap.add_argument("--only-1k", action="store_true", help="the 16x576x1024 run alone")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    base = dict(steps=args.steps, tile_batch_size=args.tile_batch_size, threads=args.threads,
                offload_context=args.offload_context)  # fmt: skip
    rows = []
    for preset, levels in RUNS[-1:] if args.only_1k else RUNS:
        r = run_child(__file__, {**base, "preset": preset, "levels": levels}, timeout=3600)
        rows.append(r)
        print(f"{preset} {'x'.join(map(str, r['video']))}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, "
              f"tiles {r['tiles']} (load {r['loadavg_before']:.1f} -> {r['loadavg_after']:.1f})", flush=True)  # fmt: skip
    ref = next((r for r in rows if r["preset"] == "tiny-t2v-4"), None)
    if ref is not None:
        for r in rows:
            r["time_vs_64x288x512"] = r["seconds"] / ref["seconds"]
            r["rss_vs_64x288x512"] = r["peak_rss_mb"] / ref["peak_rss_mb"]
    path = save(
        "bench_1k" + ("_offload" if args.offload_context else ""), dict(machine=machine(), config=base, runs=rows)
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
