import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import yaml
from conftest import assert_close_rounding, randomize_, transformer_depth
from diffusers.utils import export_to_video
from PIL import Image

from diffusers_hpdm import HierarchicalPatchPipeline, HPDMScheduler, HPDMTransformer, LevelContext, write_model_card
from diffusers_hpdm.geometry import area_downsample
from diffusers_hpdm.text import build_tiny_text_encoder, build_word_tokenizer

PROMPTS = ["a red circle moving left", "a blue square moving up quickly"]


def tiny_model(**kw) -> HPDMTransformer:
    torch.manual_seed(0)
    cfg = dict(
        patch_size=(2, 8, 8), num_levels=3, level_growth=(1, 2, 2), tokenizer_patch=(1, 2, 2), token_dim=32,
        latent_dim=32, num_latents=8, num_compute_layers=1, num_heads=2, levels_per_block=[1, 1, 2, 2, 3, 3],
        text_embed_dim=32,
    )  # fmt: skip
    return randomize_(HPDMTransformer(**{**cfg, **kw}), std=0.02).eval()


def pipe_factory(vocabulary: list[str] | None = None) -> HierarchicalPatchPipeline:
    """The tiny text-to-video pipeline of these tests (3 levels, 2x8x8 patches, 2x32x32 output); its word tokenizer
    knows the words of ``vocabulary`` (default: ``PROMPTS`` and "blurry")."""
    tok = build_word_tokenizer(PROMPTS + ["blurry"] if vocabulary is None else vocabulary)
    p = HierarchicalPatchPipeline(
        tiny_model(), HPDMScheduler(level_growth=(1, 2, 2)), build_tiny_text_encoder(tok, 32), tok
    )
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def pipe():
    return pipe_factory()


def run(pipe, prompt=PROMPTS[0], seed=0, **kw):
    kw.setdefault("num_inference_steps", 2)
    kw.setdefault("output_type", "pt")
    gen = (
        [torch.Generator().manual_seed(seed + i) for i in range(len(prompt))]
        if isinstance(prompt, list)
        else torch.Generator().manual_seed(seed)
    )
    return pipe(prompt, generator=kw.pop("generator", gen), **kw)


# ------------------------------------------------------------------------------------------------------------------
# Tiling geometry end to end with a stand-in transformer


def field(coords: torch.Tensor) -> torch.Tensor:
    """A smooth function of global (f, h, w) -> 3 channels."""
    f, h, w = coords.unbind(-1)
    return torch.stack([torch.sin(3 * f) + w, torch.cos(5 * h) * f, h * w - f], dim=0)


class PositionOracle(HPDMTransformer):
    """Outputs F such that the denoised estimate of every voxel is ``field(global position)``."""

    def forward(self, hidden_states, timestep, boxes, level=None, context=None, context_indices=None, **kw):
        sigma = torch.exp(4 * timestep.double())[:, None, None, None, None]
        sd = 0.5
        c_in, c_skip, c_out = (
            1 / (sigma**2 + sd**2).sqrt(),
            sd**2 / (sigma**2 + sd**2),
            -sigma * sd / (sigma**2 + sd**2).sqrt(),
        )
        x = hidden_states.double() / c_in
        n, _, f, h, w = x.shape
        axes = [(torch.arange(k, dtype=torch.float64) + 0.5) / k for k in (f, h, w)]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)  # (f, h, w, 3) in patch coordinates
        coords = boxes.double()[:, None, None, None, :3] + boxes.double()[:, None, None, None, 3:] * grid
        target = torch.stack([field(c) for c in coords])  # (n, 3, f, h, w)
        out = (target - c_skip * x) / c_out
        return type("O", (), {"sample": out.to(hidden_states.dtype)})()

    def compute_context(self, hidden_states, timestep, boxes, level, **kw):
        return LevelContext(level, boxes, [None] * self.config.num_blocks)


