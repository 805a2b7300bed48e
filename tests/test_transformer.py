import json
import math

import pytest
import torch
from conftest import assert_close_rounding, randomize_, rounding_atol, transformer_depth
from torch.utils.flop_counter import FlopCounterMode

from diffusers_hpdm import geometry as G
from diffusers_hpdm.models import HPDMTransformer
from diffusers_hpdm.models.positions import LAYOUT_FREQUENCIES

TINY = dict(
    patch_size=(4, 8, 8),
    num_levels=3,
    tokenizer_patch=(1, 2, 2),
    token_dim=32,
    latent_dim=32,
    num_latents=8,
    num_blocks=6,
    num_compute_layers=1,
    num_heads=2,
    levels_per_block=[1, 1, 2, 2, 3, 3],
)


def make(**kw) -> HPDMTransformer:
    torch.manual_seed(0)
    return randomize_(HPDMTransformer(**{**TINY, **kw})).eval()


def cond_kwargs(model, n, g):
    kw = {}
    if model.config.text_embed_dim:
        kw["encoder_hidden_states"] = torch.randn(n, 5, model.config.text_embed_dim, generator=g)
        mask = torch.ones(n, 5, dtype=torch.bool)
        mask[:, 3:] = False
        kw["encoder_attention_mask"] = mask
    if model.config.num_classes:
        kw["class_labels"] = torch.randint(0, model.config.num_classes, (n,), generator=g)
    return kw


def select(kw, idx):
    return {k: v[idx] for k, v in kw.items()}


def run_tiled_vs_joint(model: HPDMTransformer, overlap=G.AXES):
    """Tile every level as inference does, build the context cache level by level, and run the joint forward on each
    finest tile's nested chain (full box, its coarse container, itself). Returns (joint, cached) finest outputs."""
    g = torch.Generator().manual_seed(1)
    cfg = model.config
    sizes = G.level_sizes(cfg.patch_size, cfg.num_levels, cfg.level_growth)
    plans = [G.tile_plan(s, cfg.patch_size, overlap) for s in sizes]
    boxes = [p.boxes() for p in plans]
    x = [torch.randn(len(p), cfg.in_channels, *cfg.patch_size, generator=g) for p in plans]
    t = [torch.randn(len(p), generator=g) for p in plans]
    cond = cond_kwargs(model, 1, g)
    expand = lambda n: {k: v.expand(n, *v.shape[1:]) for k, v in cond.items()}  # noqa: E731
    cache, outs = [], []
    with torch.no_grad():
        for lvl in range(cfg.num_levels):
            n = len(plans[lvl])
            kw = dict(level=lvl, context=cache, **expand(n))
            outs.append(model(x[lvl], t[lvl], boxes[lvl], **kw).sample)
            if lvl < cfg.num_levels - 1:
                cache.append(model.compute_context(x[lvl], t[lvl], boxes[lvl], **kw))
        finest = cfg.num_levels - 1
        chain = G.context_chain(boxes, finest) + [torch.arange(len(plans[finest]))]
        # One joint forward over every finest tile's nested chain (full box, its coarse container, itself).
        xs = torch.stack([x[k][chain[k]] for k in range(cfg.num_levels)], dim=1)
        ts = torch.stack([t[k][chain[k]] for k in range(cfg.num_levels)], dim=1)
        bs = torch.stack([boxes[k][chain[k]] for k in range(cfg.num_levels)], dim=1)
        joint = model(xs, ts, bs, **expand(len(chain[0]))).sample[:, finest]
    return joint, outs[finest]


