"""diffusers' call conventions, checked as its ``PipelineTesterMixin`` checks them (tests/pipelines/
test_pipelines_common.py), written for ``HierarchicalPatchPipeline``: ``latents``, ``num_timesteps`` /
``current_timestep`` / ``interrupt``, every callback tensor input, ``encode_prompt`` in isolation, batch vs single,
dict vs tuple, ``num_videos_per_prompt``, ``attention_kwargs`` and dtype round trips."""

import ast
import inspect
import textwrap

import pytest
import torch
from conftest import assert_close_rounding, transformer_depth
from diffusers.utils.torch_utils import randn_tensor
from test_pipeline import PROMPTS, tiny_model

from diffusers_hpdm import HierarchicalPatchPipeline, HPDMScheduler
from diffusers_hpdm.text import build_tiny_text_encoder, build_word_tokenizer


def components():
    tok = build_word_tokenizer(PROMPTS + ["blurry"])
    return dict(
        transformer=tiny_model(),
        scheduler=HPDMScheduler(level_growth=(1, 2, 2)),
        text_encoder=build_tiny_text_encoder(tok, 32),
        tokenizer=tok,
    )


def make(**parts) -> HierarchicalPatchPipeline:
    p = HierarchicalPatchPipeline(**parts)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def parts():
    return components()


@pytest.fixture(scope="module")
def pipe(parts):
    return make(**parts)


def call(pipe, prompt=PROMPTS[0], seed=0, **kw):
    kw.setdefault("num_inference_steps", 2)
    kw.setdefault("output_type", "latent")
    kw.setdefault("generator", torch.Generator().manual_seed(seed))
    return pipe(prompt, **kw)


def model_tolerance(pipe) -> int:
    return 2 * transformer_depth(pipe.transformer.config)


# ---------------------------------------------------------------------------------------------------- latents
def test_latents_are_level_0_noise_and_the_generator_feeds_the_finer_levels(pipe):
    """``latents=randn_tensor(shape, generator=g)`` then ``generator=g`` is the call with ``generator`` alone."""
    ref = call(pipe, PROMPTS, generator=[torch.Generator().manual_seed(s) for s in (3, 4)], return_levels=True)
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    shape = (2, 3, *pipe.transformer.level_sizes[0])
    latents = randn_tensor(shape, generator=gens)
    out = call(pipe, PROMPTS, latents=latents, generator=gens, return_levels=True)
    for a, b in zip(out.levels, ref.levels, strict=True):
        assert torch.equal(a, b)
    # other level-0 noise, the same generator: another level 0
    other = call(pipe, PROMPTS, latents=-latents, generator=[torch.Generator().manual_seed(s) for s in (3, 4)])
    assert not torch.equal(other.frames, ref.frames)


def test_latents_of_the_wrong_shape_or_with_a_video_raise(pipe):
    with pytest.raises(ValueError, match="latents"):
        call(pipe, latents=torch.zeros(1, 3, 2, 16, 16))
    with pytest.raises(ValueError, match="latents"):
        call(pipe, latents=torch.zeros(1, 3, 2, 8, 8), video=torch.zeros(3, 2, 8, 8))


# ------------------------------------------------------------------------- num_timesteps, current_timestep, interrupt
def test_num_timesteps_current_timestep_and_level_during_the_loop(pipe):
    seen = []

    def cb(p, step, t, kw):
        seen.append((step, p.current_level, p.current_timestep, p.scheduler.timesteps[p.scheduler.step_index - 1]))
        return {}

    call(pipe, callback_on_step_end=cb)
    assert pipe.num_timesteps == 3 + 1 + 1  # Heun 2 steps at level 0 (2n - 1 evaluations), one Euler step above
    assert [s for s, *_ in seen] == list(range(pipe.num_timesteps))
    assert [lv for _, lv, *_ in seen] == [0, 0, 0, 1, 2]
    assert all(torch.equal(t, expected) for _, _, t, expected in seen)
    assert pipe.current_timestep is None and pipe.current_level is None  # outside the loop


@pytest.mark.parametrize("stop_at", [1, 3])
def test_interrupt_stops_at_the_step_and_returns_the_level_reached(pipe, stop_at):
    calls = []
    hook = pipe.transformer.register_forward_hook(lambda *a: calls.append(1))

    def cb(p, step, t, kw):
        if step == stop_at:
            p._interrupt = True
        return {}

    try:
        out = call(pipe, guidance_scale=1.0, callback_on_step_end=cb, return_levels=True)
    finally:
        hook.remove()
    reached = 0 if stop_at < 3 else 1
    assert len(out.levels) == reached + 1
    assert out.frames.shape[2:] == pipe.transformer.level_sizes[reached]
    # no evaluation after the stop: level 0 is one call per evaluation, level 1's 9 tiles fit in one tile batch
    assert len(calls) == (stop_at + 1 if reached == 0 else 3 + 1)


