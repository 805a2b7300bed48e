"""``encode_prompt``: text embeddings for ``HierarchicalPatchPipeline``, usable on their own (diffusers convention:
the returned names are ``__call__``'s arguments, so that a pipeline without a text encoder takes them back)."""

from __future__ import annotations

import torch


class PromptEncodingMixin:
    """Needs ``self.tokenizer``, ``self.text_encoder`` and diffusers' ``_execution_device``."""

    def encode_prompt(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_videos_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        max_sequence_length: int = 16,
        device: torch.device | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        r"""Encode the prompts (usable on its own, e.g. on a pipeline that holds only the text encoder).

        Args:
            prompt: the prompt(s); or pass ``prompt_embeds`` ``(B, S, E)`` (and optionally ``prompt_attention_mask``).
            negative_prompt: used only when ``do_classifier_free_guidance``; ``None`` leaves the negatives ``None``
                and the model's learned null conditioning is the unconditional branch.
            num_videos_per_prompt: every output is repeated that many times (``repeat_interleave`` on dim 0).

        Returns:
            ``(prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask)``: the
            embeddings ``(B * num_videos_per_prompt, S, E)`` and bool masks ``(B * num_videos_per_prompt, S)``,
            named as ``__call__``'s arguments they can be passed back to.
        """
        if prompt is None and prompt_embeds is None:
            raise ValueError("Pass `prompt` (text) or `prompt_embeds` to `encode_prompt`.")
        device = device or self._execution_device

        if prompt_embeds is None:
            prompt_embeds, prompt_attention_mask = self._encode_text(prompt, max_sequence_length, device)
        if prompt_attention_mask is None:
            prompt_attention_mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.bool, device=prompt_embeds.device)
        if do_classifier_free_guidance and negative_prompt_embeds is None and negative_prompt is not None:
            if isinstance(negative_prompt, str):
                negative_prompt = [negative_prompt] * prompt_embeds.shape[0]
            negative_prompt_embeds, negative_prompt_attention_mask = self._encode_text(
                negative_prompt, max_sequence_length, device
            )
        if negative_prompt_embeds is not None and negative_prompt_attention_mask is None:
            negative_prompt_attention_mask = torch.ones(
                negative_prompt_embeds.shape[:2], dtype=torch.bool, device=negative_prompt_embeds.device
            )
        rep = lambda t: None if t is None else t.repeat_interleave(num_videos_per_prompt, dim=0)  # noqa: E731
        prompt_embeds, prompt_attention_mask = rep(prompt_embeds), rep(prompt_attention_mask)
        negative_prompt_embeds = rep(negative_prompt_embeds)
        negative_prompt_attention_mask = rep(negative_prompt_attention_mask)
        return prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask

    def _encode_text(
        self, text: str | list[str], max_sequence_length: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embeddings (B, S, E), bool mask (B, S))`` of the text encoder, padded to ``max_sequence_length``."""
        text = [text] if isinstance(text, str) else list(text)
        ids = self.tokenizer(
            text, padding="max_length", max_length=max_sequence_length, truncation=True, return_tensors="pt"
        )
        mask = ids.attention_mask.to(device)
        embeds = self.text_encoder(ids.input_ids.to(device), attention_mask=mask).last_hidden_state
        return embeds, mask.bool()
