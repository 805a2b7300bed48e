"""How ``HPDMTransformer`` runs its RIN blocks over the levels of a patch pyramid: the joint forward of training
(all levels of nested chains at once) and the level forward of tiled inference (one level's tiles, reading coarser
levels from a cache), which share every weight (paper §3.2, §4.2-4.3).

A mixin: the layers live on the model (their state-dict keys are the model's), these methods only use them.
"""

from __future__ import annotations

import torch

from ..geometry import context_chain, relative_box
from .context import LevelContext, gather_context, sample_boxes


class PyramidForwardMixin:
    """The two forwards of ``HPDMTransformer`` (needs its ``config``, ``levels_per_block``, ``token_grid``, layers
    and the tokenizer / conditioning mixins)."""

    def _run_block(self, b: int, x, z, cond, bias):
        """RIN block ``b`` on tokens ``x`` ``(N, T, D_tok)`` and latents ``z`` ``(N, M, D_lat)``, checkpointed when
        training with gradient checkpointing on."""
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(self.blocks[b], x, z, cond, bias)
        return self.blocks[b](x, z, cond, bias)

    def _project(self, b: int, a: torch.Tensor) -> torch.Tensor:
        """``W_c a``: block ``b``'s projection of a coarser level's tokens ``(N, T, D_tok)`` for finer levels to read."""
        a = a.detach() if self.config.detach_context else a
        return self.fusion[b].project_context(a)

    def _forward_joint(self, x, timestep, boxes, ehs, ehs_mask, class_labels, drop) -> torch.Tensor:
        """Training forward: ``x`` ``(B, L, C, f, h, w)``, the first ``L`` levels of nested chains -> ``F`` of the
        same shape. Level ``l`` reads levels ``< l`` of its own chain at every block that runs it (eq. 7-9)."""
        B, L = x.shape[:2]
        if L > self.config.num_levels or tuple(x.shape[3:]) != tuple(self.config.patch_size):
            raise ValueError(
                f"Joint input must be (B, L<={self.config.num_levels}, C, {tuple(self.config.patch_size)}), "
                f"got {tuple(x.shape)}."
            )
        if timestep.shape != (B, L) or boxes.shape != (B, L, 6):
            raise ValueError(f"Expected timestep (B, L)=({B}, {L}) and boxes ({B}, {L}, 6).")
        dtype = x.dtype
        rep = lambda t: None if t is None else t.repeat_interleave(L, dim=0)  # noqa: E731  (B, ...) -> (B*L, ...)
        flat_boxes = boxes.reshape(B * L, 6)
        coords = self._coords(flat_boxes, dtype)  # (B*L, T, 3)
        ctx_pixels = None
        if self.config.context_fusion == "shallow":
            ctx_pixels = self._shallow_context_joint(x, boxes).flatten(0, 1)
        ehs, ehs_mask, drop = rep(ehs), rep(ehs_mask), rep(drop)
        t_emb, cond, bias = self._conditioning(
            timestep.reshape(-1), flat_boxes, ehs, ehs_mask, rep(class_labels), drop, dtype
        )
        layout = self._text_layout(flat_boxes, ehs, ehs_mask, drop, dtype)
        tokens = self._tokenize(x.flatten(0, 1), coords, ctx_pixels, t_emb, timestep.reshape(-1), layout)
        tokens = tokens.unflatten(0, (B, L))  # (B, L, T, Dt)
        z = (self.latents[:L].unsqueeze(0) + t_emb.unflatten(0, (B, L))[:, :, None]).to(dtype)  # (B, L, M, Dl)
        cond, bias = cond.unflatten(0, (B, L)), None if bias is None else bias.unflatten(0, (B, L))
        coords = coords.unflatten(0, (B, L))
        rel = {
            (l, k): relative_box(boxes[:, l], boxes[:, k]) for l in range(1, L) for k in range(l)
        }  # (B, 6) each, eq. 8
        for b in range(self.config.num_blocks):
            n = min(self.levels_per_block[b], L)
            if self.fusion is not None and n > 1:
                proj = [self._project(b, tokens[:, k]) for k in range(n - 1)]  # W_c a_k, (B, T, Dt)
                fused = [tokens[:, 0]]
                for l in range(1, n):
                    ctx = sum(sample_boxes(proj[k], rel[(l, k)], self.token_grid) for k in range(l)) / l  # eq. 7
                    fused.append(self.fusion[b](tokens[:, l], ctx, coords[:, l]))  # eq. 9
                tokens = torch.cat([torch.stack(fused, dim=1), tokens[:, n:]], dim=1)
            xb, zb = self._run_block(
                b,
                tokens[:, :n].flatten(0, 1),
                z[:, :n].flatten(0, 1),
                cond[:, :n].flatten(0, 1),
                None if bias is None else bias[:, :n].flatten(0, 1),
            )
            tokens = torch.cat([xb.unflatten(0, (B, n)), tokens[:, n:]], dim=1)
            z = torch.cat([zb.unflatten(0, (B, n)), z[:, n:]], dim=1)
        return self._detokenize(tokens.flatten(0, 1), t_emb).unflatten(0, (B, L))

    def _forward_level(
        self, x, timestep, boxes, ehs, ehs_mask, class_labels, drop, level, context, context_indices, record
    ) -> tuple[torch.Tensor | None, LevelContext | None]:
        """Inference forward: tiles ``x`` ``(N, C, f, h, w)`` of ``level``, reading the cached ``context`` of coarser
        levels -> ``(F, None)``; with ``record``, ``(None, the LevelContext this level leaves for finer ones)``."""
        if level is None or not 0 <= level < self.config.num_levels:
            raise ValueError(f"Pass `level` in [0, {self.config.num_levels - 1}] with (N, C, f, h, w) tiles.")
        N = x.shape[0]
        if tuple(x.shape[2:]) != tuple(self.config.patch_size) or boxes.shape != (N, 6) or timestep.shape != (N,):
            raise ValueError(
                f"Level forward expects tiles (N, C, {tuple(self.config.patch_size)}), timestep (N,) and boxes "
                f"(N, 6); got {tuple(x.shape)}, {tuple(timestep.shape)}, {tuple(boxes.shape)}."
            )
        fusion = self.config.context_fusion
        needs_context = level > 0 and fusion != "none"
        if needs_context:
            if context is None or len(context) < level:
                raise ValueError(f"Level {level} needs the `context` of levels 0..{level - 1} (see compute_context).")
            context = context[:level]
            if context_indices is None:
                context_indices = context_chain(
                    [c.boxes for c in context] + [boxes.to(context[0].boxes.device)], level
                )
        if record and fusion == "shallow":  # what finer levels read is this level's input pixels: no block runs
            return None, LevelContext(level, boxes.detach(), [None] * self.config.num_blocks, x)
        dtype = x.dtype
        coords = self._coords(boxes, dtype)
        ctx_pixels = None
        if needs_context and fusion == "shallow":  # the previous level's pixels only (as in the joint forward)
            parent, idx = context[level - 1], context_indices[level - 1]
            idx = idx.to(parent.pixels.device)
            src = parent.pixels[idx].to(x.device, dtype)  # (N, C, f, h, w)
            ctx_pixels = self._sample_pixels(src, relative_box(boxes, parent.boxes[idx].to(x.device)))
        t_emb, cond, bias = self._conditioning(timestep, boxes, ehs, ehs_mask, class_labels, drop, dtype)
        layout = self._text_layout(boxes, ehs, ehs_mask, drop, dtype)
        tokens = self._tokenize(x, coords, ctx_pixels, t_emb, timestep, layout)
        z = (self.latents[level].unsqueeze(0) + t_emb[:, None]).to(dtype)
        features: list[torch.Tensor | None] = [None] * self.config.num_blocks
        for b in range(self.config.num_blocks):
            if self.levels_per_block[b] <= level:
                continue
            if self.fusion is not None:
                if record and self.levels_per_block[b] > level + 1:
                    features[b] = self.fusion[b].project_context(tokens)  # what finer levels read
                    if b == self.config.num_blocks - 1:
                        break  # the last block's output is never read by anyone
                if needs_context:
                    ctx = gather_context(context, boxes, context_indices, b, self.token_grid, x.device, dtype)
                    tokens = self.fusion[b](tokens, ctx, coords)
            tokens, z = self._run_block(b, tokens, z, cond, bias)
        if record:
            return None, LevelContext(level, boxes.detach(), features)
        return self._detokenize(tokens, t_emb), None
