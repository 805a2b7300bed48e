"""``HPDMTransformer``: an RIN denoiser over a patch pyramid (paper §3.2, §4.2-4.3, appendix C).

Two forwards share every weight (``pyramid_forward.py``):

* **joint** (training): all levels of a nested patch chain at once, ``(B, L, C, f, h, w)``;
* **level** (inference): the tiles of one level, ``(N, C, f, h, w)``, reading coarser levels from a context cache.

Levels never share latents: context fusion is the only path between levels, which is what makes tiled inference
possible. The model is the raw network ``F`` of EDM: inputs are already scaled by ``c_in`` and ``timestep`` is
``c_noise = log(sigma) / 4`` (the scheduler owns the preconditioning).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput, apply_lora_scale
from torch import nn

from ..geometry import AXES, check_divisible, level_sizes
from .conditioning import ConditioningMixin
from .context import DeepContextFusion, LevelContext
from .expansion import expand_base
from .patch_io import PatchIOMixin
from .positions import LAYOUT_FREQUENCIES, sincos_position_table
from .presets import PRESETS
from .pyramid_forward import PyramidForwardMixin
from .rin import RINBlock

FUSION_MODES = ("deep", "shallow", "none")


@dataclass
class HPDMTransformerOutput(BaseOutput):
    """
    Args:
        sample: the network output ``F`` (v-prediction): ``(B, L, C, f, h, w)`` for the joint forward,
            ``(N, C, f, h, w)`` for one level's tiles.
    """

    sample: torch.Tensor


class HPDMTransformer(
    PyramidForwardMixin, PatchIOMixin, ConditioningMixin, ModelMixin, ConfigMixin, AttentionMixin, PeftAdapterMixin
):
    r"""Hierarchical Patch Diffusion transformer (RIN backbone).

    Options marked *(extension)* are not in the paper: they were added for the CPU-trained demo model, which uses
    them. Each is off by default and starts with weights that leave the model computing what it would without it;
    docs/api.md gives the reason for each and docs/direction.md the measurements behind it.

    Args:
        in_channels: pixel channels (3).
        patch_size: ``(f, h, w)`` resolution of every patch, the same at every level.
        num_levels: pyramid levels ``L``.
        level_growth: per axis 1 or 2: how each level's canvas grows over the previous one.
        tokenizer_patch: voxels per token, e.g. ``(1, 4, 4)``.
        token_dim: width of the patch tokens (the paper's "tokenization dim").
        latent_dim: width of the latents.
        num_latents: latents per level and sample.
        num_blocks: RIN blocks.
        num_compute_layers: self-attention layers over the latents in each block.
        num_heads: attention heads of the latents (tokens use ``num_heads * token_dim // latent_dim``).
        mlp_ratio: MLP expansion.
        levels_per_block: adaptive computation (paper §4.3): block ``b`` runs the first ``levels_per_block[b]``
            levels. Non-decreasing, ending at ``num_levels``. ``None``: every block runs every level.
        context_fusion: ``"deep"`` (paper), ``"shallow"`` (the previous level's pixels concatenated to the input, the
            paper's ablation) or ``"none"``.
        detach_context: stop gradients from finer levels into coarser ones (ablation).
        use_coordinates: feed per-token global coordinates to the tokenizer and the fusion (ablation: ``False``).
        qk_norm: normalisation of queries and keys (``"rms_norm"`` keeps LAMB at lr 5e-3 stable), or ``None``.
        text_embed_dim: width of ``encoder_hidden_states`` (e.g. T5), ``None`` for no text conditioning.
        num_classes: class-conditional models: number of classes (a null class is added), else ``None``.
        timestep_freq_dim: sinusoidal features of ``c_noise``.
        token_position_embedding: add a learned embedding of each token's position inside its patch (RIN), started
            as a 3D sine-cosine code.
        output_modulation: modulate the output head's normalisation by the noise level (DiT's adaLN-zero final
            layer). ``False``: RIN's plain readout.
        pooled_text_embedding: *(extension)* add a projection of the masked mean of the text embeddings to the
            noise-level embedding (Imagen-style pooled conditioning).
        input_modulation: *(extension)* scale the noisy pixels entering the tokenizer by a noise-dependent gain
            ``1 + Linear(SiLU(t_emb))``.
        text_layout: *(extension)* add to every token the product of a projection of Fourier features of its global
            coordinates and a projection of the pooled prompt.
        input_gate_sigma: *(extension)* scale the tokenizer's noisy pixels by ``s_g / sqrt(s_g^2 + sigma^2)``
            (``s_g`` = this value), or ``None``.
        text_layout_sigma: *(extension)* with ``text_layout``, scale the layout code by
            ``sigma / sqrt(s_l^2 + sigma^2)`` (``s_l`` = this value), or ``None``.
        output_conv_channels: *(extension)* add to ``F`` a 3x3 spatial convolution of this many readout features
            per pixel, so that a pixel reads the tokens across its token border (as U-ViT does), or ``None``.
        input_conv_channels: *(extension)* add to each token a projection of a 3x3 spatial convolution of the noisy
            pixels (the input-side twin of ``output_conv_channels``), or ``None``.
        activation_fn: the MLPs' activation (a diffusers ``FeedForward`` name). The presets use ``"gelu"`` (erf),
            ~3x faster than the default ``"gelu-approximate"`` (tanh) on CPU; the default keeps older checkpoints
            (saved before this option existed) computing what they were trained with.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["RINBlock"]
    _repeated_blocks = ["RINBlock"]
    # Output layers that start at zero: LAMB must not scale their updates by their (zero) norm (`lamb_param_groups`).
    _zero_init_parameters = [
        "proj_out.weight",
        "out_modulation.weight",
        "pooled_text_proj.weight",
        "in_modulation.weight",
        "layout_text.weight",
        "conv_out.weight",
        "tokenizer_conv.weight",
    ]
    # Embedding tables: no trust ratio or decay (a table's norm says nothing about how far one row should move).
    _embedding_parameters = ["token_positions", "latents", "null_text"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        patch_size: tuple[int, int, int] = (4, 16, 16),
        num_levels: int = 3,
        level_growth: tuple[int, int, int] = (2, 2, 2),
        tokenizer_patch: tuple[int, int, int] = (1, 4, 4),
        token_dim: int = 64,
        latent_dim: int = 128,
        num_latents: int = 32,
        num_blocks: int = 6,
        num_compute_layers: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        levels_per_block: list[int] | None = None,
        context_fusion: str = "deep",
        detach_context: bool = False,
        use_coordinates: bool = True,
        qk_norm: str | None = "rms_norm",
        text_embed_dim: int | None = None,
        num_classes: int | None = None,
        timestep_freq_dim: int = 256,
        token_position_embedding: bool = True,
        output_modulation: bool = False,
        activation_fn: str = "gelu-approximate",
        pooled_text_embedding: bool = False,
        input_modulation: bool = False,
        text_layout: bool = False,
        input_gate_sigma: float | None = None,
        text_layout_sigma: float | None = None,
        output_conv_channels: int | None = None,
        input_conv_channels: int | None = None,
    ):
        super().__init__()
        level_sizes(patch_size, num_levels, level_growth)  # validates sizes and growth
        self.token_grid = check_divisible(patch_size, tokenizer_patch)
        self.levels_per_block = self._check_levels_per_block(levels_per_block, num_blocks, num_levels)
        if context_fusion not in FUSION_MODES:
            raise ValueError(f"`context_fusion` must be one of {FUSION_MODES}, got {context_fusion!r}.")
        if latent_dim % num_heads:
            raise ValueError(f"`latent_dim` ({latent_dim}) must be divisible by `num_heads` ({num_heads}).")

        voxels = in_channels * math.prod(tokenizer_patch)
        pixel_in = voxels * (2 if context_fusion == "shallow" else 1)
        self.tokenizer = nn.Linear(pixel_in + 3, token_dim)
        self.in_modulation = nn.Linear(latent_dim, voxels) if input_modulation else None
        if input_conv_channels is not None and not input_conv_channels >= 1:
            raise ValueError(f"`input_conv_channels` must be a positive integer or None, got {input_conv_channels}.")
        if input_conv_channels:
            self.conv_in = nn.Conv3d(
                in_channels, input_conv_channels, (1, 3, 3), padding=(0, 1, 1), padding_mode="replicate"
            )
            self.tokenizer_conv = nn.Linear(input_conv_channels * math.prod(tokenizer_patch), token_dim)
        else:
            self.conv_in = self.tokenizer_conv = None
        num_tokens = math.prod(self.token_grid)
        self.token_positions = (
            nn.Parameter(torch.randn(1, num_tokens, token_dim) * 0.02) if token_position_embedding else None
        )
        self.latents = nn.Parameter(torch.randn(num_levels, num_latents, latent_dim))  # unit scale: see _init_weights
        self.time_embedding = TimestepEmbedding(timestep_freq_dim, latent_dim)
        self.box_embedding = nn.Linear(6, latent_dim)
        self.class_embedding = nn.Embedding(num_classes + 1, latent_dim) if num_classes else None
        if text_embed_dim:
            self.text_proj = nn.Linear(text_embed_dim, latent_dim)
            self.null_text = nn.Parameter(torch.randn(1, latent_dim) * 0.02)
        else:
            self.text_proj = None
        if pooled_text_embedding and not text_embed_dim:
            raise ValueError("`pooled_text_embedding=True` needs text conditioning: set `text_embed_dim`.")
        self.pooled_text_proj = nn.Linear(text_embed_dim, latent_dim) if pooled_text_embedding else None
        if input_gate_sigma is not None and not input_gate_sigma > 0:
            raise ValueError(f"`input_gate_sigma` must be a positive sigma or None, got {input_gate_sigma}.")
        if text_layout and not text_embed_dim:
            raise ValueError("`text_layout=True` needs text conditioning: set `text_embed_dim`.")
        if text_layout_sigma is not None and not (text_layout and text_layout_sigma > 0):
            raise ValueError(
                f"`text_layout_sigma` must be a positive sigma and needs `text_layout=True`, got {text_layout_sigma} "
                f"with text_layout={text_layout}."
            )
        self.layout_position = nn.Linear(6 * LAYOUT_FREQUENCIES, token_dim) if text_layout else None
        self.layout_text = nn.Linear(text_embed_dim, token_dim) if text_layout else None
        self.blocks = nn.ModuleList(
            [
                RINBlock(token_dim, latent_dim, num_heads, num_compute_layers, mlp_ratio, qk_norm, activation_fn)
                for _ in range(num_blocks)
            ]
        )
        self.fusion = (
            nn.ModuleList([DeepContextFusion(token_dim) for _ in range(num_blocks)])
            if context_fusion == "deep"
            else None
        )
        self.norm_out = nn.LayerNorm(token_dim, elementwise_affine=not output_modulation)
        self.out_modulation = nn.Linear(latent_dim, 2 * token_dim) if output_modulation else None
        self.proj_out = nn.Linear(token_dim, voxels)
        if output_conv_channels is not None and not output_conv_channels >= 1:
            raise ValueError(f"`output_conv_channels` must be a positive integer or None, got {output_conv_channels}.")
        if output_conv_channels:
            self.proj_hidden = nn.Linear(token_dim, output_conv_channels * math.prod(tokenizer_patch))
            self.conv_out = nn.Conv3d(
                output_conv_channels, in_channels, (1, 3, 3), padding=(0, 1, 1), padding_mode="replicate"
            )
        else:
            self.proj_hidden = self.conv_out = None
        self.gradient_checkpointing = False
        self._init_weights()

    # ----------------------------------------------------------------------------------------------------------
    # construction helpers
    # ----------------------------------------------------------------------------------------------------------

    @staticmethod
    def _check_levels_per_block(levels_per_block: list[int] | None, num_blocks: int, num_levels: int) -> list[int]:
        lpb = list(levels_per_block) if levels_per_block is not None else [num_levels] * num_blocks
        if (
            len(lpb) != num_blocks
            or any(not 1 <= n <= num_levels for n in lpb)
            or any(a > b for a, b in zip(lpb, lpb[1:]))
            or lpb[-1] != num_levels
        ):
            raise ValueError(
                f"`levels_per_block` must have {num_blocks} non-decreasing entries in [1, {num_levels}] ending at "
                f"{num_levels} (e.g. {[min(num_levels, 1 + b * num_levels // num_blocks) for b in range(num_blocks)]}),"
                f" got {lpb}."
            )
        return lpb

    def _init_weights(self) -> None:
        """Xavier linears; zero output projection (``F = 0`` at init, DiT-style); fusion starts as pass-through."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        # Latents start as unit-scale random vectors (nearly orthogonal). At std 0.02 they are ~1% of the noise-level
        # embedding added to them, every latent issues the same read query, and the set collapses to one vector
        # after the first block (mean pairwise cosine 1.000 in a trained 0.02-init model): RIN without its latents.
        nn.init.normal_(self.latents, std=1.0)
        if self.token_positions is not None:
            with torch.no_grad():
                self.token_positions.copy_(sincos_position_table(self.token_grid, self.config.token_dim)[None])
        if self.out_modulation is not None:  # scale 1, shift 0 at init
            nn.init.zeros_(self.out_modulation.weight)
            nn.init.zeros_(self.out_modulation.bias)
        if self.in_modulation is not None:  # gain 1 at init
            nn.init.zeros_(self.in_modulation.weight)
            nn.init.zeros_(self.in_modulation.bias)
        if self.tokenizer_conv is not None:  # tokens are the linear tokenizer's alone at init
            nn.init.zeros_(self.tokenizer_conv.weight)
            nn.init.zeros_(self.tokenizer_conv.bias)
        if self.conv_out is not None:  # F is the linear readout alone at init
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)
        if self.layout_text is not None:  # no layout code at init
            nn.init.zeros_(self.layout_text.weight)
            nn.init.zeros_(self.layout_text.bias)
        if self.pooled_text_proj is not None:  # no pooled contribution at init
            nn.init.zeros_(self.pooled_text_proj.weight)
            nn.init.zeros_(self.pooled_text_proj.bias)
        if self.fusion is not None:
            for f in self.fusion:
                f.reset_to_passthrough()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> HPDMTransformer:
        """A model with a named configuration from appendix table 8 (``"hpdm-s"``, ``"hpdm-m"``, ``"hpdm-l"``,
        ``"hpdm-t2v"``) or a CPU-sized one (``"tiny"``, ``"tiny-t2v"``, ``"tiny-t2v-4"``)."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_base(
        cls, base: HPDMTransformer, num_levels: int, levels_per_block: list[int] | None = None, **overrides
    ) -> HPDMTransformer:
        """An ``num_levels``-level model from a 1-level low-resolution base (paper §5.2, table 8).

        Every weight is copied; each level's latents start from the base's level-0 latents; the fusion projections
        start as pass-through. Level 0 then computes what the base computed. ``overrides`` change config values
        that keep the weights' shapes, and ``context_fusion``: a base of any fusion mode can start a shallow
        pyramid (the tokenizer's context-pixel columns start at zero, so new levels first ignore their context,
        as deep fusion's pass-through start does) or a deep / no-fusion one (the columns are dropped; level 0's
        context input is zeros, so they never contributed).
        """
        return expand_base(cls, base, num_levels, levels_per_block, **overrides)

    # ----------------------------------------------------------------------------------------------------------
    # forwards
    # ----------------------------------------------------------------------------------------------------------

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        boxes: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        drop_conditioning: torch.Tensor | None = None,
        level: int | None = None,
        context: list[LevelContext] | None = None,
        context_indices: list[torch.Tensor] | None = None,
        attention_kwargs: dict | None = None,
        return_dict: bool = True,
    ) -> HPDMTransformerOutput | tuple[torch.Tensor]:
        r"""
        Args:
            hidden_states: ``c_in``-scaled noisy patches. Joint: ``(B, L', C, f, h, w)`` for the first ``L'`` levels
                of nested chains. Level: ``(N, C, f, h, w)`` tiles of ``level``.
            timestep: ``c_noise`` per patch, ``(B, L')`` or ``(N,)``.
            boxes: global boxes, ``(B, L', 6)`` or ``(N, 6)``.
            encoder_hidden_states: text embeddings ``(B or N, S, E)``; ``encoder_attention_mask`` ``(B or N, S)``.
            class_labels: ``(B or N,)``.
            drop_conditioning: bool ``(B or N,)``: use the learned null text/class (classifier-free guidance).
            level: level of the tiles (level forward only).
            context: level forward at ``level > 0``: the ``LevelContext`` of every coarser level (deep/shallow
                fusion); see ``compute_context``.
            context_indices: per coarser level, ``(N,)`` index of the cached tile each tile reads; default: the
                nested chain of most-centred containers (``geometry.context_chain``). Pass them whenever the cache
                holds several videos or guidance streams: the default matches boxes only and takes the first.
            attention_kwargs: ``{"scale": s}`` scales the LoRA layers loaded with ``load_lora_adapter`` /
                added with ``add_adapter`` by ``s`` for this call (diffusers' convention); no other key is read.
        """
        if attention_kwargs:  # "scale" was taken out by apply_lora_scale
            raise ValueError(
                f"`attention_kwargs` takes only 'scale' (the LoRA scale), got {sorted(attention_kwargs)}."
            )
        if hidden_states.ndim == 6:
            out = self._forward_joint(
                hidden_states, timestep, boxes, encoder_hidden_states, encoder_attention_mask, class_labels,
                drop_conditioning,
            )  # fmt: skip
        elif hidden_states.ndim == 5:
            out, _ = self._forward_level(
                hidden_states, timestep, boxes, encoder_hidden_states, encoder_attention_mask, class_labels,
                drop_conditioning, level, context, context_indices, record=False,
            )  # fmt: skip
        else:
            raise ValueError(
                "`hidden_states` must be (B, L, C, f, h, w) for the joint forward or (N, C, f, h, w) for one level's"
                f" tiles, got shape {tuple(hidden_states.shape)}."
            )
        return HPDMTransformerOutput(sample=out) if return_dict else (out,)

    @torch.no_grad()
    @apply_lora_scale("attention_kwargs")
    def compute_context(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        boxes: torch.Tensor,
        level: int,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        drop_conditioning: torch.Tensor | None = None,
        context: list[LevelContext] | None = None,
        context_indices: list[torch.Tensor] | None = None,
        attention_kwargs: dict | None = None,
    ) -> LevelContext:
        """The context a finished level leaves for finer ones: one pass over its tiles (same inputs as the level
        forward) that records, per block, the projected input activations the finer levels will read. Blocks that
        no finer level runs are skipped, and the output head is not evaluated. Under shallow fusion the record is
        the tiles' input pixels alone, and no block runs."""
        _, ctx = self._forward_level(
            hidden_states, timestep, boxes, encoder_hidden_states, encoder_attention_mask, class_labels,
            drop_conditioning, level, context, context_indices, record=True,
        )  # fmt: skip
        return ctx

    def block_levels(self) -> dict[int, list[int]]:
        """For each level, the blocks it runs through (adaptive computation)."""
        return {l: [b for b, n in enumerate(self.levels_per_block) if n > l] for l in range(self.config.num_levels)}

    @property
    def level_sizes(self) -> list[tuple[int, int, int]]:
        """Canvas ``(F, H, W)`` of every level; the last one is the model's native video size."""
        return level_sizes(self.config.patch_size, self.config.num_levels, self.config.level_growth)


__all__ = ["HPDMTransformer", "HPDMTransformerOutput", "FUSION_MODES", "AXES"]