def test_text_layout_sigma_scales_the_layout_code_by_the_complementary_gate():
    """``text_layout_sigma`` multiplies the layout code of each patch by ``sigma / sqrt(s_l^2 + sigma^2)``: nothing
    else in a token changes, the code is nearly gone at low noise and nearly whole at high noise."""
    kw = {**TINY, "text_embed_dim": 16, "text_layout": True}
    ungated = HPDMTransformer(**kw).eval()
    randomize_(ungated.layout_text, std=0.5)
    gated = HPDMTransformer(**{**kw, "text_layout_sigma": 2.0}).eval()
    gated.load_state_dict(ungated.state_dict())
    g = torch.Generator().manual_seed(0)
    boxes = G.sample_nested_boxes(4, TINY["patch_size"], 1, generator=g)[:, 0]  # (N, 6)
    x = torch.randn(4, 3, *TINY["patch_size"], generator=g)
    sigma = torch.tensor([0.002, 1.0, 2.0, 80.0])
    t = sigma.log() / 4
    cond = cond_kwargs(ungated, 4, g)
    ehs, mask = cond["encoder_hidden_states"], cond["encoder_attention_mask"]
    coords = ungated._coords(boxes, torch.float32)
    with torch.no_grad():
        code = ungated._text_layout(boxes, ehs, mask, None, torch.float32)  # (N, T, D)
        args = (x, coords, None, torch.zeros(4, ungated.config.latent_dim), t)
        bare = ungated._tokenize(*args)
        delta_ungated = ungated._tokenize(*args, layout=code) - bare
        delta_gated = gated._tokenize(*args, layout=code) - bare
    gain = sigma / torch.sqrt(4.0 + sigma**2)
    # (tokens + code) + positions - (tokens + positions): 4 roundings at the tokens' scale; the gated code also
    # carries the gain's relative error: the test's log and the model's exp of sigma (|ln sigma| / 2 eps + 1 ulp
    # each), then the gain's square, sum, root and division
    scale = max(bare.abs().max().item(), (bare + code).abs().max().item())
    assert_close_rounding(delta_ungated, code, 4, scale)
    assert_close_rounding(delta_gated, code * gain[:, None, None], 4 + sigma.log().abs().max().item() + 6, scale)
    assert gain[0] < 1e-3 and abs(gain[2] - 0.5**0.5) < rounding_atol(1.0, 2) and gain[3] > 0.99  # root, division
    for bad in (dict(text_layout_sigma=0.0), dict(text_layout=False, text_layout_sigma=1.0)):
        with pytest.raises(ValueError, match="text_layout_sigma"):
            HPDMTransformer(**{**kw, **bad})


@pytest.mark.parametrize(
    "kw",
    [
        dict(text_embed_dim=16),
        dict(
            text_embed_dim=16,
            output_modulation=True,
            input_modulation=True,
            activation_fn="gelu",
            pooled_text_embedding=True,
            text_layout=True,
            input_gate_sigma=2.0,
            text_layout_sigma=2.0,
            output_conv_channels=4,
            input_conv_channels=4,
        ),
        dict(num_classes=5),
        dict(text_embed_dim=16, num_classes=5, context_fusion="shallow"),
        dict(patch_size=(4, 12, 16), level_growth=(1, 2, 2), tokenizer_patch=(1, 3, 4), num_classes=3),
    ],
    ids=["text", "text-modulated", "class", "shallow", "nonsquare-growth122"],
)
def test_cached_level_forward_equals_joint_forward(kw):
    model = make(**kw)
    joint, cached = run_tiled_vs_joint(model)
    # other batch shapes and the cache's code path (separable lookup of cached projections): other kernels and
    # summation orders, rounding of the model's depth at the output's scale
    assert_close_rounding(cached, joint, transformer_depth(model.config))


def test_joint_forward_accepts_level_prefix_and_random_nested_boxes():
    model = make(text_embed_dim=16)
    g = torch.Generator().manual_seed(0)
    boxes = G.sample_nested_boxes(2, TINY["patch_size"], 3, generator=g)
    x, t = torch.randn(2, 3, 3, *TINY["patch_size"], generator=g), torch.randn(2, 3, generator=g)
    cond = cond_kwargs(model, 2, g)
    with torch.no_grad():
        full = model(x, t, boxes, **cond).sample
        prefix = model(x[:, :2], t[:, :2], boxes[:, :2], **cond).sample
        cache = [model.compute_context(x[:, 0], t[:, 0], boxes[:, 0], level=0, **cond)]
        lvl1 = model(x[:, 1], t[:, 1], boxes[:, 1], level=1, context=cache, context_indices=[torch.arange(2)], **cond)
    assert full.shape == x.shape
    # Coarse levels never see finer ones: running only a prefix of the pyramid leaves them unchanged (up to the
    # rounding of other batch shapes and of the level forward's code path, at the model's depth).
    depth = transformer_depth(model.config)
    assert_close_rounding(prefix, full[:, :2], depth)
    assert_close_rounding(lvl1.sample, full[:, 1], depth)


def test_adaptive_computation_block_counts_and_flops():
    model = make()
    calls = {b: [] for b in range(6)}
    for b, blk in enumerate(model.blocks):
        blk.register_forward_hook(lambda m, a, o, b=b: calls[b].append(a[0].shape[0]))
    B = 2
    boxes = G.sample_nested_boxes(B, TINY["patch_size"], 3, generator=torch.Generator().manual_seed(0))
    x, t = torch.randn(B, 3, 3, *TINY["patch_size"]), torch.randn(B, 3)
    with torch.no_grad():
        model(x, t, boxes)
    # Block b processes levels [0, levels_per_block[b]) for every sample.
    assert [c[0] for c in calls.values()] == [B * n for n in TINY["levels_per_block"]]
    assert model.block_levels() == {0: [0, 1, 2, 3, 4, 5], 1: [2, 3, 4, 5], 2: [4, 5]}

    def flops(m):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m(x, t, boxes)
        return fc.get_total_flops()

    uniform = make(levels_per_block=[3] * 6)
    ratio = flops(model) / flops(uniform)
    assert abs(ratio / (12 / 18) - 1) < 0.05, ratio


