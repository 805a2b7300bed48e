import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# Intra-op threads for every test; `make test-matrix` (tests/cpu_matrix.py) runs the suite with 1 and 2. Without
# HPDM_TEST_THREADS, OMP_NUM_THREADS is honoured (`OMP_NUM_THREADS=1 make test` runs on one thread), else 2.
TEST_THREADS = int(os.environ.get("HPDM_TEST_THREADS") or (os.environ.get("OMP_NUM_THREADS") or "2").split(",")[0])


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(TEST_THREADS)
    yield


# ------------------------------------------------------------------------------------------------------------------
# Tolerances that are properties of the computation
#
# Bit-exact comparisons (torch.equal, atol=0) are reserved for the same kernels on the same inputs: the same call
# twice, a copy or a round trip, a slice, arithmetic that is exact in IEEE (adding an exact zero, scaling by 1 or a
# power of two). Anything else (other batch shapes, another code path, another summation order: the number of
# threads and ATEN_CPU_CAPABILITY=default|avx2|avx512 change which kernels run and in what order they accumulate) is
# compared with `rounding_atol`: the unit roundoff of the dtype times the number of roundings that can add up (the
# depth of the computation: layers, steps, or the length of an accumulation), relative to the largest magnitude the
# computation carries. A difference beyond it is not rounding.


def rounding_atol(scale, depth: float, dtype: torch.dtype = torch.float32) -> float:
    """``depth * eps(dtype) * max(scale, smallest_normal)``: how far rounding alone can move a result whose
    computation carries values up to ``scale`` in magnitude through ``depth`` roundings (or amplifies one rounding
    ``depth`` times). Below the smallest normal number the spacing of representable values stops shrinking (subnormals
    are ``eps * smallest_normal`` apart), so the bound does not shrink below that either."""
    info = torch.finfo(dtype)
    return float(depth) * info.eps * max(float(scale), info.smallest_normal)


def log2_length(n: int) -> int:
    """Rounding depth of a sum of ``n`` terms the way torch (cascade) and NumPy (pairwise) add them up."""
    return max(1, math.ceil(math.log2(max(n, 2))))


def transformer_depth(config) -> int:
    """Depth of an ``HPDMTransformer``'s computation (``config``: its config or keyword arguments) in residual
    sublayers: the tokenizer and the output head, and per block the read attention and MLP, the write attention and
    MLP, the context fusion, and an attention and an MLP per compute layer. Every sublayer rounds at the scale of the
    activations once or a few times (its accumulations are pairwise or blocked: their rounding grows slower than their
    length)."""
    return 2 + config["num_blocks"] * (5 + 2 * config["num_compute_layers"])


def _max_abs(x) -> float:
    if isinstance(x, torch.Tensor):
        return x.detach().abs().max().item() if x.numel() else 0.0
    x = np.asarray(x, dtype=np.float64)
    return float(np.abs(x).max()) if x.size else 0.0


def pytest_report_header(config):
    return f"torch {torch.__version__}: ATen CPU capability {torch.backends.cpu.get_cpu_capability()}"


def _log(err: float, atol: float) -> None:
    """With ``HPDM_TOLERANCE_LOG=path``, append every comparison's measured error and tolerance, and the kernel set
    and thread count it ran with (a JSON line)."""
    path = os.environ.get("HPDM_TOLERANCE_LOG")
    if path:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
        line = sys._getframe(2).f_lineno  # the test's line that called assert_close_rounding
        row = dict(test=test, line=line, err=err, atol=atol, ratio=err / atol if atol else None)
        row.update(capability=torch.backends.cpu.get_cpu_capability(), threads=torch.get_num_threads())
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def assert_close_rounding(actual, expected, depth: float, scale=None, dtype: torch.dtype | None = None, msg=""):
    """``|actual - expected| <= rounding_atol(scale, depth, dtype)`` everywhere (``rtol`` 0).

    ``scale``: the magnitude the computation carries, a number or a tensor broadcastable to ``expected`` (per-element
    scales, e.g. ``expected.abs()`` for a relative bound); default ``max |expected|``. ``dtype``: whose eps (default
    ``expected``'s; float64 for NumPy input)."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    if dtype is None:
        dtype = expected.dtype if expected.is_floating_point() else torch.float64
    if scale is None:
        scale = _max_abs(expected)
    assert actual.shape == expected.shape, f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)} {msg}"
    diff = (actual.double() - expected.double()).abs()
    info = torch.finfo(dtype)  # as rounding_atol: no finer than the subnormal spacing
    bound = torch.as_tensor(scale, dtype=torch.float64).clamp(min=info.smallest_normal) * (float(depth) * info.eps)
    err = _max_abs(diff)
    _log(err, _max_abs(bound))
    assert not diff.isnan().any() and (diff <= bound).all(), (
        f"difference {err:.3g} is beyond rounding: more than {depth} roundings of eps({dtype}) at scale "
        f"{_max_abs(scale):.3g} (tolerance {_max_abs(bound):.3g}) {msg}"
    )


def randomize_(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Perturb every weight, including the zero-initialised output head and pass-through fusions, so that
    equivalence tests exercise every path (a fresh model outputs exactly 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


# ------------------------------------------------------------------------------------------------------------------
# The example training script, in process, and a tiny dataset for it (test_training*, test_training_integrations)
# ------------------------------------------------------------------------------------------------------------------

ROOT_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_script():
    examples = str(ROOT_DIR / "examples")
    if examples not in sys.path:  # the script imports its sibling modules, as `python examples/train_t2v.py` does
        sys.path.insert(0, examples)
    spec = importlib.util.spec_from_file_location("train_t2v", ROOT_DIR / "examples" / "train_t2v.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def micro_data(tmp_path_factory):
    from diffusers_hpdm.data import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("data"), num_videos=8, num_frames=4, height=16, width=16)
