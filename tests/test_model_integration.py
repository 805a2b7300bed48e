"""diffusers' model-level features on ``HPDMTransformer``: layerwise casting at every level, full-graph
``torch.compile``, LoRA through ``PeftAdapterMixin``."""

import copy

import pytest
import torch
from conftest import assert_close_rounding, randomize_, transformer_depth

from diffusers_hpdm import geometry as G
from diffusers_hpdm.models import HPDMTransformer

CONFIG = dict(
    patch_size=(4, 8, 8),
    num_levels=3,
    tokenizer_patch=(1, 2, 2),
    token_dim=32,
    latent_dim=32,
    num_latents=8,
    num_blocks=3,
    num_compute_layers=1,
    num_heads=2,
    levels_per_block=[1, 2, 3],
    text_embed_dim=16,
    input_conv_channels=4,
    output_conv_channels=4,
    output_modulation=True,
    text_layout=True,
)
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def make(**kw) -> HPDMTransformer:
    torch.manual_seed(0)
    return randomize_(HPDMTransformer(**{**CONFIG, **kw})).eval()


def text(n: int, g: torch.Generator) -> dict:
    mask = torch.ones(n, 5, dtype=torch.bool)
    mask[:, 3:] = False
    return dict(encoder_hidden_states=torch.randn(n, 5, 16, generator=g), encoder_attention_mask=mask)