@pytest.mark.parametrize(
    "fusion,detach,expect_grad",
    [
        ("deep", False, True),
        ("deep", True, False),
        ("none", False, False),
        ("shallow", False, False),  # the previous level's pixels only: level 2 reads level 1, never level 0
    ],
)
def test_context_gradient_flows_from_fine_loss_to_coarse_input(fusion, detach, expect_grad):
    model = make(context_fusion=fusion, detach_context=detach).train()
    boxes = G.sample_nested_boxes(2, TINY["patch_size"], 3, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 3, *TINY["patch_size"], requires_grad=True)
    out = model(x, torch.randn(2, 3), boxes).sample
    out[:, 2].pow(2).sum().backward()
    g0 = x.grad[:, 0].abs().max().item()
    assert (g0 > 0) == expect_grad, g0
    if not expect_grad:
        assert g0 == 0.0


def test_shallow_fusion_reads_the_previous_level_only():
    """Paper §5: shallow fusion concatenates the RGB pixels of the previous level's patch, not an average over every
    coarser level, so level 2's output depends on level 1's input and not at all on level 0's."""
    model = make(context_fusion="shallow").train()
    boxes = G.sample_nested_boxes(2, TINY["patch_size"], 3, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 3, *TINY["patch_size"], requires_grad=True)
    model(x, torch.randn(2, 3), boxes).sample[:, 2].pow(2).sum().backward()
    assert x.grad[:, 1].abs().max() > 0
    assert x.grad[:, 0].abs().max() == 0.0


def test_shallow_context_pass_records_the_input_pixels_and_runs_no_block():
    """What a shallow level leaves for the finer ones is its tiles' input pixels; the context pass runs no RIN block
    (a deep context pass records each block's projected activations and must run them)."""
    calls = []
    for fusion, blocks_run in (("shallow", False), ("deep", True)):
        model = make(context_fusion=fusion)
        hooks = [b.register_forward_hook(lambda *_: calls.append(1)) for b in model.blocks]
        x = torch.randn(1, 3, *TINY["patch_size"], generator=torch.Generator().manual_seed(0))
        boxes = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]])
        calls.clear()
        ctx = model.compute_context(x, torch.zeros(1), boxes, level=0)
        assert bool(calls) == blocks_run
        if fusion == "shallow":
            assert torch.equal(ctx.pixels, x) and all(f is None for f in ctx.features)
        for h in hooks:
            h.remove()


def test_expanded_base_reproduces_level0():
    torch.manual_seed(0)
    base = randomize_(HPDMTransformer(**{**TINY, "num_levels": 1, "levels_per_block": None, "text_embed_dim": 16}))
    big = HPDMTransformer.from_base(base, num_levels=3, levels_per_block=[1, 1, 2, 2, 3, 3]).eval()
    base.eval()
    g = torch.Generator().manual_seed(0)
    x, t, boxes = torch.randn(2, 3, 3, *TINY["patch_size"], generator=g), torch.randn(2, 3, generator=g), None
    boxes = G.sample_nested_boxes(2, TINY["patch_size"], 3, generator=g)
    cond = cond_kwargs(big, 2, g)
    with torch.no_grad():
        # Level 0 alone: the same weights, shapes and kernels as the base: bit-identical.
        ref = base(x[:, :1], t[:, :1], boxes[:, :1], **cond).sample
        assert torch.equal(big(x[:, :1], t[:, :1], boxes[:, :1], **cond).sample, ref)
        assert torch.equal(
            big(x[:, 0], t[:, 0], boxes[:, 0], level=0, **cond).sample,
            base(x[:, 0], t[:, 0], boxes[:, 0], level=0, **cond).sample,
        )
        # Level 0 batched with levels 1 and 2: other batch shapes, so other kernels and summation orders (1.04e-6
        # apart on AVX2, 0.89e-6 with ATEN_CPU_CAPABILITY=default): equal up to rounding of the model's depth.
        assert_close_rounding(big(x, t, boxes, **cond).sample[:, :1], ref, transformer_depth(big.config))
    # New levels start as a pass-through of their own activations.
    for f in big.fusion:
        d = f.dim
        assert torch.equal(f.proj.weight[:, :d], torch.eye(d)) and not f.proj.weight[:, d:].any()