@pytest.mark.parametrize("overlap", [(), ("h", "w"), ("f", "h", "w")])
@pytest.mark.parametrize("blending, shift_tiles", [("uniform", False), ("smooth", False), ("uniform", True)])
def test_fused_canvas_equals_position_field_everywhere(overlap, blending, shift_tiles):
    # Odd patch sizes force snapped last windows (e.g. h: offsets 0, 2, 4, 5 on a 10-voxel canvas).
    model = PositionOracle(patch_size=(3, 5, 7), num_levels=2, tokenizer_patch=(1, 1, 1), token_dim=8, latent_dim=8,
                           num_latents=2, num_blocks=1, num_compute_layers=1, num_heads=1, num_classes=2)  # fmt: skip
    # float64: the last Euler step x + (0 - sigma) (x - D) / sigma returns D only up to rounding of x ~ sigma.
    p = HierarchicalPatchPipeline(model.double(), HPDMScheduler(level_samplers=["euler", "euler"]))
    p.set_progress_bar_config(disable=True)
    out = p(class_labels=[1], num_inference_steps=2, level_steps=[2, 2], guidance_scale=1.0, overlap_axes=overlap,
            blending=blending, shift_tiles=shift_tiles, output_type="latent", return_levels=True,
            generator=torch.Generator().manual_seed(0))  # fmt: skip
    for lvl, video in enumerate(out.levels):
        F, H, W = video.shape[2:]
        axes = [(torch.arange(k, dtype=torch.float64) + 0.5) / k for k in (F, H, W)]
        expected = field(torch.stack(torch.meshgrid(*axes, indexing="ij"), -1))
        # Boxes travel as float32: a voxel's coordinate (offset + size x centre, in [0, 1]) is off by up to eps / 2
        # per axis, and the field's slopes add up to at most 6 per channel (cos(5h) f: 5 along h, 1 along f), so 6
        # float32 roundings at scale 1 are twice that bound (the rest is float64); a misplaced window is off by ~0.1.
        assert_close_rounding(video[0], expected, 6, 1.0, torch.float32, msg=f"level {lvl}")


def test_single_tile_canvas_is_bit_identical_to_untiled_sampling(pipe):
    tiled = run(pipe, num_levels=1, guidance_scale=1.0, output_type="latent").frames
    # Untiled reference: the plain sampling loop on the whole (single-patch) canvas.
    tm, sch = pipe.transformer, pipe.scheduler
    embeds, mask, _, _ = pipe.encode_prompt(PROMPTS[0], do_classifier_free_guidance=False)
    gen = torch.Generator().manual_seed(0)
    sch.set_timesteps(2, level=0)
    x = torch.randn((1, 3, *tm.config.patch_size), generator=gen) * sch.init_noise_sigma
    box = torch.tensor([[0.0, 0, 0, 1, 1, 1]])
    for t in sch.timesteps:
        x = sch.churn(x, generator=gen)
        sigma = sch.current_sigma
        c_in, c_noise = sch.precondition(sigma)[2:]
        out = tm(c_in * x, torch.full((1,), float(c_noise)), box, encoder_hidden_states=embeds,
                 encoder_attention_mask=mask, level=0, drop_conditioning=torch.zeros(1, dtype=torch.bool)).sample  # fmt: skip
        x = sch.step(out, t, x).prev_sample
    assert torch.equal(tiled, x)


# ------------------------------------------------------------------------------------------------------------------
# Context cache, determinism, batching


@pytest.mark.parametrize("shift_tiles", [False, True])
def test_cached_and_uncached_context_give_the_same_frames(pipe, shift_tiles):
    kw = dict(level_steps=[2, 2, 2], shift_tiles=shift_tiles)
    cached = run(pipe, cache_context=True, **kw).frames
    uncached = run(pipe, cache_context=False, **kw).frames
    # The uncached path recomputes the coarser levels' activations in other batches (other kernels and summation
    # orders). The frames (in [0, 1]) are the last evaluation's denoised estimate, which reads level 1's context:
    # the rounding of the model's depth in both; earlier steps' differences shrink by sigma_next / sigma per step.
    assert_close_rounding(uncached, cached, 2 * transformer_depth(pipe.transformer.config), 1.0)


