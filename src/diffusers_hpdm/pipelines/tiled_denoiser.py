"""The transformer side of tiled sampling (paper §4.4, DESIGN §6): one level's tiles denoised in batches and fused
into one canvas estimate, and the context pass that caches a finished level for the finer ones.

``HierarchicalPatchPipeline`` owns the loop over levels and steps; a ``TiledDenoiser`` owns what one call needs
for every transformer evaluation: the conditioning of each stream, the tile batch size and this process' share of
the tiles when several processes sample together (``parallel``, DESIGN §8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..models import HPDMTransformer, LevelContext
from ..schedulers import HPDMScheduler
from .context_exchange import exchange_context
from .parallel import ProcessShare
from .tiling import TiledCanvas


@dataclass
class Streams:
    """Everything per transformer "stream": each video once, and once more unconditioned under CFG."""

    video: torch.Tensor  # (S,) index of the video a stream belongs to
    embeds: torch.Tensor | None  # (S, L_txt, E)
    mask: torch.Tensor | None  # (S, L_txt)
    labels: torch.Tensor | None  # (S,)
    drop: torch.Tensor  # (S,) bool: use the learned null conditioning

    @classmethod
    def build(cls, embeds, mask, neg_embeds, neg_mask, labels, num_videos, device, guided: bool) -> Streams:
        """Streams ``0..B-1``: each video conditioned; under guidance (``guided``) streams ``B..2B-1``: the same
        videos with the negative prompt, or the learned null conditioning when there is none."""
        videos = torch.arange(num_videos, device=device)
        drop = torch.zeros(num_videos, dtype=torch.bool, device=device)
        if not guided:
            return cls(videos, embeds, mask, labels, drop)
        uncond_drop = torch.full_like(drop, neg_embeds is None)
        cat = lambda a, b: None if a is None else torch.cat([a, a if b is None else b])  # noqa: E731
        if embeds is not None and neg_embeds is not None and neg_embeds.shape[1] != embeds.shape[1]:
            raise ValueError("`negative_prompt_embeds` must have the same sequence length as `prompt_embeds`.")
        return cls(
            torch.cat([videos, videos]),
            cat(embeds, neg_embeds),
            cat(mask, neg_mask),
            cat(labels, None),
            torch.cat([drop, uncond_drop]),
        )

    def take(self, idx: torch.Tensor) -> dict:
        kw = {"drop_conditioning": self.drop[idx]}
        if self.embeds is not None:
            kw["encoder_hidden_states"] = self.embeds[idx]
            kw["encoder_attention_mask"] = self.mask[idx] if self.mask is not None else None
        if self.labels is not None:
            kw["class_labels"] = self.labels[idx]
        return kw


@dataclass
class Conditioning:
    """The call's conditioning per video, from which the streams are built; a callback may replace the embeddings."""

    prompt_embeds: torch.Tensor | None  # (B, L_txt, E)
    prompt_attention_mask: torch.Tensor | None  # (B, L_txt)
    negative_prompt_embeds: torch.Tensor | None  # (B, L_txt, E); None: the learned null conditioning
    negative_prompt_attention_mask: torch.Tensor | None  # (B, L_txt)
    class_labels: torch.Tensor | None  # (B,)
    num_videos: int
    device: torch.device
    guided: bool  # classifier-free guidance: one unconditional stream per video

    CALLBACK_TENSORS = ("prompt_embeds", "negative_prompt_embeds")

    def streams(self) -> Streams:
        return Streams.build(
            self.prompt_embeds, self.prompt_attention_mask, self.negative_prompt_embeds,
            self.negative_prompt_attention_mask, self.class_labels, self.num_videos, self.device, self.guided,
        )  # fmt: skip

    def callback_tensors(self) -> dict[str, torch.Tensor | None]:
        return {name: getattr(self, name) for name in self.CALLBACK_TENSORS}

    def replace(self, tensors: dict) -> bool:
        """Take the embeddings among ``tensors`` (a callback's output; other names are ignored), in the dtype and on
        the device of the current ones; return whether anything changed."""
        changed = False
        for name in self.CALLBACK_TENSORS:
            if name not in tensors or tensors[name] is None:
                continue
            new, old = tensors[name], getattr(self, name)
            like = old if old is not None else self.prompt_embeds
            if like is not None and new.shape != like.shape:
                raise ValueError(
                    f"A callback returned `{name}` of shape {tuple(new.shape)}; it must keep the shape "
                    f"{tuple(like.shape)} (videos, sequence, width)."
                )
            if like is not None:
                new = new.to(device=like.device, dtype=like.dtype)
            if name == "negative_prompt_embeds" and self.negative_prompt_attention_mask is None:
                # it replaces the learned null conditioning: every position is a real token
                self.negative_prompt_attention_mask = torch.ones(new.shape[:2], dtype=torch.bool, device=new.device)
            setattr(self, name, new)
            changed = True
        return changed


