"""Words a prompt loses on the way into the text encoder: those its tokenizer maps to the unknown token, and those
cut off by ``max_sequence_length``. Both are silent in the tokenizer; the pipeline warns, naming them.

A word-level tokenizer (the bundled demo model's, built over its training captions) maps every word outside its
vocabulary to the same ``<unk>`` token, so "a robot planting a tree" reaches that model as "a <unk> <unk> a <unk>".
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def _pieces(tokenizer, text: str) -> list[tuple[int, str]]:
    """``(token id, source text)`` per token of ``text`` (no special tokens)."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [(i, text[a:b]) for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])]
    out = []  # slow tokenizers: word by word
    for word in text.split():
        out += [(i, word) for i in tokenizer(word, add_special_tokens=False, verbose=False)["input_ids"]]
    return out


def unknown_words(tokenizer, text: str) -> list[str]:
    """The distinct pieces of ``text`` that ``tokenizer`` maps to its unknown token, in order of appearance."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return []
    found: list[str] = []
    for token, piece in _pieces(tokenizer, text):
        if token == unk and piece and piece not in found:
            found.append(piece)
    return found


def truncated_text(tokenizer, text: str, max_sequence_length: int) -> str:
    """The part of ``text`` beyond ``max_sequence_length`` tokens (counting the special tokens the tokenizer
    adds), which the encoder never sees; ``""`` when it fits."""
    special = tokenizer.num_special_tokens_to_add() if hasattr(tokenizer, "num_special_tokens_to_add") else 0
    keep = max(0, max_sequence_length - special)
    pieces = _pieces(tokenizer, text)
    return " ".join(piece for _, piece in pieces[keep:]).strip()


def warn_unknown_words(tokenizer, prompt: str | list[str] | None, name: str, max_sequence_length: int) -> list[str]:
    """Log a warning naming the words of ``prompt`` that ``tokenizer`` does not know and the text that
    ``max_sequence_length`` cuts off. Returns the unknown words."""
    if prompt is None:
        return []
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    unknown: list[str] = []
    for text in prompts:
        unknown += [w for w in unknown_words(tokenizer, text) if w not in unknown]
        cut = truncated_text(tokenizer, text, max_sequence_length)
        if cut:
            logger.warning(
                "`%s` is longer than max_sequence_length=%d tokens; the text encoder does not see: %r. Shorten it "
                "or raise max_sequence_length.", name, max_sequence_length, cut,
            )  # fmt: skip
    if unknown:
        logger.warning(
            "`%s` has words the tokenizer does not know (each becomes %s, the same unknown token): %s. The model "
            "cannot follow them; its model card says what it was trained on.",
            name, tokenizer.unk_token, ", ".join(repr(w) for w in unknown),
        )  # fmt: skip
    return unknown