def test_shifted_tiles_move_the_plan_of_every_other_evaluation(pipe):
    """With ``shift_tiles`` the finer levels alternate between the plan and the plan moved by half a stride (one
    window more per tiled axis: the two at the canvas edges stay); level 0, a single tile, is bit-identical."""
    calls = []

    def record(module, args, kwargs, output):
        if kwargs.get("level"):
            calls.append((kwargs["level"], sorted({round(float(v) * 16) for v in args[2][:, 1]})))

    kw = dict(level_steps=[2, 2, 2], guidance_scale=1.0, return_levels=True, tile_batch_size=10_000)
    plain = run(pipe, **kw)
    hook = pipe.transformer.register_forward_hook(record, with_kwargs=True)
    try:
        shifted = run(pipe, **kw, shift_tiles=True)
    finally:
        hook.remove()
    assert torch.equal(plain.levels[0], shifted.levels[0])
    assert not torch.equal(plain.frames, shifted.frames)
    # level 1: a 16x16 canvas of 8x8 windows; h offsets (in 16ths of the canvas) of each of its two evaluations
    assert [offsets for level, offsets in calls if level == 1] == [[0, 4, 8], [0, 2, 6, 8]]


# ------------------------------------------------------------------------------------------------------------------
# Outputs, callbacks, call counts


def test_output_types_shapes_and_ranges(pipe, tmp_path):
    np_out = run(pipe, output_type="np", return_levels=True)
    assert np_out.frames.shape == (1, 2, 32, 32, 3) and 0 <= np_out.frames.min() and np_out.frames.max() <= 1
    assert [lv.shape for lv in np_out.levels] == [(1, 2, 8, 8, 3), (1, 2, 16, 16, 3), (1, 2, 32, 32, 3)]
    pt = run(pipe, output_type="pt").frames
    assert pt.shape == (1, 2, 3, 32, 32)
    # the same sampling and the same post-processing kernels (only the final layout differs): bit-identical
    np.testing.assert_array_equal(pt.permute(0, 1, 3, 4, 2).numpy(), np_out.frames)
    pil = run(pipe, output_type="pil").frames
    assert len(pil) == 1 and len(pil[0]) == 2 and pil[0][0].size == (32, 32)
    frames = run(pipe, output_type="np", num_levels=2).frames
    assert frames.shape == (1, 2, 16, 16, 3)
    assert run(pipe, output_type="np", height=16, width=16).frames.shape == (1, 2, 16, 16, 3)
    path = export_to_video(list(np_out.frames[0]), str(tmp_path / "v.mp4"), fps=8)
    assert iio.imread(path, plugin="pyav" if _has_av() else None).shape[0] == 2


def _has_av():
    try:
        import av  # noqa: F401

        return True
    except ImportError:
        return False


def test_callback_can_edit_the_canvas(pipe):
    seen = []

    def cb(p, step, t, kw):
        seen.append(kw["latents"].shape)
        return {"latents": torch.zeros_like(kw["latents"])}

    out = run(pipe, output_type="latent", callback_on_step_end=cb, return_levels=True)
    evals = 3 + 1 + 1  # heun with 2 steps at level 0 (2n-1 evaluations), one euler step at levels 1 and 2
    assert len(seen) == evals and seen[-1] == (1, 3, 2, 32, 32)
    assert all(lv.abs().max() == 0 for lv in out.levels)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_one_transformer_call_per_tile_batch_per_step(pipe, guidance):
    calls = []
    hook = pipe.transformer.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        run(pipe, guidance_scale=guidance, tile_batch_size=16)
    finally:
        hook.remove()
    tiles = [1, 9, 49]  # (2x8x8 canvases of 1, 3x3, 7x7 windows): level 1 and 2 tiles at 50% overlap on h, w
    steps = [3, 1, 1]
    per_step = [math.ceil(n / 16) for n in tiles]
    assert len(calls) == sum(s * c for s, c in zip(steps, per_step))
    assert max(calls) == 16 * (2 if guidance != 1 else 1)


# ------------------------------------------------------------------------------------------------------------------
# Save / load, model card


def test_guidance_per_level_applies_each_scale_to_its_level(pipe):
    """A list with the same scale everywhere is that scale; a list that differs from a scalar only above level 0
    gives the scalar's level 0 exactly and a different finest level."""
    same = run(pipe, guidance_scale=[3.0, 3.0, 3.0], output_type="latent", return_levels=True)
    scalar = run(pipe, guidance_scale=3.0, output_type="latent", return_levels=True)
    for a, b in zip(same.levels, scalar.levels):
        assert torch.equal(a, b)
    mixed = run(pipe, guidance_scale=[3.0, 1.0, 1.0], output_type="latent", return_levels=True)
    assert torch.equal(mixed.levels[0], scalar.levels[0])
    assert (mixed.levels[-1] - scalar.levels[-1]).abs().max() > 1e-4