class TiledDenoiser:
    """Transformer evaluations on the tiles of one level, ``tile_batch_size`` (video, tile) pairs per call, every
    stream of those videos (conditional first, then unconditional) in the same call.

    Args:
        transformer: the ``HPDMTransformer``.
        scheduler: the ``HPDMScheduler`` (its preconditioning turns model outputs into denoised estimates).
        conditioning: the call's conditioning, from which every stream is built.
        tile_batch_size: (video, tile) pairs per transformer call; results do not depend on it.
        attention_kwargs: passed to every transformer call.
        share: this process' place among the processes sampling together (default: one process). At levels > 0
            each process denoises its contiguous share of the (video, tile) pairs and the weighted sums are
            all-reduced; level 0 (one tile per video) runs replicated.
    """

    def __init__(
        self,
        transformer: HPDMTransformer,
        scheduler: HPDMScheduler,
        conditioning: Conditioning,
        tile_batch_size: int,
        attention_kwargs: dict | None = None,
        share: ProcessShare | None = None,
    ):
        self.transformer, self.scheduler, self.conditioning = transformer, scheduler, conditioning
        self.streams = conditioning.streams()
        self.tile_batch_size, self.attention_kwargs = tile_batch_size, attention_kwargs
        self.share = share or ProcessShare()
        self.context_tiles: list[int] = []  # per cached level: tiles per stream
        self.row_maps: list[torch.Tensor | None] = []  # per cached level: global row -> held row (None: all held)

    def context_rows(
        self, chain: list[torch.Tensor], tile_ids: torch.Tensor, stream_ids: torch.Tensor, level: int
    ) -> list[torch.Tensor] | None:
        """Per coarser level ``k``, ``(N,)`` the row of the held cache ``k`` that each (stream, tile) reads."""
        if not level or not self.context_tiles:  # level 0, or "none" fusion: no context
            return None
        rows = []
        for k in range(level):
            row = chain[k][tile_ids] + stream_ids * self.context_tiles[k]  # stream-major global row
            rows.append(row if self.row_maps[k] is None else self.row_maps[k][row])
        return rows

    def update_conditioning(self, tensors: dict) -> None:
        """Replace the embeddings a callback returned (``Conditioning.replace``) and rebuild the streams."""
        if self.conditioning.replace(tensors):
            self.streams = self.conditioning.streams()

    def denoise_canvas(
        self,
        canvas: torch.Tensor,
        sigma: float,
        level: int,
        tiler: TiledCanvas,
        chain: list[torch.Tensor],
        context: list[LevelContext] | None,
        ctx_inputs: list,
        guidance_scale: float,
    ) -> torch.Tensor:
        """Fused denoised estimate ``(B, C, F, H, W)`` of the whole canvas ``(B, C, F, H, W)`` at ``sigma``.

        Args:
            chain: per coarser level ``k``, ``(n_tiles,)`` index of the cached tile each tile reads its context from.
            context: the cache of every coarser level, or ``None`` to recompute the coarse chain (reference path).
            ctx_inputs: per coarser level, ``context_inputs``' output (read only when ``context`` is ``None``).
            guidance_scale: this level's classifier-free guidance scale (used when there are unconditional streams).
        """
        streams, tm = self.streams, self.transformer
        B, n_tiles, S = canvas.shape[0], len(tiler), len(streams.video)
        c_skip, c_out, c_in, c_noise = (
            torch.as_tensor(v, dtype=canvas.dtype) for v in self.scheduler.precondition(sigma)
        )
        acc = tiler.new_accumulator(canvas)
        boxes = tiler.boxes().to(canvas.device)
        items = [(v, j) for v in range(B) for j in range(n_tiles)]
        if level > 0:  # this process' share of the (video, tile) pairs; level 0 runs replicated
            first, stop = self.share.share(len(items))
            self.share.record_tiles(level, stop - first, len(items))
            items = items[first:stop]
        for start in range(0, len(items), self.tile_batch_size):
            batch = items[start : start + self.tile_batch_size]
            vids, tiles = [v for v, _ in batch], [j for _, j in batch]
            x = tiler.extract(canvas, vids, tiles)  # (n, C, f, h, w)
            # Every stream of these videos: conditional first, then unconditional (CFG) in one call.
            stream_ids = torch.tensor(vids)  # stream v is video v's conditional pass, stream B + v its CFG pass
            if S > B:
                stream_ids = torch.cat([stream_ids, stream_ids + B])
            reps = len(stream_ids) // len(batch)
            tile_ids = torch.tensor(tiles * reps)
            x_in = (c_in * x).repeat(reps, 1, 1, 1, 1).to(tm.dtype)  # (reps * n, C, f, h, w)
            t = c_noise.expand(len(tile_ids)).to(canvas.device)
            kw = streams.take(stream_ids)
            if context is None and level > 0:  # reference path: recompute the coarse chain at every step
                out = self._joint_chain(x_in, t, boxes, tile_ids, stream_ids, level, chain, ctx_inputs, kw)
            else:
                idx = self.context_rows(chain, tile_ids, stream_ids, level) if context else None
                out = tm(
                    x_in, t, boxes[tile_ids], level=level, context=context, context_indices=idx,
                    attention_kwargs=self.attention_kwargs, **kw,
                ).sample  # fmt: skip
            denoised = c_skip * x.repeat(reps, 1, 1, 1, 1) + c_out * out.to(x.dtype)
            if reps == 2:
                d_cond, d_uncond = denoised.chunk(2)
                denoised = d_uncond + guidance_scale * (d_cond - d_uncond)
            tiler.accumulate(acc, denoised, vids, tiles)
        if level > 0:
            self.share.all_reduce_sum_(acc, level)  # the weighted sums of every share
        return tiler.normalize(acc)

    def _joint_chain(self, x_in, t, boxes, tile_ids, stream_ids, level, chain, ctx_inputs, kw):
        """``cache_context=False``: the joint forward on (coarse chain ..., tile), recomputing the coarse levels."""
        xs, ts, bs = [], [], []
        for k in range(level):
            sel = chain[k][tile_ids]
            inputs, sig_t, kboxes = ctx_inputs[k]
            xs.append(inputs[stream_ids, sel])
            ts.append(sig_t.expand(len(sel)))
            bs.append(kboxes[sel])
        xs.append(x_in), ts.append(t), bs.append(boxes[tile_ids])
        out = self.transformer(
            torch.stack(xs, 1), torch.stack(ts, 1), torch.stack(bs, 1), attention_kwargs=self.attention_kwargs, **kw
        ).sample
        return out[:, -1]

    def context_inputs(
        self,
        canvas: torch.Tensor,
        level: int,
        tiler: TiledCanvas,
        context_sigma: float,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Re-noise the finished canvas ``(B, C, F, H, W)`` to this level's context sigma (the fine levels were
        trained on noisy coarse context; one ``randn`` of the canvas' shape from ``generator``).

        Returns:
            scaled tile inputs ``(S, n_tiles, C, f, h, w)``, their ``c_noise`` (scalar) and the tile boxes
            ``(n_tiles, 6)``.
        """
        B, n_tiles = canvas.shape[0], len(tiler)
        sigma = context_sigma * self.scheduler.noise_shift**level
        noisy = canvas + sigma * randn_tensor(
            canvas.shape, generator=generator, device=canvas.device, dtype=canvas.dtype
        )
        _, _, c_in, c_noise = (torch.as_tensor(v, dtype=canvas.dtype) for v in self.scheduler.precondition(sigma))
        all_tiles = c_in * torch.stack([tiler.extract(noisy, [v] * n_tiles, range(n_tiles)) for v in range(B)])
        inputs = all_tiles[self.streams.video].to(self.transformer.dtype)
        return inputs, c_noise.to(canvas.device), tiler.boxes().to(canvas.device)

    def context_pass(
        self,
        ctx_inputs: tuple,
        level: int,
        chain: list[torch.Tensor],
        context: list[LevelContext],
        needed: list[torch.Tensor] | None = None,
    ) -> LevelContext:
        """Record the context of every tile of a finished level for every stream (rows ordered stream-major).

        With several processes (level > 0, ``needed`` given: per process, ``context_rows_needed``), each process
        computes its share of the rows and the processes exchange them: the result holds the rows ``needed[rank]``
        (``self.row_maps`` maps global rows to them)."""
        inputs, c_noise, boxes = ctx_inputs
        S, n_tiles = inputs.shape[:2]
        items = [(s, j) for s in range(S) for j in range(n_tiles)]
        split = level > 0 and self.share.is_parallel and needed is not None
        first, stop = self.share.share(len(items)) if split else (0, len(items))
        # an empty share still computes one row: its shapes tell what the others send
        parts = self._context_rows(inputs, c_noise, boxes, level, chain, context, items[first:stop] or items[:1])
        own = LevelContext.concat(parts)
        self.context_tiles.append(n_tiles)
        if not split:
            self.row_maps.append(None)
            return own
        own = own.select(torch.arange(stop - first))
        held, row_map = exchange_context(self.share, own, (first, stop), needed, boxes.repeat(S, 1))
        self.row_maps.append(row_map)
        return held

    def _context_rows(self, inputs, c_noise, boxes, level, chain, context, items) -> list[LevelContext]:
        """``compute_context`` on the (stream, tile) ``items``, ``tile_batch_size`` at a time."""
        parts = []
        for start in range(0, len(items), self.tile_batch_size):
            batch = items[start : start + self.tile_batch_size]
            s_ids = torch.tensor([s for s, _ in batch])
            j_ids = torch.tensor([j for _, j in batch])
            idx = self.context_rows(chain, j_ids, s_ids, level)
            parts.append(
                self.transformer.compute_context(
                    inputs[s_ids, j_ids],
                    c_noise.expand(len(batch)),
                    boxes[j_ids],
                    level=level,
                    context=context,
                    context_indices=idx,
                    attention_kwargs=self.attention_kwargs,
                    **self.streams.take(s_ids),
                )  # fmt: skip
            )
        return parts