def test_level0_of_a_pyramid_is_a_base_that_computes_it():
    """``from_base(pyramid, 1)`` (``examples/extract_level0.py``, ``make train-demo``'s third stage) keeps the shared
    weights and level 0's latents; its fusion projections restart as pass-through, and level 0 never runs them: the
    level-0 forward is the same sequence of kernels on the same inputs, so bit-identical."""
    pyramid = make(text_embed_dim=16)
    base = HPDMTransformer.from_base(pyramid, 1).eval()
    assert base.config.num_levels == 1
    assert torch.equal(base.latents[0], pyramid.latents[0])
    g = torch.Generator().manual_seed(0)
    boxes = G.sample_nested_boxes(2, TINY["patch_size"], 3, generator=g)[:, 0]
    x, t = torch.randn(2, 3, *TINY["patch_size"], generator=g), torch.randn(2, generator=g)
    cond = cond_kwargs(pyramid, 2, g)
    with torch.no_grad():
        assert torch.equal(base(x, t, boxes, level=0, **cond).sample, pyramid(x, t, boxes, level=0, **cond).sample)


@pytest.mark.parametrize("base_fusion, fusion", [("deep", "shallow"), ("shallow", "deep"), ("none", "shallow")])
def test_expanded_base_changes_fusion_and_keeps_level0(base_fusion, fusion):
    """``from_base(..., context_fusion=...)``: a shallow pyramid from a deep base gets zero context-pixel columns in
    its tokenizer, a deep one from a shallow base loses them; either way level 0 (whose context input is zeros)
    computes what the base computed, up to the rounding of a different matmul width."""
    torch.manual_seed(0)
    config = {**TINY, "num_levels": 1, "levels_per_block": None, "context_fusion": base_fusion}
    base = randomize_(HPDMTransformer(**config)).eval()
    big = HPDMTransformer.from_base(base, num_levels=2, context_fusion=fusion).eval()
    voxels = 3 * math.prod(TINY["tokenizer_patch"])
    w_base, w_big = base.tokenizer.weight, big.tokenizer.weight
    assert torch.equal(w_big[:, :voxels], w_base[:, :voxels]) and torch.equal(w_big[:, -3:], w_base[:, -3:])
    if fusion == "shallow":
        assert w_big.shape[1] == 2 * voxels + 3 and not w_big[:, voxels:-3].any()
    else:
        assert w_big.shape[1] == voxels + 3
    g = torch.Generator().manual_seed(0)
    boxes = G.sample_nested_boxes(2, TINY["patch_size"], 2, generator=g)
    x, t = torch.randn(2, 3, *TINY["patch_size"], generator=g), torch.randn(2, generator=g)
    with torch.no_grad():
        ref = base(x, t, boxes[:, 0], level=0).sample
        assert_close_rounding(big(x, t, boxes[:, 0], level=0).sample, ref, transformer_depth(big.config))


def test_expanded_base_rejects_overrides_that_change_weight_shapes():
    base = HPDMTransformer(**{**TINY, "num_levels": 1, "levels_per_block": None})
    with pytest.raises(ValueError, match="token_dim"):
        HPDMTransformer.from_base(base, num_levels=2, token_dim=2 * TINY["token_dim"])


def test_save_load_round_trip_is_bit_exact_and_safetensors_only(tmp_path):
    model = make(text_embed_dim=16, num_classes=4)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["levels_per_block"] == [1, 1, 2, 2, 3, 3]
    loaded = HPDMTransformer.from_pretrained(tmp_path).eval()
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    g = torch.Generator().manual_seed(0)
    boxes = G.sample_nested_boxes(1, TINY["patch_size"], 3, generator=g)
    x, t = torch.randn(1, 3, 3, *TINY["patch_size"], generator=g), torch.randn(1, 3, generator=g)
    cond = cond_kwargs(model, 1, g)
    with torch.no_grad():
        assert torch.equal(model(x, t, boxes, **cond).sample, loaded(x, t, boxes, **cond).sample)


def test_gradient_checkpointing_gives_the_same_gradients():
    boxes = G.sample_nested_boxes(2, TINY["patch_size"], 3, generator=torch.Generator().manual_seed(0))
    x, t = torch.randn(2, 3, 3, *TINY["patch_size"]), torch.randn(2, 3)
    grads = []
    for ckpt in (False, True):
        model = make().train()
        if ckpt:
            model.enable_gradient_checkpointing()
        model(x, t, boxes).sample.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    # the recomputed forward and the backward through it: rounding of twice the model's depth at the gradients' scale
    assert_close_rounding(grads[1], grads[0], 2 * transformer_depth(TINY))