def test_save_load_round_trip_and_model_card(pipe, tmp_path):
    ref = run(pipe).frames
    pipe.save_pretrained(tmp_path)
    card = write_model_card(
        tmp_path, repo_id="me/hpdm-tiny", example_prompt=PROMPTS[0], metrics={"colour accuracy": 1.0}
    )
    loaded = HierarchicalPatchPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(run(loaded).frames, ref)
    text = card.read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "text-to-video"
    assert meta["hpdm"]["level_sizes"] == [[2, 8, 8], [2, 16, 16], [2, 32, 32]]
    assert "HierarchicalPatchPipeline.from_pretrained" in text
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))


# ------------------------------------------------------------------------------------------------------------------
# Video super-resolution: `video=` stands in for a coarse level


def test_given_video_is_returned_unchanged_and_only_finer_levels_are_sampled(pipe):
    """A level-1 clip comes back as level 1 bit for bit (level 0 as its area-downsampling), for every video of the
    batch (one clip broadcast; one per prompt, times ``num_videos_per_prompt``); only level 2 takes steps, at the
    step indices of the full run (3 + 1 evaluations of levels 0 and 1 come first); PIL, NumPy and tensor forms of
    the same clip give the same result."""
    g = torch.Generator().manual_seed(1)
    clip = torch.rand(2, 3, 2, 16, 16, generator=g) * 2 - 1  # (B, C, F, H, W) in [-1, 1]
    steps = []

    def cb(p, step, t, kw):
        steps.append((step, tuple(kw["latents"].shape)))
        return {}

    out = run(pipe, PROMPTS, video=clip, num_videos_per_prompt=2, generator=g, output_type="latent",
              return_levels=True, callback_on_step_end=cb)  # fmt: skip
    assert torch.equal(out.levels[1], clip.repeat_interleave(2, dim=0))
    assert torch.equal(out.levels[0], area_downsample(out.levels[1], (2, 8, 8)))
    assert steps == [(4, (4, 3, 2, 32, 32))]
    one = run(pipe, PROMPTS, video=clip[0], output_type="latent", return_levels=True).levels[1]
    assert torch.equal(one, clip[:1].expand(2, -1, -1, -1, -1))
    uint8 = ((clip[0] + 1) * 127.5).round().to(torch.uint8)  # (C, F, H, W)
    frames = uint8.permute(1, 2, 3, 0).numpy()  # (F, H, W, C)
    forms = [uint8, frames, frames.astype(np.float32) / 255, [Image.fromarray(f) for f in frames]]
    outs = [run(pipe, video=v, output_type="latent", return_levels=True).levels for v in forms]
    for levels in outs[1:]:  # the same float32 values through the same operations and kernels
        assert all(torch.equal(a, b) for a, b in zip(levels, outs[0]))


@pytest.mark.parametrize(
    "video,kw,match",
    [
        (torch.zeros(1, 3, 2, 12, 12), {}, r"not a level.*2x8x8, 2x16x16, 2x32x32.*Resize the clip"),
        (torch.zeros(1, 2, 3, 8, 8), {}, r"transpose\(1, 2\)"),
        (torch.zeros(1, 3, 2, 16, 16), dict(num_levels=2), "nothing finer to generate"),
        (torch.zeros(3, 3, 2, 8, 8), {}, "one video per prompt or a single one"),
    ],
)
def test_video_that_fits_no_level_raises_naming_the_fix(pipe, video, kw, match):
    with pytest.raises(ValueError, match=match):
        pipe(PROMPTS, video=video, num_inference_steps=2, **kw)


@pytest.mark.parametrize("video_level", [0, 1])
def test_cached_and_uncached_context_give_the_same_frames_from_a_given_video(pipe, video_level):
    clip = torch.rand(1, 3, 2, 8 * 2**video_level, 8 * 2**video_level, generator=torch.Generator().manual_seed(2))
    kw = dict(level_steps=[2, 2, 2], video=clip)
    cached = run(pipe, cache_context=True, **kw).frames
    uncached = run(pipe, cache_context=False, **kw).frames
    # as the test without a video: the last evaluation plus the context it read, frames in [0, 1]
    assert_close_rounding(uncached, cached, 2 * transformer_depth(pipe.transformer.config), 1.0)


