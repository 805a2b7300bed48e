import os

import pytest
import torch

# Intra-op threads for every test; `make test-matrix` (tests/cpu_matrix.py) runs the suite with 1 and 2.
TEST_THREADS = int(os.environ.get("HPDM_TEST_THREADS", "2"))


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(TEST_THREADS)
    yield


def randomize_(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Perturb every weight, including the zero-initialised output head and pass-through fusions, so that
    equivalence tests exercise every path (a fresh model outputs exactly 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model
