"""``HierarchicalPatchPipeline``: coarse-to-fine tiled sampling with a cached context (paper §4.4-4.5, DESIGN §6)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..geometry import AXES
from ..hardware import warn_if_bf16_is_emulated
from ..models import HPDMTransformer, LevelContext
from ..schedulers import HPDMScheduler
from .checksums import ChecksumMixin
from .context_exchange import context_rows_needed
from .hub_loading import HubLoadingMixin
from .inputs import check_inputs
from .parallel import ProcessShare
from .pipeline_output import HPDMPipelineOutput
from .prompt_encoding import PromptEncodingMixin
from .tiled_denoiser import Conditioning, TiledDenoiser
from .tiling import level_plans
from .validation import check_callback_result
from .video_input import VideoInput, check_video, preprocess_video, video_pyramid
from .video_parallel import parallel_mode, split_videos

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers.utils import export_to_video
        >>> from diffusers_hpdm import HierarchicalPatchPipeline

        >>> pipe = HierarchicalPatchPipeline.from_pretrained("models/hpdm-shapes-demo")
        >>> # the same pipeline, class read from the folder: DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
        >>> out = pipe("a red circle moving right slowly on a gray background", num_inference_steps=16,
        ...            generator=torch.Generator().manual_seed(0), return_levels=True)
        >>> export_to_video(list(out.frames[0]), "circle.mp4", fps=8)

        >>> # Video super-resolution: a clip of level 0's size ((F, H, W, C) in [0, 1]); only finer levels are sampled
        >>> sr = pipe("a red circle moving right slowly on a gray background", video=out.levels[0][0],
        ...           num_inference_steps=16, generator=torch.Generator().manual_seed(1))
        >>> sr.frames.shape[1:4] == out.frames.shape[1:4]
        True
        ```
"""


