import warnings

import pytest
import torch
from test_pipeline import PROMPTS, tiny_model

from diffusers_hpdm import HierarchicalPatchPipeline, HPDMScheduler, hardware
from diffusers_hpdm.text import build_tiny_text_encoder, build_word_tokenizer


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


def test_pipeline_warns_when_its_bf16_transformer_runs_on_an_emulating_cpu(monkeypatch):
    _cpu(monkeypatch, "x86_64", False, False)
    tok = build_word_tokenizer(PROMPTS)
    pipe = HierarchicalPatchPipeline(
        tiny_model(), HPDMScheduler(level_growth=(1, 2, 2)), build_tiny_text_encoder(tok, 32), tok
    )
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=1, num_levels=1, output_type="pt", generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # fp32: no such warning
        pipe(PROMPTS[0], **kw)
    pipe.transformer.to(torch.bfloat16)
    with pytest.warns(UserWarning, match="without native bf16"):
        pipe(PROMPTS[0], **kw)