@pytest.mark.parametrize("pooled", [False, True], ids=["tokens", "tokens+pooled"])
def test_conditioning_null_and_masking(pooled):
    model = make(text_embed_dim=16, num_classes=4, pooled_text_embedding=pooled)
    g = torch.Generator().manual_seed(0)
    boxes = G.sample_nested_boxes(2, TINY["patch_size"], 3, generator=g)
    x, t = torch.randn(2, 3, 3, *TINY["patch_size"], generator=g), torch.randn(2, 3, generator=g)
    cond = cond_kwargs(model, 2, g)
    with torch.no_grad():
        a = model(x, t, boxes, **cond).sample
        # Padded text tokens are invisible: changing them changes nothing (their attention weight and their share of
        # the pooled mean are 0; at most rounding of the model's depth).
        cond2 = dict(cond, encoder_hidden_states=cond["encoder_hidden_states"].clone())
        cond2["encoder_hidden_states"][:, 3:] += 10
        assert_close_rounding(model(x, t, boxes, **cond2).sample, a, transformer_depth(model.config))
        # Dropping the conditioning makes the output independent of the prompt and label: both calls run on the null
        # text and class, the same kernels on the same inputs.
        drop = torch.ones(2, dtype=torch.bool)
        d1 = model(x, t, boxes, drop_conditioning=drop, **cond).sample
        d2 = model(
            x, t, boxes, drop_conditioning=drop, **cond2 | {"class_labels": cond["class_labels"].flip(0)}
        ).sample
        assert torch.equal(d1, d2)
        assert not torch.allclose(d1, a, atol=1e-4)


def with_option(base_kw: dict, option: str, new_parameters: set[str], value=True):
    """A model without ``option`` and one with it on the same weights (only ``new_parameters`` are new), plus a
    joint-forward input: nested boxes, pixels and noise levels for 2 samples x 3 levels."""
    g = torch.Generator().manual_seed(0)
    boxes = G.sample_nested_boxes(2, TINY["patch_size"], 3, generator=g)
    x, t = torch.randn(2, 3, 3, *TINY["patch_size"], generator=g), torch.randn(2, 3, generator=g)
    plain = make(**base_kw)
    torch.manual_seed(0)
    extended = HPDMTransformer(**{**TINY, **base_kw, option: value}).eval()
    missing, unexpected = extended.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing) == new_parameters and not unexpected
    return plain, extended, (x, t, boxes), g


def assert_same_output(a: HPDMTransformer, b: HPDMTransformer, inputs, **kw) -> None:
    """The same function: equal up to rounding of the model's depth (the new terms are exact zeros at init)."""
    with torch.no_grad():
        assert_close_rounding(a(*inputs, **kw).sample, b(*inputs, **kw).sample, transformer_depth(b.config))


def test_input_modulation_starts_as_identity_and_can_mute_the_pixels():
    """At init the gain is 1 (same output as the same weights without it); a gain of 0 makes the output independent
    of the noisy pixels (positions, noise level and conditioning still reach the tokens)."""
    plain, gated, (x, t, boxes), _ = with_option(
        dict(num_classes=4), "input_modulation", {"in_modulation.weight", "in_modulation.bias"}
    )
    labels = torch.tensor([1, 2])
    assert_same_output(gated, plain, (x, t, boxes), class_labels=labels)
    with torch.no_grad():
        gated.in_modulation.weight.zero_()
        gated.in_modulation.bias.fill_(-1.0)  # gain 0 at every noise level: the pixels no longer reach the tokens
        a = gated(x, t, boxes, class_labels=labels).sample
        b = gated(torch.randn_like(x), t, boxes, class_labels=labels).sample
    assert_close_rounding(a, b, transformer_depth(gated.config))
    assert "in_modulation.weight" in HPDMTransformer._zero_init_parameters


def test_pooled_text_embedding_starts_at_zero_and_reads_the_prompt():
    """The pooled path adds nothing at init (a model with it computes what the same weights compute without it);
    once trained it changes the output with the prompt even when every text token's attention is unchanged."""
    plain, pooled, (x, t, boxes), g = with_option(
        dict(text_embed_dim=16), "pooled_text_embedding", {"pooled_text_proj.weight", "pooled_text_proj.bias"}
    )
    cond = cond_kwargs(plain, 2, g)
    with torch.no_grad():
        assert_same_output(pooled, plain, (x, t, boxes), **cond)
        randomize_(pooled.pooled_text_proj)
        assert not torch.allclose(pooled(x, t, boxes, **cond).sample, plain(x, t, boxes, **cond).sample, atol=1e-4)
    assert "pooled_text_proj.weight" in HPDMTransformer._zero_init_parameters
    with pytest.raises(ValueError, match="text_embed_dim"):
        HPDMTransformer(**{**TINY, "pooled_text_embedding": True})