class HierarchicalPatchPipeline(ChecksumMixin, HubLoadingMixin, PromptEncodingMixin, DiffusionPipeline):
    r"""Text- or class-to-video generation with a Hierarchical Patch Diffusion Model.

    Level 0 is sampled as one patch. Every later level is tiled with patch-sized windows (50% overlap on
    ``overlap_axes``); at each step all tiles are denoised in batches, their estimates are fused into the canvas and
    the scheduler takes one step on the whole canvas. When a level is finished, one context pass over its tiles (at
    a small ``context_sigma``) fills a cache that every finer tile reads through deep context fusion.

    ``save_pretrained`` writes ``checksums.json`` (sha256 of every weight file) and ``from_pretrained`` of a local
    folder verifies it first: corrupted weights raise a ``ValueError`` naming the file (``verify_checksums=False``
    loads them anyway).

    With ``video=``, a given clip stands in for the level of its size and only the finer levels are sampled
    (video super-resolution, DESIGN §8).

    ``save_pretrained`` also writes ``hpdm_pipeline.py`` (an import of this class) and names it in
    ``model_index.json``, so that ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` loads the
    folder; ``HierarchicalPatchPipeline.from_pretrained(folder)`` needs no remote code (``hub_loading``).

    Args:
        transformer: the ``HPDMTransformer``.
        scheduler: an ``HPDMScheduler``.
        text_encoder: any ``transformers`` encoder returning ``last_hidden_state`` (T5 in production).
        tokenizer: its tokenizer.
    """

    model_cpu_offload_seq = "text_encoder->transformer"
    _optional_components = ["text_encoder", "tokenizer"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        transformer: HPDMTransformer,
        scheduler: HPDMScheduler,
        text_encoder: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        super().__init__()
        self.register_modules(
            transformer=transformer, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer
        )
        self.video_processor = VideoProcessor(do_resize=False)

    @property
    def guidance_scale(self) -> float | list[float]:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        scales = self._guidance_scale if isinstance(self._guidance_scale, list) else [self._guidance_scale]
        return any(w != 1.0 for w in scales)

    def _level_guidance(self, level: int) -> float:
        w = self._guidance_scale
        return float(w[level]) if isinstance(w, list) else float(w)

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` in a callback to stop: no further step, no finer level is started."""
        return self._interrupt

    @property
    def num_timesteps(self) -> int:
        """Model evaluations of the whole call, every level up to the last one (given levels included): callback
        step indices run from 0 to ``num_timesteps - 1``."""
        return self._num_timesteps

    @property
    def current_timestep(self) -> torch.Tensor | None:
        """The timestep (``c_noise``) being evaluated; ``None`` outside the denoising loops."""
        return self._current_timestep

    @property
    def current_level(self) -> int | None:
        """The level being sampled; ``None`` outside the denoising loops."""
        return self._current_level

    @property
    def attention_kwargs(self) -> dict | None:
        return self._attention_kwargs

    # ----------------------------------------------------------------------------------------------------------

    def prepare_latents(
        self,
        shape: tuple[int, ...],
        sigma: float,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A level's initial canvas ``sigma * eps`` ``(B, C, F, H, W)``: ``eps`` is ``latents`` (unit-variance noise,
        as diffusers' EDM pipelines take it) or is drawn from ``generator``."""
        if latents is None:
            return randn_tensor(shape, generator=generator, device=device, dtype=dtype) * sigma
        if tuple(latents.shape) != tuple(shape):
            raise ValueError(
                f"`latents` must be level 0's noise of shape {tuple(shape)} (videos, channels, frames, height, "
                f"width), got {tuple(latents.shape)}."
            )
        return latents.to(device=device, dtype=dtype) * sigma

    # ----------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        class_labels: int | list[int] | torch.Tensor | None = None,
        video: VideoInput | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 32,
        level_steps: list[int] | None = None,
        guidance_scale: float | list[float] = 3.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        overlap_axes: tuple[str, ...] | list[str] = AXES,
        blending: str = "smooth",
        shift_tiles: bool = False,
        tile_batch_size: int = 16,
        cache_context: bool = True,
        offload_context: bool = False,
        context_sigma: float = 0.1,
        num_levels: int | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        return_levels: bool = False,
        attention_kwargs: dict | None = None,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        max_sequence_length: int = 16,
        parallel: str = "auto",
    ) -> HPDMPipelineOutput | tuple:
        r"""Generate videos coarse to fine, or (``video=``) only the levels finer than a given video.

        Args:
            prompt / negative_prompt: text (text models). ``negative_prompt=None`` uses the learned null conditioning.
            class_labels: class ids (class-conditional models), one per prompt/video.
            video: video super-resolution (DESIGN §8): a clip that stands in for a coarse level, whose canvas size
                equals the clip's ``(frames, height, width)`` (``transformer.level_sizes``; any other size raises a
                ``ValueError`` listing them). Only the finer levels are sampled. A list of PIL frames, a NumPy array
                ``(F, H, W, C)`` / ``(B, F, H, W, C)`` in ``[0, 1]`` (or uint8), or a tensor ``(C, F, H, W)`` /
                ``(B, C, F, H, W)`` (channels first, as ``output_type="latent"``) in ``[-1, 1]`` or ``[0, 1]``
                (read as ``[-1, 1]`` when its minimum is negative); one video per prompt, or one for all.
                ``num_videos_per_prompt`` samples the finer levels that many times over each. The given level is
                used unchanged (``levels[k]`` with ``output_type="latent"`` is it, bit for bit, in the canvas
                dtype); each coarser level is its area-downsampling. Every one of them fills the context cache
                exactly as a sampled level does, re-noised to ``context_sigma`` with ``generator``, coarse to
                fine; then level ``k + 1`` draws its initial noise. So from ``video=`` level 0 of a run, with the
                generator in the state it had after that run's level-0 steps, the finer levels are that run's.
                Given levels take no steps and show no progress bar; callback step indices stay those of the full
                run (the first call is at index ``sum`` of the given levels' evaluation counts), and
                ``level_steps`` / per-level ``guidance_scale`` keep one entry per level (the given ones unused).
            num_frames, height, width: the output size; must be one level's canvas (default: the finest level).
            num_inference_steps: level-0 steps ``N``; level ``l`` uses ``max(1, N // 2**l)`` unless ``level_steps``.
            guidance_scale: classifier-free guidance ``w`` (``1`` disables it and runs one pass per tile batch), or
                one ``w`` per level, coarse to fine: level 0 decides the layout and the motion, the finer levels
                only add detail, and a scale that helps one can hurt the other (docs/evaluation.md).
            generator: one generator, or a list with one per video (then video ``i`` depends only on generator ``i``).
                Every draw takes it in this order: per level, coarse to fine, the level's initial noise (level 0's
                unless ``latents`` is given), its churn noise (``s_churn > 0``), then the re-noising of the finished
                level for the context pass.
            latents: level 0's initial noise ``eps`` ``(B * num_videos_per_prompt, C, F_0, H_0, W_0)``, unit
                variance: the canvas starts at ``scheduler.init_noise_sigma * latents``. The finer levels draw theirs
                from ``generator``; so ``latents=randn_tensor(shape, generator=g)`` followed by ``generator=g``
                reproduces the call with ``generator=g`` alone, bit for bit. Not with ``video=`` (no level 0 is
                sampled there).
            overlap_axes: axes with 50% tile overlap (subset of ``("f", "h", "w")``).
            blending: ``"smooth"`` (Hann-window weights; half the seam score at the same accuracy, docs/evaluation.md)
                or ``"uniform"`` (the paper's average) when fusing tiles.
            shift_tiles: alternate, from one model evaluation to the next, between the tile plan and the plan moved
                by half a stride on every tiled axis, so that no tile border stays in one place for the whole
                sampling (SpotDiffusion's shifting windows on top of the overlap). ``False``: the paper's fixed plan.
            tile_batch_size: tiles per transformer call (results do not depend on it).
            cache_context: read coarser levels from the cache (fast); ``False`` recomputes them at every step.
            offload_context: keep the context cache on the CPU.
            context_sigma: noise level (level-0 units, times ``shift**level``) at which finished levels are
                re-noised for the context pass: the fine levels were trained on noisy coarse context.
            num_levels: stop after this many levels (alternative to giving a coarser size).
            output_type: ``"np"``, ``"pil"``, ``"pt"`` or ``"latent"`` (the raw ``[-1, 1]`` canvas).
            attention_kwargs: passed to every transformer call (``scale``: the LoRA scale of loaded adapters).
            return_levels: also return every level's videos (with ``video=``: the given level and, under it, its
                downsamplings, as the context saw them).
            callback_on_step_end: ``fn(pipe, step, timestep, callback_kwargs) -> dict``, called after every model
                evaluation (``step`` in ``[0, pipe.num_timesteps)``, over all levels). ``callback_kwargs`` holds the
                names of ``callback_on_step_end_tensor_inputs`` (default ``["latents"]``; any of
                ``_callback_tensor_inputs``); each one returned replaces its tensor from the next evaluation on:
                ``latents`` (the current level's canvas ``(B, C, F, H, W)``), ``prompt_embeds`` /
                ``negative_prompt_embeds`` (``(B, S, E)``, same shape; ``negative_prompt_embeds`` is ``None``
                when the learned null conditioning is the unconditional branch). Finished levels' cached context
                keeps the conditioning it was computed with. Set ``pipe._interrupt = True`` to stop.
            parallel: how the processes of an initialised ``torch.distributed`` (``accelerate launch``) share the
                work (docs/large_videos.md). ``"tiles"``: at every level > 0 each process denoises its share of
                every step's tiles and of the context pass, the weighted sums are all-reduced (level 0 runs
                replicated); ``"videos"``: each process samples whole videos (one generator per video, or none),
                gathered on every process; ``"auto"``: ``"videos"`` when there are at least as many videos as
                processes and ``generator`` is a list (or ``None``), else ``"tiles"``; ``"none"``: every process
                runs the whole call. Every process returns the same output, equal to one process' within rounding.
                Every process must make the same call (same arguments, generators in the same state).
        Returns:
            ``HPDMPipelineOutput`` (or ``(frames,)`` / ``(frames, levels)`` when ``return_dict=False``).
        """
        tm = self.transformer
        cfg = tm.config
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        # 1. Check inputs
        batch, last_level, class_labels = check_inputs(
            self, prompt, negative_prompt, class_labels, num_frames, height, width, num_inference_steps, level_steps,
            guidance_scale, num_videos_per_prompt, generator, prompt_embeds, negative_prompt_embeds, overlap_axes,
            blending, tile_batch_size, num_levels, output_type, callback_on_step_end_tensor_inputs, context_sigma,
            prompt_attention_mask=prompt_attention_mask, negative_prompt_attention_mask=negative_prompt_attention_mask,
            max_sequence_length=max_sequence_length, callback_on_step_end=callback_on_step_end,
        )  # fmt: skip
        share = ProcessShare.from_torch_distributed()
        mode = parallel_mode(parallel, share, batch * num_videos_per_prompt, generator)
        if mode == "videos":  # each process samples whole videos: the same call on its share, then gathered
            return split_videos(self, share, batch, dict(
                prompt=prompt, negative_prompt=negative_prompt, class_labels=class_labels, video=video,
                num_frames=num_frames, height=height, width=width, num_inference_steps=num_inference_steps,
                level_steps=level_steps, guidance_scale=guidance_scale, num_videos_per_prompt=num_videos_per_prompt,
                generator=generator, latents=latents, prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds, prompt_attention_mask=prompt_attention_mask,
                negative_prompt_attention_mask=negative_prompt_attention_mask, overlap_axes=overlap_axes,
                blending=blending, shift_tiles=shift_tiles, tile_batch_size=tile_batch_size,
                cache_context=cache_context, offload_context=offload_context, context_sigma=context_sigma,
                num_levels=num_levels, output_type=output_type, return_dict=return_dict, return_levels=return_levels,
                attention_kwargs=attention_kwargs, callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                max_sequence_length=max_sequence_length,
            ))  # fmt: skip
        share = share if mode == "tiles" else ProcessShare()
        self.parallel_share = share  # what this process did (`ProcessShare.stats`), for benchmarks and logs
        video_level = -1  # the level of the given video (-1: none; every level is sampled)
        if latents is not None and video is not None:
            raise ValueError("`latents` is level 0's initial noise, but with `video=` level 0 is given: drop one.")
        if video is not None:
            video = preprocess_video(video, cfg.in_channels)  # (B_v, C, F, H, W) in [-1, 1]
            video_level = check_video(video, cfg, last_level, batch)
        self._guidance_scale = list(guidance_scale) if isinstance(guidance_scale, (list, tuple)) else guidance_scale
        self._interrupt = False
        self._attention_kwargs = attention_kwargs
        self._current_timestep = self._current_level = None
        device = self._execution_device
        num_videos = batch * num_videos_per_prompt
        warn_if_bf16_is_emulated(tm.dtype, device)  # bf16 on a CPU without AVX512-BF16/AMX is several times slower

        # 2. Encode the conditioning
        embeds = mask = neg_embeds = neg_mask = labels = None
        if cfg.text_embed_dim:
            embeds, mask, neg_embeds, neg_mask = self.encode_prompt(
                prompt, negative_prompt, self.do_classifier_free_guidance, num_videos_per_prompt, prompt_embeds,
                negative_prompt_embeds, prompt_attention_mask, negative_prompt_attention_mask, max_sequence_length,
                device,
            )  # fmt: skip
            embeds = embeds.to(device, tm.dtype)
            neg_embeds = None if neg_embeds is None else neg_embeds.to(device, tm.dtype)
        if class_labels is not None:
            labels = class_labels.to(device).repeat_interleave(num_videos_per_prompt)
        conditioning = Conditioning(
            embeds, mask, neg_embeds, neg_mask, labels, num_videos, device, self.do_classifier_free_guidance
        )
        denoiser = TiledDenoiser(tm, self.scheduler, conditioning, tile_batch_size, attention_kwargs, share)
        if share.is_parallel and generator is None:  # every process must draw the same noise
            generator = torch.Generator(device).manual_seed(share.broadcast_seed(device))

        # 3. The given video (super-resolution): it and its downsamplings stand in for levels 0..video_level
        sizes = tm.level_sizes
        # The canvas and the scheduler stay in (at least) fp32 whatever the transformer's dtype: bf16 lives only
        # inside the model, never in the fused canvas or the sampling trajectory.
        canvas_dtype = torch.promote_types(torch.float32, tm.dtype)
        given: list[torch.Tensor] = []
        if video is not None:
            video = video.to(device, canvas_dtype)
            per_video = num_videos // video.shape[0]  # one video for all, or one per prompt
            given = video_pyramid(video.repeat_interleave(per_video, dim=0), sizes[: video_level + 1])

        # 4. Levels, coarse to fine (step indices run over every level's evaluations)
        evaluations = []
        for level in range(last_level + 1):
            self.scheduler.set_timesteps(num_inference_steps, level=level, device=device, level_steps=level_steps)
            evaluations.append(len(self.scheduler.timesteps))
        self._num_timesteps = sum(evaluations)
        context: list[LevelContext] = []
        ctx_inputs, levels_out = [], []
        step_count = 0
        reuse_context = cache_context or cfg.context_fusion == "none"
        # With shift_tiles, evaluations alternate between the plan and the plan moved by half a stride; the
        # context pass and the finer levels' chains use the plan.
        all_tilers, all_chains = level_plans(
            sizes[: last_level + 1], cfg.patch_size, overlap_axes, blending, shift_tiles
        )
        for level in range(last_level + 1):
            tilers, chains = all_tilers[level], all_chains[level]
            tiler = tilers[0]
            self.scheduler.set_timesteps(num_inference_steps, level=level, device=device, level_steps=level_steps)
            if level <= video_level:  # given, not sampled: no noise drawn, no steps (their indices are skipped)
                latents = given[level]
                step_count += len(self.scheduler.timesteps)
            else:
                shape = (num_videos, cfg.in_channels, *sizes[level])
                noise = latents if level == 0 else None
                latents = self.prepare_latents(
                    shape, self.scheduler.init_noise_sigma, canvas_dtype, device, generator, noise
                )

                # 5. Denoising loop: fuse the tiles' denoised estimates, one scheduler step on the whole canvas
                latents = self._denoising_loop(
                    latents, level, denoiser, tilers, chains, context if reuse_context else None, ctx_inputs,
                    generator, step_count, callback_on_step_end, callback_on_step_end_tensor_inputs,
                )  # fmt: skip
                step_count += len(self.scheduler.timesteps)
            levels_out.append(latents)
            if self.interrupt:
                break  # finer levels are not started: the output is the last level reached

            # 6. Context pass over the finished (or given) level for the finer ones
            if level < last_level and cfg.context_fusion != "none":
                inputs = denoiser.context_inputs(latents, level, tiler, context_sigma, generator)
                # Only the uncached path re-reads the re-noised inputs at every finer step; the cache replaces them.
                ctx_inputs.append(None if cache_context else inputs)
                if cache_context:
                    needed = None
                    if share.is_parallel and level > 0:  # the rows each process's finer tiles read
                        needed = [
                            context_rows_needed(level, len(tiler), all_chains, num_videos,
                                                len(denoiser.streams.video), last_level, q, share.world_size)
                            for q in range(share.world_size)
                        ]  # fmt: skip
                    ctx = denoiser.context_pass(inputs, level, chains[0], context, needed)
                    context.append(ctx.to("cpu") if offload_context else ctx)

        # 7. Post-process
        self._current_timestep = self._current_level = None
        self.maybe_free_model_hooks()
        frames = self._postprocess(levels_out[-1], output_type)
        levels = [self._postprocess(v, output_type) for v in levels_out] if return_levels else None
        if not return_dict:
            return (frames, levels) if return_levels else (frames,)
        return HPDMPipelineOutput(frames=frames, levels=levels)

    def _denoising_loop(
        self, latents, level, denoiser, tilers, chains, context, ctx_inputs, generator, first_step, callback,
        callback_inputs,
    ) -> torch.Tensor:  # fmt: skip
        """Sample one level from its initial noise ``latents`` ``(B, C, F, H, W)`` along the scheduler's current
        timesteps; evaluation ``i`` uses tile plan ``tilers[i % len(tilers)]`` and calls ``callback`` with step
        index ``first_step + i``. Stops early (returning the canvas reached) when the callback sets ``interrupt``."""
        timesteps = self.scheduler.timesteps
        self._current_level = level
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    break
                self._current_timestep = t
                latents = self.scheduler.churn(latents, generator=generator)
                sigma = self.scheduler.current_sigma
                plan = i % len(tilers)
                denoised = denoiser.denoise_canvas(
                    latents, sigma, level, tilers[plan], chains[plan], context, ctx_inputs,
                    self._level_guidance(level),
                )  # fmt: skip
                latents = self.scheduler.step(None, t, latents, denoised=denoised).prev_sample
                if callback is not None:
                    tensors = {"latents": latents, **denoiser.conditioning.callback_tensors()}
                    result = callback(self, first_step + i, t, {k: tensors[k] for k in callback_inputs})
                    result = check_callback_result(result, latents)
                    latents = result.pop("latents", latents)
                    denoiser.update_conditioning(result)  # prompt_embeds / negative_prompt_embeds, if returned
                progress_bar.update()
        return latents

    def _postprocess(self, video: torch.Tensor, output_type: str):
        if output_type == "latent":
            return video
        return self.video_processor.postprocess_video(video.float().clamp(-1, 1), output_type=output_type)


HierarchicalPatchPipeline.__call__.__doc__ += EXAMPLE_DOC_STRING