def joint_inputs(seed: int = 0, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    L = CONFIG["num_levels"]
    return dict(
        hidden_states=torch.randn(batch, L, 3, *CONFIG["patch_size"], generator=g),
        timestep=torch.randn(batch, L, generator=g),
        boxes=G.sample_nested_boxes(batch, CONFIG["patch_size"], L, generator=g),
        **text(batch, g),
    )


def tiled_levels(model: HPDMTransformer, seed: int = 0):
    """Per level, the level-forward inputs of its tiles (with the context of the coarser levels, computed by
    ``model``) as inference builds them: ``[(kwargs, ...)]``."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    cond = text(1, g)
    cache, levels = [], []
    for lvl, size in enumerate(G.level_sizes(cfg.patch_size, cfg.num_levels, cfg.level_growth)):
        boxes = G.tile_plan(size, cfg.patch_size, G.AXES).boxes()
        n = len(boxes)
        kw = dict(
            hidden_states=torch.randn(n, 3, *cfg.patch_size, generator=g),
            timestep=torch.randn(n, generator=g),
            boxes=boxes,
            level=lvl,
            context=list(cache),
            **{k: v.expand(n, *v.shape[1:]) for k, v in cond.items()},
        )
        levels.append(kw)
        with torch.no_grad():
            cache.append(model.compute_context(**kw))
    return levels


# ------------------------------------------------------------------------------------------------------------------
# Layerwise casting
# ------------------------------------------------------------------------------------------------------------------


def test_layerwise_casting_runs_at_every_level_and_matches_fp32_within_bf16_rounding():
    ref = make()
    cast = copy.deepcopy(ref)
    cast.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
    stored = {n for n, p in cast.named_parameters() if p.dtype == torch.bfloat16}
    assert any(n.startswith("fusion.") for n in stored)  # the fusion weights that were read directly are cast
    # The same model with its stored weights rounded to bf16, in fp32: what the casting hooks compute.
    rounded = copy.deepcopy(ref)
    with torch.no_grad():
        for n, p in rounded.named_parameters():
            if n in stored:
                p.copy_(p.to(torch.bfloat16).float())
    levels_ref, levels_cast = tiled_levels(ref), tiled_levels(cast)
    with torch.no_grad():
        outputs = [(ref(**joint_inputs()).sample, cast(**joint_inputs()).sample, rounded(**joint_inputs()).sample)]
        for lvl in range(CONFIG["num_levels"]):  # the level forward of each level, with its cached context
            outputs.append((ref(**levels_ref[lvl]).sample, cast(**levels_cast[lvl]).sample, None))
    for a, b, _ in outputs:
        assert b.dtype == torch.float32 and torch.isfinite(b).all()
        # bf16 storage rounds each weight by at most eps(bf16)/2 relative: a perturbation at every sublayer.
        assert_close_rounding(b, a, transformer_depth(CONFIG), dtype=torch.bfloat16)
    # Against the rounded fp32 model the hooks change nothing but the dtype of the stored weights: the same kernels
    # on the same values.
    assert torch.equal(outputs[0][1], outputs[0][2])


# ------------------------------------------------------------------------------------------------------------------
# Full-graph compile
# ------------------------------------------------------------------------------------------------------------------


def _compile_counting_graphs(model):
    """``torch.compile(fullgraph=True)`` (which raises at the first graph break) with a backend that records each
    graph and runs it as captured: the same kernels as eager."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    return torch.compile(model, fullgraph=True, backend=counting_backend, dynamic=False), graphs


def test_joint_forward_compiles_with_fullgraph_and_no_graph_break():
    model = make(num_levels=2, num_blocks=2, levels_per_block=[1, 2])
    kw = joint_inputs()
    kw = {k: v[:, :2] if k in ("hidden_states", "timestep", "boxes") else v for k, v in kw.items()}
    kw["drop_conditioning"] = torch.tensor([True, False])  # CFG rows: the key bias is built, no branch on values
    compiled, graphs = _compile_counting_graphs(model)
    with torch.no_grad():
        assert torch.equal(compiled(**kw).sample, model(**kw).sample)
    assert len(graphs) == 1
    torch._dynamo.reset()


def test_level_forward_with_context_compiles_with_fullgraph_and_no_graph_break():
    model = make(num_levels=2, num_blocks=2, levels_per_block=[1, 2])
    level1 = tiled_levels(model)[1]  # tiles of level 1 reading the cached context of level 0
    compiled, graphs = _compile_counting_graphs(model)
    with torch.no_grad():
        assert torch.equal(compiled(**level1).sample, model(**level1).sample)
    assert len(graphs) == 1
    torch._dynamo.reset()


def test_attention_bias_does_not_depend_on_mask_values():
    """An all-True mask gives a zero bias (kept as a tensor so the graph does not branch on values); adding 0 to
    the attention scores is exact, so the output equals that of no mask at all."""
    model = make()
    kw = joint_inputs()
    kw["encoder_attention_mask"] = torch.ones_like(kw["encoder_attention_mask"])
    no_mask = {k: v for k, v in kw.items() if k != "encoder_attention_mask"}
    with torch.no_grad():
        assert_close_rounding(model(**kw).sample, model(**no_mask).sample, transformer_depth(CONFIG))


# ------------------------------------------------------------------------------------------------------------------
# LoRA (PeftAdapterMixin)
# ------------------------------------------------------------------------------------------------------------------


def _lora(model: HPDMTransformer, rank: int = 4) -> HPDMTransformer:
    from peft import LoraConfig

    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    return model


def test_lora_step_changes_only_adapter_weights_and_save_load_gives_identical_output(tmp_path):
    pytest.importorskip("peft")
    model = _lora(make())
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    kw = joint_inputs()
    with torch.no_grad():
        before = model(**kw).sample
    assert_close_rounding(before, make()(**kw).sample, 0)  # lora_B starts at zero: the adapter adds exactly 0
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(**kw).sample.square().mean().backward()
    opt.step()
    model.eval()
    for n, p in model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), f"{n} is not an adapter weight but changed"
    changed = [n for n, p in model.named_parameters() if "lora_B" in n and p.abs().max() > 0]
    assert len(changed) == len([n for n in trainable if "lora_B" in n])  # every adapter moved
    with torch.no_grad():
        after = model(**kw).sample
    assert not torch.equal(after, before)

    model.save_lora_adapter(tmp_path)
    fresh = make()
    fresh.load_lora_adapter(tmp_path, prefix=None, weight_name="pytorch_lora_weights.safetensors")
    with torch.no_grad():
        assert torch.equal(fresh(**kw).sample, after)  # the same weights, shapes and kernels
        # attention_kwargs={"scale": s} scales the adapters for one call; scale 0 is the base model
        assert torch.equal(fresh(**kw, attention_kwargs={"scale": 0.0}).sample, before)
        assert torch.equal(fresh(**kw).sample, after)  # and the scale is restored afterwards
    with pytest.raises(ValueError, match="attention_kwargs"):
        fresh(**kw, attention_kwargs={"scale": 1.0, "foo": 1})