def test_input_gate_equals_scaling_the_pixels_by_the_gate():
    """``input_gate_sigma`` is a fixed gain on the pixels: the gated model computes what the same weights compute on
    pixels scaled by ``s_g / sqrt(s_g^2 + sigma^2)``, with ``sigma = exp(4 c_noise)`` per patch."""
    plain = make(num_classes=4)
    gated = HPDMTransformer(**{**TINY, "num_classes": 4, "input_gate_sigma": 2.0}).eval()
    gated.load_state_dict(plain.state_dict())
    g = torch.Generator().manual_seed(0)
    boxes = G.sample_nested_boxes(2, TINY["patch_size"], 3, generator=g)
    x = torch.randn(2, 3, 3, *TINY["patch_size"], generator=g)
    sigma = torch.tensor([[0.1, 2.0, 20.0], [80.0, 1.0, 0.5]])
    t, labels = sigma.log() / 4, torch.tensor([1, 2])
    gain = 2.0 / torch.sqrt(4.0 + sigma**2)
    with torch.no_grad():
        expected = plain(x * gain[..., None, None, None, None], t, boxes, class_labels=labels).sample
        got = gated(x, t, boxes, class_labels=labels).sample
    # rounding of the model's depth, plus the gain's relative error entering with the pixels: the test's log and the
    # model's exp of sigma (|ln sigma| / 2 eps + 1 ulp each), then the gain's square, sum, root and division
    assert_close_rounding(got, expected, transformer_depth(plain.config) + sigma.log().abs().max().item() + 6)
    assert 0.09 < gain[0, 2] < 0.1 and gain[0, 0] > 0.99  # sigma 20: a tenth; sigma 0.1: untouched
    with pytest.raises(ValueError, match="input_gate_sigma"):
        HPDMTransformer(**{**TINY, "input_gate_sigma": 0.0})


def test_text_layout_starts_at_zero_follows_the_prompt_and_global_position():
    """The layout code adds nothing at init; once trained it changes the output with the prompt, is absent for the
    null prompt of guidance, and depends on a token's global coordinates, not on where it sits in its tile."""
    new = {"layout_position.weight", "layout_position.bias", "layout_text.weight", "layout_text.bias"}
    plain, layout, (x, t, boxes), g = with_option(dict(text_embed_dim=16), "text_layout", new)
    cond = cond_kwargs(plain, 2, g)
    drop = torch.tensor([True, False])
    with torch.no_grad():
        assert_same_output(layout, plain, (x, t, boxes), **cond)
        randomize_(layout.layout_text, std=0.5)
        changed = layout(x, t, boxes, **cond, drop_conditioning=drop).sample
        reference = plain(x, t, boxes, **cond, drop_conditioning=drop).sample
        # the null prompt gets no layout code
        assert_close_rounding(changed[0], reference[0], transformer_depth(plain.config))
        assert (changed[1] - reference[1]).abs().max() > 1e-3
        # Two tiles one token apart along w: the code moves with the global position.
        box = torch.tensor([[0.0, 0.25, 0.25, 0.5, 0.5, 0.5]])
        step = box[0, 5] / layout.token_grid[2]
        tiles = torch.cat([box, box + torch.tensor([0, 0, step, 0, 0, 0])])
        ehs, mask = (
            cond["encoder_hidden_states"][:1].expand(2, -1, -1),
            cond["encoder_attention_mask"][:1].expand(2, -1),
        )
        code = layout._text_layout(tiles, ehs, mask, None, torch.float32).unflatten(1, layout.token_grid)
    # The two tiles' shared tokens have the same (dyadic, exact) coordinates but sit elsewhere in the batch: their
    # Fourier features (sin, cos: an ulp) and the projection (6 K features) may round differently.
    assert_close_rounding(code[1, :, :, :-1], code[0, :, :, 1:], 6 * LAYOUT_FREQUENCIES + 2, code.abs().max())
    assert (code[0, :, :, 1:] - code[0, :, :, :-1]).abs().max() > 1e-3
    assert "layout_text.weight" in HPDMTransformer._zero_init_parameters
    with pytest.raises(ValueError, match="text_embed_dim"):
        HPDMTransformer(**{**TINY, "text_layout": True})


def test_output_conv_starts_at_zero_and_reaches_one_pixel_across_token_borders():
    """The convolution adds nothing at init. Once trained, changing one token changes its own pixels under the
    linear readout alone, and with the convolution also the one-pixel ring around them (same frame), nothing else."""
    new = {"proj_hidden.weight", "proj_hidden.bias", "conv_out.weight", "conv_out.bias"}
    plain, conv, (x, t, boxes), g = with_option(dict(num_classes=4), "output_conv_channels", new, value=4)
    labels = torch.tensor([1, 2])
    assert_same_output(conv, plain, (x, t, boxes), class_labels=labels)
    with torch.no_grad():
        randomize_(conv.conv_out, std=0.5)
        tokens = torch.randn(1, math.prod(conv.token_grid), TINY["token_dim"], generator=g)
        t_emb = torch.randn(1, TINY["latent_dim"], generator=g)
        k = 1 * 16 + 1 * 4 + 2  # token (f=1, h=1, w=2) of the 4x4x4 grid: frame 1, rows 2-3, columns 4-5
        moved = tokens.clone()
        moved[0, k] += torch.randn(TINY["token_dim"], generator=g)
        # changed: beyond the rounding of the readout (norm, projection, convolution, channel sum) at its scale
        changed = {
            name: (m._detokenize(moved, t_emb) - m._detokenize(tokens, t_emb)).abs().sum(1)[0]
            > rounding_atol(m._detokenize(tokens, t_emb).abs().max(), 4)
            for name, m in (("plain", plain), ("conv", conv))
        }
    expected = torch.zeros(4, 8, 8, dtype=torch.bool)
    expected[1, 2:4, 4:6] = True
    assert torch.equal(changed["plain"], expected)
    expected[1, 1:5, 3:7] = True
    assert torch.equal(changed["conv"], expected)
    assert "conv_out.weight" in HPDMTransformer._zero_init_parameters
    with pytest.raises(ValueError, match="output_conv_channels"):
        HPDMTransformer(**{**TINY, "output_conv_channels": 0})


