"""Shared helpers for the benchmarks: interleaved timing, peak RSS in a fresh subprocess, FLOP counting, results.

This machine is shared and noisy, so every number the benchmarks report is a **ratio of two configurations
measured in the same run**, interleaved ``A B A B ...`` over several repeats, median of the per-repeat times.
Peak memory is the ``ru_maxrss`` high-water mark of a fresh subprocess that runs one configuration only.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from diffusers_hpdm.hardware import cpu_has_native_bf16

RESULTS = Path(__file__).resolve().parent / "results"


def setup_threads(n: int | None = None) -> int:
    """Pin intra-op threads (default: every core this process may use)."""
    n = n or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def interleave(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Run every configuration ``warmup`` times, then ``repeats`` rounds of ``A B C ...`` (the order rotates each
    round so no configuration always follows the same one). Returns per name the list of seconds and the median."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return {n: {"seconds": t, "median_s": statistics.median(t), "min_s": min(t)} for n, t in times.items()}


def paired_ratios(times: dict[str, dict], num: str, den: str) -> dict:
    """``time[num] / time[den]`` per round (the two runs of a round were adjacent) and the ratio of medians."""
    per_round = [a / b for a, b in zip(times[num]["seconds"], times[den]["seconds"])]
    return {
        "ratio_of_medians": times[num]["median_s"] / times[den]["median_s"],
        "median_paired": statistics.median(per_round),
        "min_paired": min(per_round),
        "max_paired": max(per_round),
    }


def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """High-water mark of this process' resident set: ``VmHWM`` (resettable, see ``reset_peak_rss``), else
    ``ru_maxrss`` (KiB on Linux)."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    rss = _status_mb("VmRSS")
    return rss if rss is not None else float("nan")


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``/proc/self/clear_refs`` = 5), so that a later ``peak_rss_mb``
    measures only what runs after this call (importing torch/diffusers peaks higher than a small model needs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_child(script: str, config: dict, timeout: float = 900) -> dict:
    """Run ``python script --child JSON`` in a fresh interpreter; the child prints one JSON line last."""
    cmd = [sys.executable, script, "--child", json.dumps(config)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "TQDM_DISABLE": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"child {config} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matmul-like ops (mm, bmm, addmm, attention, conv) run by ``fn`` (``FlopCounterMode``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak_gflops(n: int = 2048, dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """Best observed GFLOP/s of an ``n x n @ n x n`` matmul: this machine's practical matmul peak right now."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def perturb_(model: torch.nn.Module, std: float = 0.02, seed: int = 0) -> torch.nn.Module:
    """Add ``N(0, std)`` to every weight (incl. the zero-initialised output head) so outputs are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * std)
    return model


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": len(os.sched_getaffinity(0)),
        "cpu": _cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the ATen kernel set in use
        "native_bf16": cpu_has_native_bf16(),  # AVX512-BF16 or AMX; without them bf16 is emulated
        "loadavg_at_start": os.getloadavg()[0],
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=float))
    tmp.replace(path)
    return path


def seed_spread(values: list[float], digits: int = 0) -> str:
    """``"mean ± half-range"`` of per-seed values, the probes' table cell (docs/probes.md)."""
    return f"{sum(values) / len(values):.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"


def seed_row(label: dict, per_seed: list[dict], keys) -> dict:
    """A probe table row: ``label`` then, per key, the per-seed fractions as percent ``"mean ± half-range"``."""
    return {**label, **{k: seed_spread([100 * r[k] for r in per_seed]) for k in keys}}


def report(name: str, args, results: dict, rows: list[dict]) -> Path:
    """Print a probe's table and save it with its arguments and per-seed results as ``results/<name>.json``."""
    print(table(rows, list(rows[0])), flush=True)
    path = save(name, dict(args=vars(args), results=results, table=rows))
    print(f"\nwrote {path}")
    return path


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text (and markdown-compatible) table."""

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])