# ---------------------------------------------------------------------------------------- callback tensor inputs
def test_callback_receives_exactly_the_requested_tensors(pipe):
    """PipelineTesterMixin.test_callback_inputs: only the names asked for, each of ``_callback_tensor_inputs``."""
    assert pipe._callback_tensor_inputs == ["latents", "prompt_embeds", "negative_prompt_embeds"]
    embeds = pipe.encode_prompt(PROMPTS[0], do_classifier_free_guidance=False)[0]
    negative = pipe.encode_prompt("blurry", do_classifier_free_guidance=False)[0]
    for names in (["latents"], ["prompt_embeds"], pipe._callback_tensor_inputs):
        got = []

        def cb(p, step, t, kw, got=got):
            got.append(kw)
            return {}

        call(pipe, negative_prompt="blurry", callback_on_step_end=cb, callback_on_step_end_tensor_inputs=names)
        assert all(list(kw) == names for kw in got)
        if "prompt_embeds" in names:
            assert torch.equal(got[0]["prompt_embeds"], embeds)
        if "negative_prompt_embeds" in names:
            assert torch.equal(got[0]["negative_prompt_embeds"], negative)


def test_callback_returning_its_inputs_unchanged_changes_nothing(pipe):
    ref = call(pipe, negative_prompt="blurry").frames
    out = call(pipe, negative_prompt="blurry", callback_on_step_end=lambda p, s, t, kw: kw,
               callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs).frames  # fmt: skip
    assert torch.equal(out, ref)


def _record_conditioning(pipe):
    calls = []

    def hook(module, args, kwargs, output):
        calls.append((kwargs["encoder_hidden_states"].clone(), kwargs["drop_conditioning"].clone()))

    return calls, pipe.transformer.register_forward_hook(hook, with_kwargs=True)


def test_callback_prompt_embeds_replace_the_conditioning_from_the_next_evaluation(pipe):
    other = pipe.encode_prompt(PROMPTS[1], do_classifier_free_guidance=False)[0]
    calls, hook = _record_conditioning(pipe)
    try:
        out = call(pipe, guidance_scale=1.0, callback_on_step_end=lambda p, s, t, kw: {"prompt_embeds": other},
                   callback_on_step_end_tensor_inputs=["prompt_embeds"])  # fmt: skip
    finally:
        hook.remove()
    first, *later = calls
    assert not torch.equal(first[0][:1], other)
    assert all(torch.equal(ehs, other.expand_as(ehs)) for ehs, _ in later)  # every tile of every finer evaluation
    assert not torch.equal(out.frames, call(pipe, guidance_scale=1.0).frames)


def test_callback_negative_prompt_embeds_replace_the_null_conditioning(pipe):
    """Without a negative prompt the unconditional stream is the learned null; a returned
    ``negative_prompt_embeds`` becomes that stream's text from the next evaluation on."""
    negative = pipe.encode_prompt("blurry", do_classifier_free_guidance=False)[0]
    seen = []

    def cb(p, step, t, kw):
        seen.append(kw["negative_prompt_embeds"])
        return {"negative_prompt_embeds": negative}

    calls, hook = _record_conditioning(pipe)
    try:
        call(
            pipe,
            guidance_scale=3.0,
            callback_on_step_end=cb,
            callback_on_step_end_tensor_inputs=["negative_prompt_embeds"],
        )
    finally:
        hook.remove()
    assert seen[0] is None and torch.equal(seen[1], negative)
    (_, drop0), *later = calls
    assert drop0.tolist() == [False, True]  # (conditional, null) at the first evaluation
    for ehs, drop in later:
        half = len(drop) // 2
        assert not drop.any() and torch.equal(ehs[half:], negative.expand_as(ehs[half:]))


def test_callback_embeds_of_another_shape_raise(pipe):
    with pytest.raises(ValueError, match="prompt_embeds"):
        call(pipe, callback_on_step_end=lambda p, s, t, kw: {"prompt_embeds": torch.zeros(1, 3, 32)},
             callback_on_step_end_tensor_inputs=["prompt_embeds"])  # fmt: skip


# ------------------------------------------------------------------------------------------ encode_prompt alone
def return_names(fn) -> list[str]:
    """The names of ``fn``'s returned tuples, read as diffusers' ``ReturnNameVisitor`` reads them (every ``return``
    of a tuple in the source, nested functions included, in order)."""
    names = []
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(fn)))):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple):
            names += [ast.unparse(e) for e in node.value.elts]
    return names