def test_input_conv_starts_at_zero_and_lets_a_token_see_the_pixels_around_it():
    """The convolution adds nothing at init. Once trained, changing the pixel in the corner of a token changes that
    token alone under the linear tokenizer, and with the convolution also the three tokens that touch the corner."""
    new = {"conv_in.weight", "conv_in.bias", "tokenizer_conv.weight", "tokenizer_conv.bias"}
    plain, conv, (x, t, boxes), g = with_option(dict(num_classes=4), "input_conv_channels", new, value=4)
    labels = torch.tensor([1, 2])
    assert_same_output(conv, plain, (x, t, boxes), class_labels=labels)
    with torch.no_grad():
        randomize_(conv.tokenizer_conv, std=0.5)
        pixels = torch.randn(1, 3, *TINY["patch_size"], generator=g)
        coords = torch.zeros(1, math.prod(conv.token_grid), 3)
        t_emb, c_noise = torch.randn(1, TINY["latent_dim"], generator=g), torch.zeros(1)
        moved = pixels.clone()
        moved[0, :, 1, 3, 3] += 1.0  # the bottom-right pixel of token (f=1, h=1, w=1) of the 4x4x4 grid
        # changed: beyond the rounding of the tokenizer (projection, convolution, position code, channel sum)
        changed = {
            name: (
                m._tokenize(moved, coords, None, t_emb, c_noise) - m._tokenize(pixels, coords, None, t_emb, c_noise)
            )
            .abs()
            .sum(-1)[0]
            .reshape(conv.token_grid)
            > rounding_atol(m._tokenize(pixels, coords, None, t_emb, c_noise).abs().max(), 4)
            for name, m in (("plain", plain), ("conv", conv))
        }
    expected = torch.zeros(4, 4, 4, dtype=torch.bool)
    expected[1, 1, 1] = True
    assert torch.equal(changed["plain"], expected)
    expected[1, 1:3, 1:3] = True
    assert torch.equal(changed["conv"], expected)
    assert "tokenizer_conv.weight" in HPDMTransformer._zero_init_parameters


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(levels_per_block=[1, 2, 1, 2, 3, 3]), "non-decreasing"),
        (dict(levels_per_block=[1, 1, 2, 2, 2, 2]), "ending at 3"),
        (dict(context_fusion="pixel"), "context_fusion"),
        (dict(patch_size=(4, 9, 8)), "not divisible"),
        (dict(level_growth=(3, 2, 2)), "level_growth"),
        (dict(input_conv_channels=0), "input_conv_channels"),
    ],
)
def test_bad_configs_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        HPDMTransformer(**{**TINY, **kw})


def test_bad_inputs_raise():
    model = make(num_classes=4)
    with pytest.raises(ValueError, match="class_labels"):
        model(torch.randn(1, 3, 3, *TINY["patch_size"]), torch.randn(1, 3), torch.rand(1, 3, 6))
    with pytest.raises(ValueError, match="context"):
        model(
            torch.randn(2, 3, *TINY["patch_size"]),
            torch.randn(2),
            torch.rand(2, 6),
            level=1,
            class_labels=torch.zeros(2),
        )


@pytest.mark.parametrize("name", ["hpdm-s", "hpdm-t2v", "tiny", "tiny-t2v", "tiny-t2v-4", "tiny-t2v-1k"])
def test_presets_build_with_table8_geometry(name):
    if name.startswith("hpdm"):
        with torch.device("meta"):
            model = HPDMTransformer.from_preset(name)
    else:
        model = HPDMTransformer.from_preset(name)
    expected_final = {
        "hpdm-s": (64, 256, 256),
        "hpdm-t2v": (64, 288, 512),
        "tiny": (16, 64, 64),
        "tiny-t2v": (16, 64, 64),
        "tiny-t2v-4": (64, 288, 512),
        "tiny-t2v-1k": (16, 576, 1024),
    }
    assert model.level_sizes[-1] == expected_final[name]
    if name == "hpdm-s":
        # Appendix table 8 lists 178M parameters for HPDM-S; our block layout lands in the same range.
        n = sum(p.numel() for p in model.parameters())
        assert 0.5e8 < n < 4e8, n


