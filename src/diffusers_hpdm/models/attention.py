"""Attention of the RIN blocks through diffusers' attention dispatch.

`HPDMAttention` is an ``nn.Module`` with diffusers' `AttentionModuleMixin`: its processor calls
`dispatch_attention_fn`, so ``model.set_attention_backend("_native_math" | "flex" | "flash" | ...)`` (or the
``attention_backend`` context manager) switches the kernel, and ``attn_processors`` / ``set_attn_processor`` /
``fuse_qkv_projections`` work as on diffusers' own transformers.

Every attention of the RIN block takes its keys and values from another sequence than its queries (read: tokens,
write: latents, compute: latents *and* the conditioning tokens), so every one is a cross-attention in diffusers'
sense: ``fuse_qkv_projections`` fuses ``to_k`` and ``to_v`` into ``to_kv``. The parameter names (``to_q``, ``to_k``,
``to_v``, ``to_out.0``, ``norm_q``, ``norm_k``) are those of diffusers' ``Attention``, which this module replaced, so
checkpoints saved before load unchanged; with the default (native) backend it runs the same SDPA call on the same
tensors.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.normalization import RMSNorm
from torch import nn

QK_NORMS = (None, "rms_norm", "layer_norm")


class HPDMAttnProcessor:
    """Default processor of `HPDMAttention`: projections, per-head q/k normalisation, `dispatch_attention_fn`."""

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: HPDMAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            hidden_states: ``(N, S_q, D_q)`` queries' inputs.
            encoder_hidden_states: ``(N, S_kv, D_kv)`` keys' and values' inputs (default: ``hidden_states``).
            attention_mask: additive ``(N, 1, S_kv)`` or ``(N, 1, 1, S_kv)`` bias (``-inf`` hides a key), or ``None``.
        Returns:
            ``(N, S_q, D_q)``.
        """
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.to_q(hidden_states)  # (N, S_q, H * Dh)
        if attn.fused_projections:
            key, value = attn.to_kv(context).chunk(2, dim=-1)  # (N, S_kv, H * Dh) each
        else:
            key, value = attn.to_k(context), attn.to_v(context)
        query, key, value = (t.unflatten(-1, (attn.heads, -1)) for t in (query, key, value))  # (N, S, H, Dh)
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        if attention_mask is not None and attention_mask.ndim == 3:
            attention_mask = attention_mask[:, None]  # (N, 1, 1, S_kv): the same bias for every head and query
        out = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )  # (N, S_q, H, Dh)
        out = out.flatten(2, 3).type_as(query)  # (N, S_q, H * Dh)
        return attn.to_out[1](attn.to_out[0](out))


class HPDMAttention(nn.Module, AttentionModuleMixin):
    r"""Multi-head attention of queries ``(N, S_q, query_dim)`` over keys/values ``(N, S_kv, kv_dim)``.

    Args:
        query_dim: width of the queries' inputs and of the output.
        kv_dim: width of the keys' and values' inputs (``None``: ``query_dim``).
        heads: attention heads.
        dim_head: width of one head.
        qk_norm: per-head normalisation of queries and keys: ``"rms_norm"``, ``"layer_norm"`` or ``None``.
        eps: epsilon of that normalisation.
        out_bias: bias of the output projection.
        processor: the attention processor (default `HPDMAttnProcessor`).
    """

    _default_processor_cls = HPDMAttnProcessor
    _available_processors = [HPDMAttnProcessor]

    def __init__(
        self,
        query_dim: int,
        kv_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        qk_norm: str | None = "rms_norm",
        eps: float = 1e-5,
        out_bias: bool = True,
        processor: HPDMAttnProcessor | None = None,
    ):
        super().__init__()
        if qk_norm not in QK_NORMS:
            raise ValueError(f"`qk_norm` must be one of {QK_NORMS}, got {qk_norm!r}.")
        kv_dim = query_dim if kv_dim is None else kv_dim
        inner = heads * dim_head
        self.heads = heads
        self.is_cross_attention = True  # keys and values always come from another sequence (see module docstring)
        self.use_bias = False  # of to_q / to_k / to_v (read by AttentionModuleMixin.fuse_projections)
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(kv_dim, inner, bias=False)
        self.to_v = nn.Linear(kv_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim, bias=out_bias), nn.Dropout(0.0)])
        if qk_norm == "rms_norm":
            self.norm_q, self.norm_k = RMSNorm(dim_head, eps=eps), RMSNorm(dim_head, eps=eps)
        elif qk_norm == "layer_norm":
            self.norm_q, self.norm_k = nn.LayerNorm(dim_head, eps=eps), nn.LayerNorm(dim_head, eps=eps)
        else:
            self.norm_q = self.norm_k = None
        self.set_processor(processor if processor is not None else self._default_processor_cls())

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(N, S_q, query_dim)`` -> ``(N, S_q, query_dim)``; see `HPDMAttnProcessor`."""
        return self.processor(self, hidden_states, encoder_hidden_states, attention_mask)
