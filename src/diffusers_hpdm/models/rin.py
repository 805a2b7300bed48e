"""The Recurrent Interface Network block (paper §3.2, appendix C fig. 11; Jabri et al., 2023).

A block does three things, each pre-norm with a residual:

* **read**: the latents cross-attend to the patch tokens (cost linear in the number of tokens),
* **compute**: ``k`` layers of self-attention + MLP over the latents, which also attend to the conditioning
  tokens (noise level, class, text),
* **write**: the tokens cross-attend to the latents, then an MLP on the tokens.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from torch import nn

from .attention import HPDMAttention


def _attention(query_dim: int, kv_dim: int | None, heads: int, qk_norm: str | None) -> HPDMAttention:
    return HPDMAttention(query_dim, kv_dim, heads=heads, dim_head=query_dim // heads, qk_norm=qk_norm)


class ComputeLayer(nn.Module):
    """Self-attention over the latents (keys also include the conditioning tokens) and an MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: str | None, activation_fn: str = "gelu"):
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = _attention(dim, None, heads, qk_norm)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mult=mlp_ratio, activation_fn=activation_fn)

    def forward(self, z: torch.Tensor, cond: torch.Tensor, cond_bias: torch.Tensor | None) -> torch.Tensor:
        h = self.norm_attn(z)  # (N, M, D)
        kv = torch.cat([h, cond], dim=1)  # (N, M + S, D)
        z = z + self.attn(h, encoder_hidden_states=kv, attention_mask=cond_bias)
        return z + self.mlp(self.norm_mlp(z))


class RINBlock(nn.Module):
    """One read / compute / write block. Tokens ``x`` ``(N, T, D_tok)``, latents ``z`` ``(N, M, D_lat)``."""

    def __init__(
        self,
        token_dim: int,
        latent_dim: int,
        num_heads: int,
        num_compute_layers: int,
        mlp_ratio: float = 4.0,
        qk_norm: str | None = "rms_norm",
        activation_fn: str = "gelu",
    ):
        super().__init__()
        token_heads = max(1, num_heads * token_dim // latent_dim)
        # read: latents <- tokens
        self.read_norm_z = nn.LayerNorm(latent_dim)
        self.read_norm_x = nn.LayerNorm(token_dim)
        self.read_attn = _attention(latent_dim, token_dim, num_heads, qk_norm)
        self.read_norm_mlp = nn.LayerNorm(latent_dim)
        self.read_mlp = FeedForward(latent_dim, mult=mlp_ratio, activation_fn=activation_fn)
        # compute: latents (+ conditioning tokens)
        self.cond_norm = nn.LayerNorm(latent_dim)
        self.compute = nn.ModuleList(
            [ComputeLayer(latent_dim, num_heads, mlp_ratio, qk_norm, activation_fn) for _ in range(num_compute_layers)]
        )
        # write: tokens <- latents
        self.write_norm_x = nn.LayerNorm(token_dim)
        self.write_norm_z = nn.LayerNorm(latent_dim)
        self.write_attn = _attention(token_dim, latent_dim, token_heads, qk_norm)
        self.write_norm_mlp = nn.LayerNorm(token_dim)
        self.write_mlp = FeedForward(token_dim, mult=mlp_ratio, activation_fn=activation_fn)

    def forward(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        cond: torch.Tensor,
        cond_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: ``(N, T, D_tok)`` patch tokens.
            z: ``(N, M, D_lat)`` latents.
            cond: ``(N, S, D_lat)`` conditioning tokens (noise level, class, text).
            cond_bias: ``(N, 1, M + S)`` additive attention bias that hides padded text tokens, or ``None``.
        """
        z = z + self.read_attn(self.read_norm_z(z), encoder_hidden_states=self.read_norm_x(x))  # (N, M, D_lat)
        z = z + self.read_mlp(self.read_norm_mlp(z))
        cond = self.cond_norm(cond)
        for layer in self.compute:
            z = layer(z, cond, cond_bias)
        x = x + self.write_attn(self.write_norm_x(x), encoder_hidden_states=self.write_norm_z(z))  # (N, T, D_tok)
        x = x + self.write_mlp(self.write_norm_mlp(x))
        return x, z
