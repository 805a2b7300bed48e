"""Sampling speed of ``HierarchicalPatchPipeline`` (paper §4.4-4.5, appendix D.1).

Model: the ``tiny-t2v`` preset (3 levels, 4x16x16 patches -> 16x64x64 videos, 27 tiles at level 1 and 343 at
level 2 with 50% overlap on every axis) with small random weights (the zero-initialised head perturbed so that
outputs are non-trivial), the offline tiny T5 text encoder, classifier-free guidance 3.0 (two streams per tile),
``num_inference_steps`` N (levels take N, N/2, N/4 steps; Heun at level 0). If ``models/hpdm-shapes-demo`` exists
(and fits the current model definition), section c also reports its bf16 PSNR.

Sections (every ratio is measured interleaved in this one run, median over repeats):

a. cached vs uncached context (``cache_context=True/False``, same seed; frames must match);
b. throughput vs ``tile_batch_size`` (1, 4, 16, 64, all tiles);
c. bf16 vs fp32 (``pipe.to(torch.bfloat16)``; fp32 weights under ``torch.autocast``), PSNR of the frames against
   fp32; the same for the previous implementation (``grid_sample`` context lookup + tanh GELU, ``variants.py``), and
   for it with the lookup run in fp32;
d. fraction of this machine's matmul peak (a large fp32 matmul, same run) reached by sampling's FLOPs
   (``FlopCounterMode`` over a whole call), plus how much of the time the matmul kernels themselves take;
e. time breakdown of the finest level: transformer blocks, context lookup, fusion projection, tile fusion, scheduler,
   tokenizer/conditioning/head, everything else;
f. intra-op threads: 1 vs 2 on this shared 2-core machine;
g. the code as is vs its previous implementation (``grid_sample`` context lookup, tanh GELU; each alone and both)
   and vs the still-proposed "context once per level" (``variants.py``, switched inside the benchmark);
h. regional compilation: ``pipe.transformer.compile_repeated_blocks(dynamic=True)`` (``torch.compile`` of the
   ``RINBlock``s, diffusers' ``_repeated_blocks``) vs eager: compile time, speed-up, frame difference, and the
   fraction of the matmul peak reached (the FLOPs are the eager call's: compilation does not change them).

    .venv/bin/python benchmarks/bench_sampling.py            # N=4, 3 repeats: ~11 min on 2 shared cores
    .venv/bin/python benchmarks/bench_sampling.py --no-wide  # without the 2x wider model: ~8 min
    .venv/bin/python benchmarks/bench_sampling.py --quick    # N=2, 1 repeat:  ~4 min
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import (  # noqa: E402
    RESULTS,
    count_flops,
    interleave,
    matmul_peak_gflops,
    paired_ratios,
    perturb_,
    save,
    setup_threads,
    table,
)
from variants import PREVIOUS, applied  # noqa: E402

import diffusers_hpdm.models.transformer_hpdm as tmod  # noqa: E402
from diffusers_hpdm import HierarchicalPatchPipeline, HPDMScheduler, HPDMTransformer  # noqa: E402
from diffusers_hpdm.models.context import DeepContextFusion  # noqa: E402
from diffusers_hpdm.models.rin import RINBlock  # noqa: E402
from diffusers_hpdm.pipelines.tiling import TiledCanvas  # noqa: E402
from diffusers_hpdm.text import build_tiny_text_encoder, build_word_tokenizer  # noqa: E402

PROMPT = "a red circle moving right slowly on a gray background"
DEMO = Path(__file__).resolve().parents[1] / "models" / "hpdm-shapes-demo"
WIDE = dict(token_dim=128, latent_dim=256, num_latents=64, num_heads=4)  # tiny-t2v 2x wider
SECTIONS = "abcdefgh"


def build_pipe(std: float = 0.02, preset: str = "tiny-t2v", **overrides) -> HierarchicalPatchPipeline:
    tok = build_word_tokenizer([PROMPT])
    enc = build_tiny_text_encoder(tok, 64)
    torch.manual_seed(0)
    model = perturb_(HPDMTransformer.from_preset(preset, **overrides), std=std).eval()
    pipe = HierarchicalPatchPipeline(model, HPDMScheduler(level_growth=(2, 2, 2)), enc, tok)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_demo() -> HierarchicalPatchPipeline | None:
    """The bundled demo, unless it is missing or its checkpoint does not fit the current model definition."""
    if not DEMO.exists():
        return None
    _, info = HPDMTransformer.from_pretrained(DEMO / "transformer", output_loading_info=True)
    stale = info["missing_keys"] + info["unexpected_keys"]
    if stale:
        print(f"{DEMO.name} does not match the current model ({stale}): no demo PSNR", flush=True)
        return None
    pipe = HierarchicalPatchPipeline.from_pretrained(str(DEMO))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call(pipe, steps: int, **kw) -> torch.Tensor:
    kw.setdefault("tile_batch_size", 64)
    return pipe(
        PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt", **kw
    ).frames.float()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a - b).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


# ---------------------------------------------------------------------------------------------------------------


def patched(p, steps, variants: tuple[str, ...], **kw) -> torch.Tensor:
    with applied(p.transformer, variants):
        return call(p, steps, **kw)


def section_cache(pipe, steps: int, repeats: int) -> dict:
    out = {}
    fns = {
        "cached": lambda: out.__setitem__("cached", call(pipe, steps, cache_context=True)),
        "uncached": lambda: out.__setitem__("uncached", call(pipe, steps, cache_context=False)),
    }
    times = interleave(fns, repeats=repeats, warmup=0)
    r = paired_ratios(times, "uncached", "cached")
    return {
        "steps": steps,
        "times": times,
        "speedup": r,
        "max_abs_frame_diff": (out["cached"] - out["uncached"]).abs().max().item(),
    }


def section_tile_batch(pipe, steps: int, repeats: int, sizes: list[int]) -> dict:
    n_last = len(TiledCanvas(pipe.transformer.level_sizes[-1], pipe.transformer.config.patch_size))
    sizes = [s for s in sizes if s < n_last] + [n_last]
    fns = {f"tbs={s}": (lambda s=s: call(pipe, steps, tile_batch_size=s)) for s in sizes}
    times = interleave(fns, repeats=repeats, warmup=0)
    base = times[f"tbs={sizes[0]}"]["median_s"]
    rows = [
        {
            "tile_batch_size": s,
            "median s": times[f"tbs={s}"]["median_s"],
            "speedup vs first": base / times[f"tbs={s}"]["median_s"],
        }
        for s in sizes
    ]
    return {"steps": steps, "tiles_last_level": n_last, "times": times, "rows": rows}


def to_bf16(pipe) -> HierarchicalPatchPipeline:
    """A bf16 copy. The pipeline keeps its canvas and scheduler in fp32 under a bf16 transformer (commit 127a5d0), so
    both draw the same noise and the PSNR compares the same sample."""
    bf16 = HierarchicalPatchPipeline(
        copy.deepcopy(pipe.transformer),
        copy.deepcopy(pipe.scheduler),
        copy.deepcopy(pipe.text_encoder),
        pipe.tokenizer,
    ).to(torch.bfloat16)
    bf16.set_progress_bar_config(disable=True)
    return bf16


def section_bf16(pipe, steps: int, repeats: int, label: str) -> dict:
    fp32, bf16 = pipe, to_bf16(pipe)
    out = {}

    def autocast():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out["autocast"] = call(fp32, steps)

    # name: (pipeline, variants, the fp32 run it is compared with)
    variants = {
        "fp32": (fp32, (), "fp32"),
        "bf16": (bf16, (), "fp32"),
        "fp32, previous": (fp32, PREVIOUS, "fp32, previous"),
        "bf16, previous": (bf16, PREVIOUS, "fp32, previous"),
        "bf16, previous + fp32 grid_sample": (bf16, ("fp32_grid_sample", "tanh_gelu"), "fp32, previous"),
    }
    fns = {k: (lambda k=k, p=p, v=v: out.__setitem__(k, patched(p, steps, v))) for k, (p, v, _) in variants.items()}
    fns["autocast"] = autocast
    base = {k: b for k, (_, _, b) in variants.items()} | {"autocast": "fp32"}
    times = interleave(fns, repeats=repeats, warmup=1)
    rows = [
        {
            "variant": k,
            "median s": times[k]["median_s"],
            "vs": base[k],
            "speedup vs that fp32 (paired median)": paired_ratios(times, base[k], k)["median_paired"],
            "speedup vs fp32 as is": paired_ratios(times, "fp32", k)["median_paired"],
            "PSNR vs that fp32 dB": psnr(out[k], out[base[k]]),
        }
        for k in fns
    ]
    return {
        "model": label,
        "steps": steps,
        "times": times,
        "rows": rows,
        "fp32_frame_std": out["fp32"].std().item(),
        "fp32_frame_range": [out["fp32"].min().item(), out["fp32"].max().item()],
    }


def demo_psnr(steps: int) -> dict | None:
    """bf16 vs fp32 PSNR of the trained demo model (its own config), if it is there: trained weights give smoother
    outputs than random ones."""
    demo = load_demo()
    if demo is None:
        return None
    fp32, bf16 = call(demo, steps), call(to_bf16(demo), steps)
    return {"model": str(DEMO), "activation_fn": demo.transformer.config.activation_fn, "psnr_db": psnr(bf16, fp32)}


MATMUL_OPS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
)


def section_peak(pipe, steps: int, repeats: int, label: str) -> dict:
    flops = count_flops(lambda: call(pipe, steps))
    peaks = [matmul_peak_gflops(2048)]
    t = interleave({"pipe": lambda: call(pipe, steps)}, repeats=repeats, warmup=1)["pipe"]["median_s"]
    peaks.append(matmul_peak_gflops(2048))
    peak = max(peaks)  # contention only lowers the measured peak
    # share of wall time spent inside matmul/attention kernels (torch.profiler, one more call)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        call(pipe, steps)
        prof_wall = time.perf_counter() - t0
    self_us = defaultdict(float)
    for ev in prof.key_averages():
        self_us[ev.key] += ev.self_cpu_time_total
    mm_s = sum(v for k, v in self_us.items() if k in MATMUL_OPS) / 1e6
    achieved = flops / t / 1e9
    return {
        "model": label,
        "steps": steps,
        "flops": flops,
        "median_s": t,
        "achieved_gflops": achieved,
        "matmul_peak_gflops": peak,
        "fraction_of_peak": achieved / peak,
        "profiled_wall_s": prof_wall,
        "matmul_kernel_s": mm_s,
        "matmul_share_of_time": mm_s / prof_wall,
        "matmul_kernel_gflops": flops / mm_s / 1e9,
        "top_ops_self_s": dict(sorted(((k, v / 1e6) for k, v in self_us.items()), key=lambda kv: -kv[1])[:12]),
    }


def section_compile(pipe, steps: int, repeats: int) -> dict:
    compiled = build_pipe()
    t0 = time.perf_counter()
    compiled.transformer.compile_repeated_blocks(dynamic=True)
    frames = call(compiled, steps)  # compiles here
    compile_s = time.perf_counter() - t0
    diff = (frames - call(pipe, steps)).abs().max().item()
    flops = count_flops(lambda: call(pipe, steps))
    peaks = [matmul_peak_gflops(2048)]
    times = interleave({"eager": lambda: call(pipe, steps), "compiled": lambda: call(compiled, steps)}, repeats)
    peaks.append(matmul_peak_gflops(2048))
    peak = max(peaks)
    rows = [
        {"variant": k, "median_s": v["median_s"], "fraction_of_peak": flops / v["median_s"] / 1e9 / peak}
        for k, v in times.items()
    ]
    return {
        "steps": steps,
        "first_call_with_compile_s": compile_s,
        "max_abs_frame_diff": diff,
        "speedup": paired_ratios(times, "eager", "compiled"),
        "matmul_peak_gflops": peak,
        "rows": rows,
        "times": times,
    }


class Breakdown:
    """Inclusive wall time of named functions, counted only while the pipeline samples ``level``."""

    def __init__(self, pipe, level: int):
        self.pipe, self.level, self.current = pipe, level, None
        self.acc: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.patches: list[tuple[object, str, object]] = []
        self.level_start = self.level_end = None

    def _wrap(self, owner, attr: str, category: str):
        orig = getattr(owner, attr)
        bd = self

        def wrapper(*args, **kwargs):
            if bd.current != bd.level:
                return orig(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                bd.acc[category] += time.perf_counter() - t0
                bd.calls[category] += 1

        setattr(owner, attr, wrapper)
        self.patches.append((owner, attr, orig))

    def __enter__(self):
        sched = self.pipe.scheduler
        bd = self
        orig_set = sched.set_timesteps

        def set_timesteps(*a, level=0, **k):
            bd.current = level
            if level == bd.level:
                bd.level_start = time.perf_counter()
            return orig_set(*a, level=level, **k)

        sched.set_timesteps = set_timesteps
        self.patches.append((sched, "set_timesteps", None))
        orig_post = self.pipe._postprocess

        def postprocess(*a, **k):
            if bd.current == bd.level and bd.level_end is None:
                bd.level_end = time.perf_counter()
            return orig_post(*a, **k)

        self.pipe._postprocess = postprocess
        self.patches.append((self.pipe, "_postprocess", None))
        self._wrap(RINBlock, "forward", "transformer blocks")
        self._wrap(tmod, "gather_context", "context lookup (gather_context: index + interpolate)")
        self._wrap(DeepContextFusion, "forward", "context fusion projection")
        for name in ("_tokenize", "_detokenize", "_conditioning", "_coords"):
            self._wrap(HPDMTransformer, name, "tokenizer + conditioning + head")
        for name in ("extract", "accumulate", "normalize", "new_accumulator"):
            self._wrap(TiledCanvas, name, "tile fusion (extract + accumulate + normalize)")
        for name in ("step", "churn"):
            self._wrap(sched, name, "scheduler")
        return self

    def __exit__(self, *exc):
        for owner, attr, orig in reversed(self.patches):
            if orig is None or owner in (self.pipe.scheduler, self.pipe):
                if attr in vars(owner):
                    delattr(owner, attr)
            else:
                setattr(owner, attr, orig)

    def rows(self) -> tuple[float, list[dict]]:
        total = self.level_end - self.level_start
        rows = [{"part": k, "s": v, "share": v / total, "calls": self.calls[k]} for k, v in self.acc.items()]
        rows.sort(key=lambda r: -r["s"])
        rest = total - sum(self.acc.values())
        rows.append({"part": "everything else", "s": rest, "share": rest / total, "calls": ""})
        return total, rows


def section_breakdown(pipe, steps: int, tile_batch_size: int, cache_context: bool = True) -> dict:
    level = pipe.transformer.config.num_levels - 1
    call(pipe, steps, tile_batch_size=tile_batch_size, cache_context=cache_context)  # warm-up
    with Breakdown(pipe, level) as bd:
        call(pipe, steps, tile_batch_size=tile_batch_size, cache_context=cache_context)
    total, rows = bd.rows()
    return {
        "level": level,
        "steps": steps,
        "tile_batch_size": tile_batch_size,
        "cache_context": cache_context,
        "level_s": total,
        "rows": rows,
    }


def section_threads(pipe, steps: int, repeats: int, base_threads: int) -> dict:
    def with_threads(n):
        def fn():
            torch.set_num_threads(n)
            call(pipe, steps)

        return fn

    times = interleave({"1 thread": with_threads(1), "2 threads": with_threads(2)}, repeats=repeats, warmup=0)
    torch.set_num_threads(base_threads)
    return {"steps": steps, "times": times, "two_over_one": paired_ratios(times, "2 threads", "1 thread")}


def section_variants(pipe, steps: int, repeats: int) -> dict:
    variants = {
        "as is": (),
        "previous (grid_sample + tanh GELU)": PREVIOUS,
        "previous context lookup (grid_sample)": ("grid_sample_context",),
        "previous GELU (tanh)": ("tanh_gelu",),
        "context once per level (proposed)": ("context_once_per_level",),
    }
    out = {}
    fns = {k: (lambda k=k, v=v: out.__setitem__(k, patched(pipe, steps, v))) for k, v in variants.items()}
    times = interleave(fns, repeats=repeats, warmup=0)
    rows = [
        {
            "variant": k,
            "median s": times[k]["median_s"],
            "time / as is (paired median)": paired_ratios(times, k, "as is")["median_paired"],
            "max |frame diff|": (out[k] - out["as is"]).abs().max().item(),
        }
        for k in variants
    ]
    return {"steps": steps, "times": times, "rows": rows}


# ---------------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None, help="level-0 steps N (default 8, quick 4)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (1: see section f)")
    ap.add_argument("--sections", default=SECTIONS, help="a subset keeps the other sections' saved results")
    ap.add_argument("--no-wide", action="store_true", help="skip the 2x wider model in (c) and (d) (~3 min less)")
    args = ap.parse_args()
    threads = setup_threads(args.threads)
    steps = args.steps or (2 if args.quick else 4)
    repeats = args.repeats or (1 if args.quick else 3)
    pipe = build_pipe()
    name = "bench_sampling" + ("_quick" if args.quick else "")
    saved = RESULTS / f"{name}.json"
    res: dict = json.loads(saved.read_text()) if set(args.sections) < set(SECTIONS) and saved.exists() else {}
    res.pop("machine", None)
    res.update(quick=args.quick, steps=steps, repeats=repeats, threads=threads, sections_last_run=args.sections)
    tiles = [len(TiledCanvas(s, pipe.transformer.config.patch_size)) for s in pipe.transformer.level_sizes]
    res["tiles_per_level"] = tiles
    print(
        f"tiny-t2v: levels {pipe.transformer.level_sizes}, tiles per level {tiles}, N={steps}, CFG 3.0, threads {threads}"
    )

    if "a" in args.sections:
        a = res["cache"] = section_cache(pipe, steps, repeats)
        print(
            f"\n(a) cached vs uncached context: x{a['speedup']['median_paired']:.2f} faster "
            f"(cached {a['times']['cached']['median_s']:.2f} s, uncached {a['times']['uncached']['median_s']:.2f} s); "
            f"max |frame diff| {a['max_abs_frame_diff']:.2e}",
            flush=True,
        )
    if "b" in args.sections:
        b = res["tile_batch"] = section_tile_batch(pipe, max(2, steps // 2), repeats, [1, 4, 16, 64])
        print(f"\n(b) tile_batch_size (N={b['steps']}, {b['tiles_last_level']} tiles at the last level)")
        print(table(b["rows"], list(b["rows"][0])), flush=True)
    if "c" in args.sections:
        cs = res["bf16"] = [section_bf16(pipe, steps, repeats, "tiny-t2v, random weights (std 0.02 perturbation)")]
        if not args.quick and not args.no_wide:
            wide = build_pipe(**WIDE)
            cs.append(section_bf16(wide, 2, 2, "tiny-t2v x2 wide, random weights"))
        for c in cs:
            print(f"\n(c) bf16 vs fp32 ({c['model']}, N={c['steps']}; fp32 frames std {c['fp32_frame_std']:.3f})")
            print(table(c["rows"], list(c["rows"][0])), flush=True)
        dp = res["bf16_demo"] = demo_psnr(steps)
        if dp:
            print(f"bf16 vs fp32 PSNR of {dp['model']} ({dp['activation_fn']}): {dp['psnr_db']:.1f} dB", flush=True)
    if "d" in args.sections:
        d = res["peak"] = [section_peak(pipe, steps, repeats, "tiny-t2v (tokens 64, latents 32x128)")]
        if not args.quick and not args.no_wide:
            wide = build_pipe(**WIDE)
            d.append(section_peak(wide, 2, 2, "tiny-t2v x2 wide (tokens 128, latents 64x256), N=2"))
        print("\n(d) fraction of the fp32 matmul peak reached by sampling")
        cols = [
            "model",
            "achieved_gflops",
            "matmul_peak_gflops",
            "fraction_of_peak",
            "matmul_share_of_time",
            "matmul_kernel_gflops",
        ]
        print(table(d, cols), flush=True)
    if "e" in args.sections:
        e = res["breakdown"] = [section_breakdown(pipe, steps, 64, True), section_breakdown(pipe, steps, 64, False)]
        for x in e:
            print(
                f"\n(e) time breakdown of level {x['level']} ({x['level_s']:.2f} s, cache_context={x['cache_context']}, "
                f"tile_batch_size={x['tile_batch_size']})"
            )
            print(table(x["rows"], list(x["rows"][0])), flush=True)
    if "f" in args.sections:
        f = res["threads_1_vs_2"] = section_threads(pipe, max(2, steps // 2), repeats, threads)
        print(
            f"\n(f) 2 threads take x{f['two_over_one']['median_paired']:.2f} the time of 1 thread "
            f"(1: {f['times']['1 thread']['median_s']:.2f} s, 2: {f['times']['2 threads']['median_s']:.2f} s)",
            flush=True,
        )
    if "g" in args.sections:
        # 2N: the finest level then takes 2 steps, so a per-level context can be reused at least once
        g = res["variants"] = section_variants(pipe, 2 * steps, max(3, repeats))
        print(f"\n(g) as is vs previous and proposed implementations, fp32 (N={g['steps']})")
        print(table(g["rows"], list(g["rows"][0])), flush=True)
    if "h" in args.sections:
        h = res["compile"] = section_compile(pipe, steps, repeats)
        print(
            f"\n(h) regional compile: x{h['speedup']['median_paired']:.2f} faster than eager (first call with "
            f"compilation {h['first_call_with_compile_s']:.0f} s; max |frame diff| {h['max_abs_frame_diff']:.1e})"
        )
        print(table(h["rows"], list(h["rows"][0])), flush=True)
    path = save(name, res)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