def test_encode_prompt_works_in_isolation(parts):
    """PipelineTesterMixin.test_encode_prompt_works_in_isolation: a pipeline holding only the text encoder encodes;
    its outputs, passed by their return names to a pipeline without one, give the full pipeline's frames."""
    text_only = make(**{k: (v if "text" in k or "tokenizer" in k else None) for k, v in parts.items()})
    names = return_names(HierarchicalPatchPipeline.encode_prompt)
    assert names == [
        "prompt_embeds",
        "prompt_attention_mask",
        "negative_prompt_embeds",
        "negative_prompt_attention_mask",
    ]
    assert set(names) <= set(inspect.signature(HierarchicalPatchPipeline.__call__).parameters)
    encoded = dict(zip(names, text_only.encode_prompt(PROMPTS[0], negative_prompt="blurry", device="cpu")))
    no_text = make(**{k: (None if "text" in k or "tokenizer" in k else v) for k, v in parts.items()})
    out = call(no_text, prompt=None, **encoded).frames
    assert torch.equal(out, call(make(**parts), negative_prompt="blurry").frames)
    # embeddings in, the same embeddings out (masks filled in); nothing to encode raises
    again = text_only.encode_prompt(prompt_embeds=encoded["prompt_embeds"], do_classifier_free_guidance=False)
    assert torch.equal(again[0], encoded["prompt_embeds"]) and again[1].all() and again[2] is None
    with pytest.raises(ValueError, match="prompt_embeds"):
        text_only.encode_prompt()


# ------------------------------------------------------------------------------- batch, tuple, videos per prompt
def test_batch_equals_single_videos(pipe):
    """PipelineTesterMixin.test_inference_batch_single_identical, per-video generators."""
    batch = call(pipe, PROMPTS, generator=[torch.Generator().manual_seed(s) for s in (5, 6)]).frames
    for i, (prompt, seed) in enumerate(zip(PROMPTS, (5, 6))):
        alone = call(pipe, prompt, seed=seed).frames[0]
        assert_close_rounding(batch[i], alone, model_tolerance(pipe), 1.0)  # other batch shapes: other kernels


def test_dict_and_tuple_outputs_are_identical(pipe):
    out = call(pipe, return_levels=True)
    frames, levels = call(pipe, return_levels=True, return_dict=False)
    assert torch.equal(out.frames, frames) and all(torch.equal(a, b) for a, b in zip(out.levels, levels))
    assert len(call(pipe, return_dict=False)) == 1


def test_num_videos_per_prompt_orders_videos_prompt_major(pipe):
    """Video ``k`` of ``num_videos_per_prompt=2`` is prompt ``k // 2`` with generator ``k``."""
    seeds = [10, 11, 12, 13]
    out = call(pipe, PROMPTS, num_videos_per_prompt=2, generator=[torch.Generator().manual_seed(s) for s in seeds])
    assert out.frames.shape[0] == 4
    for k, seed in enumerate(seeds):
        alone = call(pipe, PROMPTS[k // 2], seed=seed).frames[0]
        assert_close_rounding(out.frames[k], alone, model_tolerance(pipe), 1.0)


# ----------------------------------------------------------------------------------------------- attention_kwargs
def test_attention_kwargs_reach_every_transformer_call(pipe):
    seen = []
    hook = pipe.transformer.register_forward_hook(
        lambda m, a, kw, o: seen.append(kw.get("attention_kwargs")), with_kwargs=True
    )
    try:
        out = call(pipe, attention_kwargs={"scale": 1.0}).frames
    finally:
        hook.remove()
    assert seen and all(kw == {"scale": 1.0} for kw in seen)
    assert pipe.attention_kwargs == {"scale": 1.0}
    assert torch.equal(out, call(pipe).frames)  # no adapter: scale 1 is the identity


# ------------------------------------------------------------------------------------------------ dtype round trips
def test_bf16_pipeline_round_trips_through_save_and_load(parts, tmp_path):
    """PipelineTesterMixin.test_to_dtype / test_save_load_float16, with bf16 (the CPU's half type): every
    component moves, the load keeps the dtype and the frames, and the canvas stays float32."""
    pipe = make(**components()).to(torch.bfloat16)
    assert pipe.transformer.dtype == pipe.text_encoder.dtype == torch.bfloat16
    ref = call(pipe).frames
    assert ref.dtype == torch.float32
    pipe.save_pretrained(tmp_path)
    loaded = HierarchicalPatchPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.transformer.dtype == loaded.text_encoder.dtype == torch.bfloat16
    assert torch.equal(call(loaded).frames, ref)
    back = loaded.to(torch.float32)
    assert back.transformer.dtype == torch.float32


def test_optional_components_save_and_load_as_none(parts, tmp_path):
    """PipelineTesterMixin.test_save_load_optional_components: no text encoder saved, none loaded, same frames."""
    pipe = make(**components())
    embeds, mask, _, _ = pipe.encode_prompt(PROMPTS[0], do_classifier_free_guidance=False)
    no_text = make(transformer=pipe.transformer, scheduler=pipe.scheduler, text_encoder=None, tokenizer=None)
    ref = call(no_text, prompt=None, prompt_embeds=embeds, prompt_attention_mask=mask).frames
    no_text.save_pretrained(tmp_path)
    loaded = HierarchicalPatchPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.text_encoder is None and loaded.tokenizer is None
    assert torch.equal(call(loaded, prompt=None, prompt_embeds=embeds, prompt_attention_mask=mask).frames, ref)