@pytest.mark.parametrize("grid", [(1, 4, 4), (2, 3, 5), (4, 6, 6)])
@pytest.mark.parametrize("seed", range(3))
def test_separable_context_lookup_equals_grid_sample(grid, seed):
    """``sample_boxes`` (three per-axis two-tap matmuls) reads exactly what ``F.grid_sample`` reads on the box's grid:
    nested boxes, arbitrary sub-voxel boxes and boxes reaching outside the patch (border padding); gradients too."""
    from diffusers_hpdm.models.context import sample_boxes, sample_boxes_grid_sample

    g = torch.Generator().manual_seed(seed)
    n, d = 7, 5
    feats = torch.randn(n, grid[0] * grid[1] * grid[2], d, generator=g, dtype=torch.float64, requires_grad=True)
    size = torch.rand(n, 3, generator=g, dtype=torch.float64) * 1.2 + 0.05  # some boxes larger than the patch
    start = torch.rand(n, 3, generator=g, dtype=torch.float64) * 1.4 - 0.3 * size  # some start outside it
    size[0], start[0] = 0.5, 0.25  # a nested half-size box
    rel = torch.cat([start, size], dim=1)
    ours = sample_boxes(feats, rel, grid)
    ref = sample_boxes_grid_sample(feats, rel, grid)
    # The reference's grid is float32: a coordinate in [-1, 1] off by eps / 2 is n / 4 eps voxels along an n-long
    # axis, read at a slope of at most 2 max|feats| per voxel: sum(grid) / 2 float32 roundings at max|feats| in all
    # (float64 arithmetic otherwise). The gradient's two-tap weights move by the same position errors.
    depth = sum(grid) / 2
    assert_close_rounding(ours, ref, depth, feats.abs().max(), torch.float32)
    w = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad((ours * w).sum(), feats)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), feats)
    assert_close_rounding(g_ours, g_ref, depth, g_ref.abs().max(), torch.float32)
    # bf16 features: the lookup stays within bf16 rounding of the fp32 one: the features (eps / 2) and, per axis, the
    # two-tap weights (eps / 2 each) and the matmul's output (eps / 2): 5 bf16 roundings at max|ref|
    bf = sample_boxes(feats.detach().float().bfloat16(), rel.float(), grid).float()
    assert_close_rounding(bf, ref.detach().float(), 5, ref.abs().max(), torch.bfloat16)


@pytest.mark.parametrize("grid,dim", [((4, 4, 4), 64), ((1, 4, 4), 32), ((2, 3, 5), 30)])
def test_token_positions_start_as_distinct_unit_scale_codes(grid, dim):
    """Every token of the grid starts with its own code, entries in [-1, 1], tokens of different frames far apart
    (a 0.02-scale table left frames indistinguishable next to a token's pixel content at high noise)."""
    from diffusers_hpdm.models.positions import sincos_position_table

    table = sincos_position_table(grid, dim)
    assert table.shape == (math.prod(grid), dim) and table.abs().max() <= 1.0
    dist = torch.cdist(table, table) + torch.eye(len(table)) * 1e9
    assert dist.min() > 1.0
    model = HPDMTransformer(**{**TINY, "patch_size": tuple(g * t for g, t in zip(grid, (1, 2, 2))), "token_dim": dim})
    assert torch.equal(model.token_positions[0], table)  # a copy of the same call's table


def test_latents_stay_distinct_through_the_blocks():
    """The latents must not collapse to one vector (a 0.02-scale init did, behind the noise-level embedding added to
    every latent: pairwise cosine 1.000 after every block; unit-scale latents stay at 0.44-0.84 in this config).
    Checked at init, at low and high noise."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = HPDMTransformer(**{**TINY, "num_levels": 1, "levels_per_block": None, "num_latents": 16}).eval()
    assert 0.8 < model.latents.std() < 1.2
    latents = []
    hooks = [block.register_forward_hook(lambda mod, inp, out: latents.append(out[1])) for block in model.blocks]
    x = torch.randn(4, 1, 3, *TINY["patch_size"])
    boxes = torch.tensor([0, 0, 0, 1, 1, 1.0]).repeat(4, 1, 1)
    for c_noise in (-1.0, 1.0):
        latents.clear()
        with torch.no_grad():
            model(x, timestep=torch.full((4, 1), c_noise), boxes=boxes)
        for z in latents:  # (N, M, D) per block
            zn = F.normalize(z, dim=-1)
            cos = (zn @ zn.transpose(1, 2)).mean()
            assert cos < 0.95, f"latents collapsed: mean pairwise cosine {cos:.3f}"
    for h in hooks:
        h.remove()
