import warnings

import pytest
import torch

from diffusers_hpdm import hardware


def _cpu(monkeypatch, machine: str, avx512_bf16: bool, amx: bool):
    monkeypatch.setattr(hardware.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


@pytest.mark.parametrize(
    "machine, avx512_bf16, amx, native",
    [
        ("x86_64", False, False, False),  # e.g. AVX2-only AMD EPYC: bf16 emulated
        ("x86_64", True, False, True),  # AVX512-BF16
        ("x86_64", False, True, True),  # AMX tiles (Sapphire Rapids and later)
        ("aarch64", False, False, None),  # not told: no warning
    ],
)
def test_native_bf16_comes_from_torch_cpu_queries(monkeypatch, machine, avx512_bf16, amx, native):
    _cpu(monkeypatch, machine, avx512_bf16, amx)
    assert hardware.cpu_has_native_bf16() is native
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warned = hardware.warn_if_bf16_is_emulated(torch.bfloat16, "cpu")
    assert warned is (native is False)
    assert len(caught) == int(warned)
    if warned:
        assert "without native bf16" in str(caught[0].message) and "float32" in str(caught[0].message)


def test_no_warning_for_float32_or_other_devices(monkeypatch):
    _cpu(monkeypatch, "x86_64", False, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not hardware.warn_if_bf16_is_emulated(torch.float32, "cpu")
        assert not hardware.warn_if_bf16_is_emulated(torch.bfloat16, "cuda")
        assert not hardware.warn_if_bf16_is_emulated(torch.bfloat16, "meta")


def test_queries_missing_from_a_torch_build_mean_not_native(monkeypatch):
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert hardware.cpu_has_native_bf16() is False
