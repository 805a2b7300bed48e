"""How ``HPDMTransformer`` reads its conditioning: the noise level, the patch's box, class labels and text become a
noise-level embedding and the conditioning tokens every latent attends to (RIN's latent-token conditioning), with
the learned null text / class of classifier-free guidance.

A mixin: the layers live on the model (their state-dict keys are the model's), these methods only use them.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from .positions import layout_features


class ConditioningMixin:
    """Conditioning of ``HPDMTransformer`` (needs its ``config``, ``token_grid`` and embedding layers)."""

    def _conditioning(
        self,
        timestep: torch.Tensor,
        boxes: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        encoder_attention_mask: torch.Tensor | None,
        class_labels: torch.Tensor | None,
        drop_conditioning: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Noise-level embedding ``(N, D)`` and conditioning tokens ``(N, S, D)`` with their key bias.

        The noise level enters twice: added to the initial latents and as a conditioning token (with the box), so
        that every latent knows it from the first read, as in RIN's latent-token conditioning.
        """
        n = timestep.shape[0]
        freq = get_timestep_embedding(timestep.flatten().float(), self.config.timestep_freq_dim, True, 0, 1000.0)
        t_emb = self.time_embedding(freq.to(dtype))  # (N, D)
        drop = drop_conditioning if drop_conditioning is not None else torch.zeros(n, dtype=torch.bool)
        drop = drop.to(timestep.device).bool()
        if self.pooled_text_proj is not None and encoder_hidden_states is not None:
            t_emb = t_emb + self._pooled_text(encoder_hidden_states, encoder_attention_mask, drop, dtype)
        tokens = [(t_emb + self.box_embedding(boxes.to(dtype)))[:, None]]
        keep = [torch.ones(n, 1, dtype=torch.bool, device=timestep.device)]
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("This model is class-conditional: pass `class_labels` (or drop them for CFG).")
            labels = torch.where(drop, self.config.num_classes, class_labels.to(timestep.device).long())
            tokens.append(self.class_embedding(labels)[:, None])
            keep.append(keep[0])
        elif class_labels is not None:
            raise ValueError("`class_labels` were given but the model has no class conditioning (num_classes=None).")
        if self.text_proj is not None:
            if encoder_hidden_states is None:
                text = self.null_text.expand(n, 1, -1).to(dtype)
                mask = keep[0]
            else:
                text = self.text_proj(encoder_hidden_states.to(dtype))  # (N, S_txt, D)
                mask = (
                    encoder_attention_mask.to(timestep.device).bool()
                    if encoder_attention_mask is not None
                    else torch.ones(text.shape[:2], dtype=torch.bool, device=timestep.device)
                )
                null = torch.zeros_like(text)
                null[:, 0] = self.null_text.to(dtype)
                null_mask = torch.zeros_like(mask)
                null_mask[:, 0] = True
                text = torch.where(drop[:, None, None], null, text)
                mask = torch.where(drop[:, None], null_mask, mask)
            tokens.append(text)
            keep.append(mask)
        elif encoder_hidden_states is not None:
            raise ValueError("`encoder_hidden_states` were given but the model has no text conditioning.")
        cond = torch.cat(tokens, dim=1)
        keep_all = torch.cat(keep, dim=1)
        bias = None
        # Whether keys can be hidden is decided by which inputs were given, never by their values: a data-dependent
        # branch would break `torch.compile(fullgraph=True)`. Where nothing is hidden the bias is 0 (exact).
        maskable = self.text_proj is not None and encoder_hidden_states is not None
        if maskable and (encoder_attention_mask is not None or drop_conditioning is not None):
            m = self.config.num_latents
            keys = torch.cat([torch.ones(n, m, dtype=torch.bool, device=keep_all.device), keep_all], dim=1)
            bias = torch.zeros(keys.shape, dtype=dtype, device=keys.device).masked_fill(~keys, float("-inf"))
            bias = bias[:, None, :]  # (N, 1, M + S)
        return t_emb, cond, bias

    def _text_layout(self, boxes, ehs, mask, drop, dtype) -> torch.Tensor | None:
        """The ``text_layout`` code ``(N, T, D_tok)``, or ``None`` when the option is off or there is no text."""
        if self.layout_text is None or ehs is None:
            return None
        text = self._project_pooled(self.layout_text, ehs, mask, drop, dtype)  # (N, Dt)
        position = self.layout_position(layout_features(boxes, self.token_grid).to(dtype))  # (N, T, Dt)
        return position * text[:, None]

    def _pooled_text(self, ehs: torch.Tensor, mask: torch.Tensor | None, drop: torch.Tensor, dtype) -> torch.Tensor:
        """``pooled_text_proj`` of the mean of the unmasked text embeddings ``(N, D)``; zero where dropped (CFG)."""
        return self._project_pooled(self.pooled_text_proj, ehs, mask, drop, dtype)

    @staticmethod
    def _project_pooled(proj: nn.Linear, ehs, mask: torch.Tensor | None, drop: torch.Tensor | None, dtype):
        """``proj`` of the masked mean of the text embeddings ``(N, D)``; zero for dropped rows (CFG)."""
        keep = torch.ones(ehs.shape[0], dtype=torch.bool, device=ehs.device)
        if drop is not None:
            keep = ~drop.to(ehs.device).bool()
        weights = torch.ones(ehs.shape[:2], device=ehs.device) if mask is None else mask.to(ehs.device).float()
        weights = weights * keep[:, None]
        pooled = (ehs.float() * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1.0)
        return proj(pooled.to(dtype)) * keep.to(dtype)[:, None]
