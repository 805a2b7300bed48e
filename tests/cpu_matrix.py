"""Run the fast test suite under every ATen CPU kernel set this CPU supports, with 1 and 2 intra-op threads.

    python tests/cpu_matrix.py [--threads 1 2] [-- extra pytest args]

Numerics of the same code differ in the last bits between kernel sets (``ATEN_CPU_CAPABILITY``: ``default``,
``avx2``, ``avx512``) and between thread counts (reduction order), so a tolerance that holds on one machine can
fail on another. This runs the suite once per setting, prints one line per setting and exits non-zero if any
failed. The kernel sets tried are those up to the CPU's own, as torch reports it with ``ATEN_CPU_CAPABILITY``
unset (torch accepts a higher value in the variable and would then run instructions the CPU lacks).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

# In increasing order; each CPU supports a prefix of this list.
CAPABILITIES = ("default", "avx2", "avx512")


def capability(env: dict[str, str]) -> str:
    """The kernel set torch uses in a process with this environment (lower case)."""
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1].lower()


def native_capability() -> str:
    """The CPU's own kernel set, as torch picks it when ``ATEN_CPU_CAPABILITY`` is unset."""
    return capability({k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"})


def supported_capabilities(native: str) -> list[str]:
    """The kernel sets up to ``native`` (``AVX512_BF16``-style names count as ``avx512``)."""
    names = [c for c in CAPABILITIES if native.startswith(c)]
    top = CAPABILITIES.index(names[-1]) if names else 0
    return list(CAPABILITIES[: top + 1])


def summary(output: str) -> str:
    """pytest's closing counts (``248 passed, 1 skipped, ...``) or the last line."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"\d+ (passed|failed|error)", line):
            return line.strip("= ")
    return lines[-1] if lines else "(no output)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    native = native_capability()
    settings = [(cap, n) for cap in supported_capabilities(native) for n in args.threads]
    print(f"CPU kernel set: {native}; settings: {len(settings)}", flush=True)
    failed = 0
    for cap, threads in settings:
        env = dict(os.environ, ATEN_CPU_CAPABILITY=cap, HPDM_TEST_THREADS=str(threads))
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        if not capability(env).startswith(cap):
            raise RuntimeError(f"ATEN_CPU_CAPABILITY={cap} was not taken by torch (it reports {capability(env)})")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", *args.pytest_args]
        start = time.perf_counter()
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = summary(run.stdout + run.stderr)
        print(
            f"ATEN_CPU_CAPABILITY={cap:<8} threads={threads}: {line} ({time.perf_counter() - start:.0f} s)", flush=True
        )
        if run.returncode != 0:
            failed += 1
            print("\n".join(run.stdout.splitlines()[-40:]), flush=True)
    print(f"{len(settings) - failed} passed, {failed} failed (settings)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
