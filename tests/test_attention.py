"""Attention through diffusers' dispatch: backends, the processor API, fused projections, old checkpoints."""

import pytest
import torch
from conftest import assert_close_rounding, log2_length, randomize_, transformer_depth
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry, attention_backend
from diffusers.models.attention_processor import Attention

from diffusers_hpdm import geometry as G
from diffusers_hpdm.models import HPDMTransformer
from diffusers_hpdm.models.attention import HPDMAttention, HPDMAttnProcessor

CONFIG = dict(
    patch_size=(4, 8, 8),
    num_levels=2,
    tokenizer_patch=(1, 2, 2),
    token_dim=32,
    latent_dim=32,
    num_latents=8,
    num_blocks=2,
    num_compute_layers=1,
    num_heads=2,
    levels_per_block=[1, 2],
    text_embed_dim=16,
)
ATTENTIONS_PER_BLOCK = 2 + CONFIG["num_compute_layers"]  # read, write, one per compute layer


def make() -> HPDMTransformer:
    torch.manual_seed(0)
    return randomize_(HPDMTransformer(**CONFIG)).eval()


def inputs(batch: int = 2, seed: int = 0) -> dict:
    """Joint-forward inputs with padded text (keys hidden by the attention bias)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    mask[:, 3:] = False
    return dict(
        hidden_states=torch.randn(batch, 2, 3, *CONFIG["patch_size"], generator=g),
        timestep=torch.randn(batch, 2, generator=g),
        boxes=G.sample_nested_boxes(batch, CONFIG["patch_size"], 2, generator=g),
        encoder_hidden_states=torch.randn(batch, 5, 16, generator=g),
        encoder_attention_mask=mask,
    )


@pytest.fixture
def restore_backend():
    """`ModelMixin.set_attention_backend` also sets diffusers' process-wide active backend: put it back."""
    active = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry.set_active_backend(active)


@pytest.fixture
def spy(monkeypatch):
    """Count the calls of the native and the math SDPA backends (the registry's functions, wrapped)."""
    calls = {}
    for name in (AttentionBackendName.NATIVE, AttentionBackendName._NATIVE_MATH):
        fn = _AttentionBackendRegistry._backends[name]
        calls[name.value] = 0

        def counted(*args, _fn=fn, _name=name.value, **kwargs):
            calls[_name] += 1
            return _fn(*args, **kwargs)

        monkeypatch.setitem(_AttentionBackendRegistry._backends, name, counted)
    return calls


def test_set_attention_backend_switches_the_dispatch_and_keeps_the_numbers(spy, restore_backend):
    model, kw = make(), inputs()
    # Attention calls in one joint forward: every block runs levels_per_block[b] levels in one batch.
    calls_per_forward = ATTENTIONS_PER_BLOCK * CONFIG["num_blocks"]
    with torch.no_grad():
        native = model(**kw).sample
        assert spy == {"native": calls_per_forward, "_native_math": 0}
        model.set_attention_backend("_native_math")
        assert {p._attention_backend for p in model.attn_processors.values()} == {AttentionBackendName._NATIVE_MATH}
        math = model(**kw).sample
        assert spy == {"native": calls_per_forward, "_native_math": calls_per_forward}
        model.reset_attention_backend()
        _AttentionBackendRegistry.set_active_backend(AttentionBackendName.NATIVE)
        assert torch.equal(model(**kw).sample, native)  # back on the native path: the same kernels, bit-exact
        assert spy["native"] == 2 * calls_per_forward
        # The context manager selects the backend too (processors without a backend of their own follow it).
        with attention_backend("_native_math"):
            assert torch.equal(model(**kw).sample, math)
        assert spy["_native_math"] == 2 * calls_per_forward
    # The math kernel and the native (fused CPU) kernel sum the softmax in other orders: per attention sublayer,
    # rounding of a log2(keys)-deep sum, through the model's depth.
    keys = CONFIG["num_latents"] + 1 + 5  # the compute layers' keys: latents, the noise/box token, the text
    assert_close_rounding(math, native, transformer_depth(CONFIG) * log2_length(keys))


def test_attention_backend_name_is_checked():
    with pytest.raises(ValueError, match="must be one of"):
        make().set_attention_backend("no-such-backend")


def test_hpdm_attention_equals_diffusers_attention_and_loads_its_weights():
    """Checkpoints saved with diffusers' ``Attention`` load into ``HPDMAttention`` (the same parameter names), and
    with the native backend the output is the same SDPA call on the same tensors: bit-exact, with and without the
    key bias of padded text."""
    torch.manual_seed(0)
    old = randomize_(Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8, qk_norm="rms_norm"))
    new = HPDMAttention(32, 24, heads=4, dim_head=8, qk_norm="rms_norm")
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=True)
    assert not missing and not unexpected
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(3, 7, 32, generator=g), torch.randn(3, 11, 24, generator=g)
    bias = torch.zeros(3, 1, 11).masked_fill(torch.rand(3, 1, 11, generator=g) < 0.3, float("-inf"))
    bias[..., 0] = 0.0  # every query keeps a key
    with torch.no_grad():
        for mask in (None, bias):
            assert torch.equal(new(x, ctx, mask), old(x, encoder_hidden_states=ctx, attention_mask=mask))


def test_processor_api_lists_and_replaces_every_attention():
    model, kw = make(), inputs()
    processors = model.attn_processors
    assert len(processors) == ATTENTIONS_PER_BLOCK * CONFIG["num_blocks"]
    assert all(isinstance(p, HPDMAttnProcessor) for p in processors.values())
    assert "blocks.0.read_attn.processor" in processors and "blocks.1.compute.0.attn.processor" in processors

    class Recording(HPDMAttnProcessor):
        def __init__(self):
            self.calls = 0

        def __call__(self, *args, **kwargs):
            self.calls += 1
            return super().__call__(*args, **kwargs)

    with torch.no_grad():
        ref = model(**kw).sample
        recording = Recording()
        model.set_attn_processor(recording)  # one processor for every layer
        assert torch.equal(model(**kw).sample, ref) and recording.calls == len(processors)
        per_layer = {name: Recording() for name in processors}  # a dict: one per layer, by name
        model.set_attn_processor(dict(per_layer))
        assert torch.equal(model(**kw).sample, ref)
        assert all(p.calls == 1 for p in per_layer.values())
    with pytest.raises(ValueError, match="number of processors"):
        model.set_attn_processor({"blocks.0.read_attn.processor": HPDMAttnProcessor()})


def test_fuse_qkv_projections_fuses_keys_and_values_and_unfuses_exactly():
    model, kw = make(), inputs()
    with torch.no_grad():
        ref = model(**kw).sample
        model.fuse_qkv_projections()
        attns = [m for m in model.modules() if isinstance(m, HPDMAttention)]
        assert all(a.fused_projections and torch.equal(a.to_kv.weight, torch.cat([a.to_k.weight, a.to_v.weight]))
                   for a in attns)  # fmt: skip
        fused = model(**kw).sample
        model.unfuse_qkv_projections()
        assert not any(hasattr(a, "to_kv") for a in attns)
        assert torch.equal(model(**kw).sample, ref)
    # One matmul of twice the width instead of two: each entry is the same dot product, possibly blocked
    # differently, rounding at the model's depth.
    assert_close_rounding(fused, ref, transformer_depth(CONFIG))


def test_bad_qk_norm_is_refused():
    with pytest.raises(ValueError, match="qk_norm"):
        HPDMAttention(16, heads=2, dim_head=8, qk_norm="l2")
