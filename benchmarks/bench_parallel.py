"""Tile-parallel sampling (DESIGN §8): 2 processes x 1 thread vs 1 process x 1 thread and vs 1 process x 2 threads,
measured in one run (interleaved rounds, each configuration a fresh launch), the bytes the processes exchange per
step and per level, and, on paper, the expected scaling of HPDM-T2V at 64x288x512 on 8 GPUs.

The model is bench_scale.py's ``tiny-t2v-4`` (random weights, CFG 3.0, ``num_inference_steps=4``), so
``--levels 4`` is 64x288x512 and ``--levels 3`` is 32x144x256. The machine load (``os.getloadavg()``) is recorded
before and after every run: a speed-up measured on a loaded machine is not the machine's.

The paper estimate counts, on the meta device (no memory, no compute), the FLOPs of one tile's forward pass of the
``hpdm-t2v`` preset at every level (its own blocks and the context lookups), and the bytes of the canvas all-reduce
(a ring: ``2 (W-1)/W`` of the canvas per process and step) and of the context rows each process receives
(``context_rows_needed``), then times them with an assumed GPU throughput and link bandwidth (arguments).

    .venv/bin/python benchmarks/bench_parallel.py                   # 64x288x512, 3 rounds (~10 min on 2 idle cores)
    .venv/bin/python benchmarks/bench_parallel.py --levels 3 --repeats 1 --out bench_parallel_quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import machine, paired_ratios, save, setup_threads  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"1proc_1thread": (1, 1), "1proc_2threads": (1, 2), "2proc_1thread": (2, 1)}


def child(cfg: dict) -> dict | None:
    import torch.distributed as dist
    from bench_scale import PROMPT, build_pipe

    setup_threads(cfg["threads"])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    pipe = build_pipe()
    size = pipe.transformer.level_sizes[cfg["levels"] - 1]
    t0 = time.perf_counter()
    frames = pipe(
        PROMPT, num_frames=size[0], height=size[1], width=size[2], num_inference_steps=cfg["steps"],
        tile_batch_size=cfg["tile_batch_size"], generator=torch.Generator().manual_seed(0), output_type="pt",
    ).frames  # fmt: skip
    seconds = time.perf_counter() - t0
    stats = pipe.parallel_share.summary()
    if dist.is_initialized():
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, stats)
        dist.destroy_process_group()
    else:
        every = [stats]
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(frames, cfg["frames"])
        return {"seconds": seconds, "stats": every, "loadavg": os.getloadavg()[0]}
    return None


def free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def launch(cfg: dict, processes: int) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(cfg)]
    if processes > 1:
        torchrun = str(Path(sys.executable).parent / "torchrun")
        cmd = [torchrun, "--nproc_per_node", str(processes), "--master_port", free_port(), *cmd[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg["threads"]), "TQDM_DISABLE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{out.stderr[-4000:]}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


def paper_estimate(processes: int, gpu_tflops: float, mfu: float, link_gb_s: float, steps: int) -> dict:
    """Compute and communication of HPDM-T2V (64x288x512, CFG: 2 streams) per level on ``processes`` GPUs."""
    from diffusers_hpdm import HPDMScheduler, HPDMTransformer, LevelContext
    from diffusers_hpdm.geometry import AXES
    from diffusers_hpdm.pipelines.context_exchange import context_rows_needed
    from diffusers_hpdm.pipelines.parallel import split_range
    from diffusers_hpdm.pipelines.tiling import level_plans

    with torch.device("meta"):
        tm = HPDMTransformer.from_preset("hpdm-t2v")
    cfg, sched = tm.config, HPDMScheduler(level_growth=tm.config.level_growth)
    tilers, chains = level_plans(tm.level_sizes, cfg.patch_size, AXES, "uniform", False)
    text = torch.empty(1, 16, cfg.text_embed_dim, device="meta")
    x = torch.empty(1, cfg.in_channels, *cfg.patch_size, device="meta")
    t = torch.zeros(1, device="meta")
    box = torch.tensor([[0.0, 0, 0, 1, 1, 1]]).to("meta")
    ctx: list[LevelContext] = []
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    streams, canvas_bytes_per_voxel = 2, cfg.in_channels * 4  # fp32 canvas
    for level, plans in enumerate(tilers):
        idx = [torch.zeros(1, dtype=torch.long, device="meta") for _ in range(level)]
        with FlopCounterMode(display=False) as counter:
            tm(x, t, box, level=level, context=ctx or None, context_indices=idx or None, encoder_hidden_states=text)
        flops_tile = counter.get_total_flops()
        if level < len(tilers) - 1:
            ctx.append(tm.compute_context(x, t, box, level=level, context=ctx or None, context_indices=idx or None,
                                          encoder_hidden_states=text))  # fmt: skip
        sched.set_timesteps(steps, level=level)
        evals, n = len(sched.timesteps), len(plans[0])
        flops = flops_tile * n * streams * (evals + (level < len(tilers) - 1))  # steps + the context pass
        voxels = 1
        for s in tm.level_sizes[level]:
            voxels *= s
        reduce = 2 * (processes - 1) / processes * voxels * canvas_bytes_per_voxel * evals if level else 0
        recv = 0
        if 0 < level < len(tilers) - 1:
            row_bytes = sum(f.numel() * 4 for f in ctx[-1].features if f is not None)  # one tile-stream's row
            for q in range(processes):
                needed = context_rows_needed(level, n, chains, 1, streams, len(tilers) - 1, q, processes)
                total = streams * n
                a, b = split_range(total, processes, q)
                recv = max(recv, int(((needed < a) | (needed >= b)).sum()) * row_bytes)
        t1 = flops / (gpu_tflops * 1e12 * mfu)
        tw = (t1 if level == 0 else t1 / processes) + (reduce + recv) / (link_gb_s * 1e9)
        rows.append(dict(level=level, tiles=n, evaluations=evals, tflops_per_tile=flops_tile / 1e12,
                         total_tflops=flops / 1e12, allreduce_bytes=reduce, context_recv_bytes_max=recv,
                         seconds_1gpu=t1, seconds_parallel=tw))  # fmt: skip
    t1, tw = sum(r["seconds_1gpu"] for r in rows), sum(r["seconds_parallel"] for r in rows)
    return dict(processes=processes, gpu_tflops=gpu_tflops, mfu=mfu, link_gb_s=link_gb_s, steps=steps,
                per_level=rows, seconds_1gpu=t1, seconds_parallel=tw, expected_speedup=t1 / tw)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", type=int, default=4, help="4: 64x288x512; 3: 32x144x256")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--tile-batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gpu-tflops", type=float, default=312.0, help="paper estimate: dense bf16 peak (A100: 312)")
    ap.add_argument("--mfu", type=float, default=0.4, help="paper estimate: fraction of the peak sampling reaches")
    ap.add_argument("--link-gb-s", type=float, default=400.0)
    ap.add_argument("--paper-steps", type=int, default=32)
    ap.add_argument("--out", default="bench_parallel")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = child(json.loads(args.child))
        if result is not None:
            print(json.dumps(result))
        return
    base = dict(levels=args.levels, steps=args.steps, tile_batch_size=args.tile_batch_size)
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    load_start = os.getloadavg()
    times: dict[str, dict] = {n: {"seconds": []} for n in CONFIGS}
    runs = {}
    names = list(CONFIGS)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            processes, threads = CONFIGS[name]
            res = launch({**base, "threads": threads, "frames": str(tmp / f"bench_parallel_{name}.pt")}, processes)
            times[name]["seconds"].append(res["seconds"])
            runs.setdefault(name, []).append({"seconds": res["seconds"], "loadavg_after": res["loadavg"]})
            if name == "2proc_1thread":
                stats = res["stats"]
            print(f"round {r}: {name} {res['seconds']:.1f} s (load {res['loadavg']:.1f})", flush=True)
    for v in times.values():
        v["median_s"] = statistics.median(v["seconds"])
    frames = {n: torch.load(tmp / f"bench_parallel_{n}.pt") for n in CONFIGS}
    per_level = {}
    for level in sorted({int(k) for s in stats for k in s}):
        rows = [s.get(level, s.get(str(level))) for s in stats]
        evals = max(1, rows[0]["evaluations"])
        per_level[level] = dict(
            tiles_per_process=[x["tiles"] for x in rows], allreduce_bytes_per_step=rows[0]["reduce_bytes"] // evals,
            allreduce_bytes_level=rows[0]["reduce_bytes"], context_bytes_sent=[x["context_bytes"] for x in rows],
        )  # fmt: skip
    payload = dict(
        machine=machine(), loadavg_start=load_start, loadavg_end=os.getloadavg(), config=base, runs=runs,
        times=times,
        speedup_2proc_vs_1proc_1thread=paired_ratios(times, "1proc_1thread", "2proc_1thread"),
        speedup_2proc_vs_1proc_2threads=paired_ratios(times, "1proc_2threads", "2proc_1thread"),
        max_abs_frames_diff={n: float((frames[n] - frames["1proc_1thread"]).abs().max()) for n in CONFIGS},
        communication=per_level,
        paper_estimate=paper_estimate(8, args.gpu_tflops, args.mfu, args.link_gb_s, args.paper_steps),
    )  # fmt: skip
    path = save(args.out, payload)
    print(json.dumps({k: payload[k] for k in ("speedup_2proc_vs_1proc_1thread", "speedup_2proc_vs_1proc_2threads",
                                             "max_abs_frames_diff", "loadavg_start")}, indent=1))  # fmt: skip
    est = payload["paper_estimate"]
    print(f"paper estimate, HPDM-T2V on 8 GPUs: {est['expected_speedup']:.2f}x; wrote {path}")


if __name__ == "__main__":
    main()