def test_video_of_the_generated_level_0_reproduces_the_full_run(pipe):
    """Noise for the finer levels is drawn in the same order as in a full run (level 0's context re-noising, then
    each finer level): from ``video=`` the run's own level 0, with every generator in the state it had after the
    run's level-0 steps (captured by a callback at level 0's last evaluation), the finer levels are bit-identical.
    """
    gens = [torch.Generator().manual_seed(10 + i) for i in range(2)]
    states = []

    def capture(p, step, t, kw):
        if step == len(p.scheduler.timesteps) - 1 and p.scheduler.level == 0:
            states.extend(g.get_state() for g in gens)
        return {}

    full = pipe(PROMPTS, num_inference_steps=2, generator=gens, output_type="latent", return_levels=True,
                callback_on_step_end=capture)  # fmt: skip
    resumed = [torch.Generator() for _ in gens]
    for g, s in zip(resumed, states):
        g.set_state(s)
    sr = pipe(PROMPTS, video=full.levels[0], num_inference_steps=2, generator=resumed, output_type="latent",
              return_levels=True)  # fmt: skip
    for a, b in zip(full.levels, sr.levels):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(height=20), "not a level"),
        (dict(num_frames=3), "not a level"),
        (dict(overlap_axes=("x",)), "overlap_axes"),
        (dict(overlap_axes="hw"), "overlap_axes"),
        (dict(generator=[torch.Generator()] * 3), "generators"),
        (dict(prompt_embeds=torch.zeros(1, 4, 32)), "either `prompt` or `prompt_embeds`"),
        (dict(class_labels=[1]), "not class-conditional"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(guidance_scale=-1.0), "guidance_scale"),
        (dict(guidance_scale=[3.0, 3.0]), "one per level"),
        (dict(blending="gauss"), "blending"),
        (dict(tile_batch_size=0), "tile_batch_size"),
        (dict(num_levels=4), "num_levels"),
        (dict(output_type="gif"), "output_type"),
        (dict(level_steps=[4, 2]), "level_steps"),
        (dict(num_videos_per_prompt=0), "num_videos_per_prompt"),
        (dict(callback_on_step_end_tensor_inputs=["noise"]), "callback_on_step_end_tensor_inputs"),
        (dict(negative_prompt=["a", "b"]), "negative prompts"),
        (dict(context_sigma=0.0), "context_sigma"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_fix(pipe, kw, match):
    with pytest.raises(ValueError, match=match):
        pipe(PROMPTS[0], num_inference_steps=kw.pop("num_inference_steps", 2), **kw)


def test_text_model_without_prompt_and_class_model_without_labels_raise(pipe):
    with pytest.raises(ValueError, match="pass `prompt`"):
        pipe(num_inference_steps=2)
    cls_pipe = HierarchicalPatchPipeline(tiny_model(text_embed_dim=None, num_classes=3), HPDMScheduler())
    with pytest.raises(ValueError, match="class_labels"):
        cls_pipe(num_inference_steps=2)
    with pytest.raises(ValueError, match="class_labels"):
        cls_pipe(class_labels=[5], num_inference_steps=2)


@pytest.mark.parametrize("fusion", ["none", "shallow"])
def test_every_fusion_mode_samples_every_level(fusion):
    """``none`` reads no context: its finer levels do not depend on the coarse video at all; the others do."""
    tok = build_word_tokenizer(PROMPTS)
    model = tiny_model(context_fusion=fusion)
    pipe = HierarchicalPatchPipeline(
        model, HPDMScheduler(level_growth=(1, 2, 2)), build_tiny_text_encoder(tok, 32), tok
    )
    pipe.set_progress_bar_config(disable=True)
    clips = torch.rand(2, 1, 3, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    finals = [run(pipe, video=clip, level_steps=[2, 2, 2]).frames for clip in clips]
    assert finals[0].shape == (1, 2, 3, 32, 32) and torch.isfinite(finals[0]).all()
    assert torch.equal(finals[0], finals[1]) == (fusion == "none")
    assert run(pipe, level_steps=[2, 2, 2]).frames.shape == (1, 2, 3, 32, 32)  # sampled level 0 too
