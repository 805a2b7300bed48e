"""How ``HPDMTransformer`` turns a patch's pixels into tokens and its tokens back into ``F`` (paper §3.2: a linear
tokenizer over ``tokenizer_patch`` voxels plus each token's global coordinates; RIN's linear readout).

A mixin: the layers live on the model (their state-dict keys are the model's), these methods only use them.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..geometry import relative_box, token_coordinates
from .context import sample_boxes


class PatchIOMixin:
    """Tokenizer and readout of ``HPDMTransformer`` (needs its ``config``, ``token_grid`` and layers)."""

    def _tokenize(
        self,
        x: torch.Tensor,
        coords: torch.Tensor,
        ctx_pixels: torch.Tensor | None,
        t_emb: torch.Tensor,
        timestep: torch.Tensor,
        layout: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ``(N, C, f, h, w)``, ``coords`` ``(N, T, 3)``, noise-level embedding ``(N, D_lat)``, ``c_noise``
        ``(N,)``, optional layout code ``(N, T, D_tok)`` -> tokens ``(N, T, D_tok)``."""
        pf, ph, pw = self.config.tokenizer_patch
        pattern = "n c (f pf) (h ph) (w pw) -> n (f h w) (c pf ph pw)"
        parts = [rearrange(x, pattern, pf=pf, ph=ph, pw=pw)]
        sigma = torch.exp(4 * timestep.float())  # c_noise = log(sigma) / 4
        gate = None
        if self.config.input_gate_sigma is not None:
            s_g = self.config.input_gate_sigma
            gate = (s_g / torch.sqrt(s_g**2 + sigma**2)).to(x.dtype)
            parts[0] = parts[0] * gate[:, None, None]
        if self.in_modulation is not None:
            parts[0] = parts[0] * (1 + self.in_modulation(nn.functional.silu(t_emb)))[:, None]
        if self.config.context_fusion == "shallow":
            ctx = torch.zeros_like(x) if ctx_pixels is None else ctx_pixels
            parts.append(rearrange(ctx, pattern, pf=pf, ph=ph, pw=pw))
        parts.append(coords)
        tokens = self.tokenizer(torch.cat(parts, dim=-1))  # (N, T, D_tok)
        if self.conv_in is not None:  # features of each pixel's 3x3 neighbourhood, across token borders
            features = self.conv_in(x if gate is None else x * gate[:, None, None, None, None])
            tokens = tokens + self.tokenizer_conv(rearrange(features, pattern, pf=pf, ph=ph, pw=pw))
        if layout is not None:
            s_l = self.config.text_layout_sigma
            if s_l is not None:
                layout = layout * (sigma / torch.sqrt(s_l**2 + sigma**2)).to(layout.dtype)[:, None, None]
            tokens = tokens + layout
        return tokens if self.token_positions is None else tokens + self.token_positions.to(tokens.dtype)

    def _detokenize(self, tokens: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """Tokens ``(N, T, D_tok)`` and the noise-level embedding ``(N, D_lat)`` -> ``F`` ``(N, C, f, h, w)``."""
        pf, ph, pw = self.config.tokenizer_patch
        f, h, w = self.token_grid
        h_out = self.norm_out(tokens)
        if self.out_modulation is not None:
            shift, scale = self.out_modulation(nn.functional.silu(t_emb)).unsqueeze(1).chunk(2, dim=-1)
            h_out = h_out * (1 + scale) + shift
        pattern = "n (f h w) (c pf ph pw) -> n c (f pf) (h ph) (w pw)"
        out = rearrange(self.proj_out(h_out), pattern, f=f, h=h, w=w, pf=pf, ph=ph, pw=pw)
        if self.conv_out is not None:  # each pixel also reads its neighbours' features, across token borders
            hidden = rearrange(self.proj_hidden(h_out), pattern, f=f, h=h, w=w, pf=pf, ph=ph, pw=pw)
            out = out + self.conv_out(hidden)
        return out

    def _coords(self, boxes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Per-token global coordinates ``(N, T, 3)`` (zeros when ``use_coordinates=False``)."""
        c = rearrange(token_coordinates(boxes.float(), self.token_grid), "n c f h w -> n (f h w) c").to(dtype)
        return c if self.config.use_coordinates else torch.zeros_like(c)

    def _shallow_context_joint(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Shallow fusion's context (paper §5 ablation): the previous level's patch pixels, not averaged over the
        coarser levels, resampled at each level's box. ``x`` ``(B, L, C, f, h, w)`` -> the same shape (zeros at
        level 0)."""
        out = [torch.zeros_like(x[:, 0])]
        for l in range(1, x.shape[1]):
            out.append(self._sample_pixels(x[:, l - 1], relative_box(boxes[:, l], boxes[:, l - 1])))
        return torch.stack(out, dim=1)

    def _sample_pixels(self, pixels: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        n, c = pixels.shape[:2]
        flat = rearrange(pixels, "n c f h w -> n (f h w) c")
        out = sample_boxes(flat, rel, tuple(self.config.patch_size))
        return rearrange(out, "n (f h w) c -> n c f h w", f=self.config.patch_size[0], h=self.config.patch_size[1])
