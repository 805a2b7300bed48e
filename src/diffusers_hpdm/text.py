"""A small text encoder and tokenizer built offline (no hub downloads), for tests, the demo model and benchmarks.

Production models use a T5 encoder from the hub; the pipeline accepts any ``transformers`` encoder whose output has
``last_hidden_state``. Here we build a T5 encoder of the same class with a word-level tokenizer over a given
vocabulary, so that the saved pipeline loads with ``from_pretrained`` exactly like a production one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]


def build_word_tokenizer(texts: Iterable[str], model_max_length: int = 16) -> PreTrainedTokenizerFast:
    """A lower-cased word-level tokenizer whose vocabulary is every word of ``texts`` (T5 special tokens first)."""
    words = sorted({w for t in texts for w in re.findall(r"[a-z0-9]+", t.lower())})
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        padding_side="right",
    )


def build_tiny_text_encoder(
    tokenizer: PreTrainedTokenizerFast, d_model: int = 64, num_layers: int = 2, seed: int = 0
) -> T5EncoderModel:
    """A randomly initialised (seeded) T5 encoder sized for CPUs; kept frozen, like T5 in the paper."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=max(8, d_model // 4),
        d_ff=4 * d_model,
        num_layers=num_layers,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = T5EncoderModel(config)
    return encoder.eval().requires_grad_(False)
