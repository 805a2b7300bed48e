"""Frozen text conditioning for training, encoded exactly as ``HierarchicalPatchPipeline.encode_prompt`` does
(``padding="max_length"``, truncation, the tokenizer's attention mask), optionally precomputed once per caption."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class PromptEncoder:
    r"""Encode captions with a frozen text encoder.

    Args:
        tokenizer: the pipeline's tokenizer.
        text_encoder: any ``transformers`` encoder whose output has ``last_hidden_state`` (kept frozen, eval mode).
        max_sequence_length: tokens per caption (the pipeline's ``max_sequence_length``).
    """

    def __init__(self, tokenizer, text_encoder, max_sequence_length: int = 16):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder.eval().requires_grad_(False)
        self.max_sequence_length = max_sequence_length
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def _encode(self, texts: list[str], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the encoder where it lives, return the results on ``device``."""
        encoder_device = next(self.text_encoder.parameters()).device
        ids = self.tokenizer(
            texts, padding="max_length", max_length=self.max_sequence_length, truncation=True, return_tensors="pt"
        )
        mask = ids.attention_mask.to(encoder_device)
        embeds = self.text_encoder(ids.input_ids.to(encoder_device), attention_mask=mask).last_hidden_state
        return embeds.float().to(device), mask.bool().to(device)

    def precompute(self, texts: Iterable[str], batch_size: int = 64) -> int:
        """Encode every distinct caption once and keep the results on the CPU; returns how many were encoded. The
        encoder can then leave the accelerator (it is needed again only for captions outside the cache)."""
        todo = sorted(set(texts) - set(self.cache))
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            embeds, mask = self._encode(chunk, "cpu")
            for text, e, m in zip(chunk, embeds, mask):
                self.cache[text] = (e, m)
        return len(todo)

    def __call__(self, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S, E)`` float32 embeddings and ``(B, S)`` bool mask, from the cache when every caption is in it."""
        if texts and all(t in self.cache for t in texts):
            embeds = torch.stack([self.cache[t][0] for t in texts]).to(device)
            mask = torch.stack([self.cache[t][1] for t in texts]).to(device)
            return embeds, mask
        return self._encode(list(texts), device)
