"""What the CPU can do fast: bf16 matmuls are native only with AVX512-BF16 or AMX.

Without them oneDNN emulates bf16 by converting to fp32 around every kernel: measured on an AMD EPYC with AVX2 and
no AVX-512, bf16 sampling ran at 0.14x the speed of fp32 (docs/benchmarks.md), while an AVX-512 machine with native
bf16 ran it 1.9x faster. Users who ask for bf16 on such a CPU get a warning that says so.
"""

from __future__ import annotations

import platform
import warnings

import torch

BF16_ON_CPU_WARNING = (
    "bfloat16 was requested on a CPU without native bf16 (no AVX512-BF16 or AMX; torch reports kernel set {cap!r}): "
    "every bf16 kernel is emulated through fp32 and sampling runs several times slower than in float32 "
    "(measured 0.14x on an AVX2-only CPU). Use float32 on this machine."
)


def _cpu_query(name: str) -> bool:
    """``torch.cpu._is_<name>_supported()``; False where this torch build lacks the query."""
    query = getattr(torch.cpu, f"_is_{name}_supported", None)
    return bool(query()) if query is not None else False


def cpu_has_native_bf16() -> bool | None:
    """True when the CPU runs bf16 matmuls natively (x86: AVX512-BF16 or AMX tiles), False when it emulates them,
    None where this cannot be told (not x86)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return None
    return _cpu_query("avx512_bf16") or _cpu_query("amx_tile")


def warn_if_bf16_is_emulated(dtype: torch.dtype, device: torch.device | str) -> bool:
    """Warn (``UserWarning``) when ``dtype`` is bfloat16 on a CPU that emulates it. Returns whether it warned."""
    if dtype != torch.bfloat16 or torch.device(device).type != "cpu" or cpu_has_native_bf16() is not False:
        return False
    cap = torch.backends.cpu.get_cpu_capability()
    warnings.warn(BF16_ON_CPU_WARNING.format(cap=cap), UserWarning, stacklevel=3)
    return True
