"""Casing as token types, for ner heads on uncased encoders (task.case_features).

An uncased tokenizer (the embedded MiniLM's) lowercases the text before the model sees it, so "Apple" and
"apple", "US" and "us" reach it alike, although capitalisation is the strongest single cue for names in
English NER. Here each token's original characters give it a case type, fed as the token type id of a
BERT-style encoder, whose token-type embedding grows to one row per case type; every new row starts as row
0 (what single-text inputs use), so the model starts as it was and learns what casing adds.
"""

from __future__ import annotations

import torch
from torch import nn

CASE_TYPES = ("none", "lower", "capitalised", "upper", "mixed")
"""Token type ids: no letters (and special tokens), lowercase, first letter upper, all of two or more
letters upper, anything else (iPhone, McDonald's pieces after the first)."""


def case_type(piece: str) -> int:
    letters = [c for c in piece if c.isalpha()]
    if not letters or not any(c.isupper() or c.islower() for c in letters):
        return 0
    if all(c.islower() for c in letters):
        return 1
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return 3
    if letters[0].isupper() and all(c.islower() for c in letters[1:]):
        return 2
    return 4


def case_type_ids(text: str, offsets: list[tuple[int, int]], sequence_ids: list[int | None]) -> list[int]:
    """The case type of each token of an encoded window (0 for special tokens)."""
    return [case_type(text[start:end]) if sequence is not None else 0
            for (start, end), sequence in zip(offsets, sequence_ids, strict=True)]


def token_type_embedding(net: nn.Module) -> tuple[str, nn.Embedding]:
    """(name, module) of a BERT-style encoder's token-type embedding."""
    for name, module in net.named_modules():
        if name.endswith("embeddings.token_type_embeddings") and isinstance(module, nn.Embedding):
            return name, module
    raise ValueError(f"{type(net).__name__} has no token-type embedding: task.case_features needs a BERT-style "
                     "encoder (e.g. minilm-l6)")


def widen_token_types(net: nn.Module) -> str:
    """Give `net` one token type per case type (new rows copy row 0); returns the embedding's module name.
    Does nothing to an embedding that is already that wide (a saved head)."""
    name, old = token_type_embedding(net)
    if old.num_embeddings != len(CASE_TYPES):
        new = nn.Embedding(len(CASE_TYPES), old.embedding_dim, dtype=old.weight.dtype, device=old.weight.device)
        with torch.no_grad():
            new.weight.copy_(old.weight[:1].expand(len(CASE_TYPES), -1))
        parent, _, attr = name.rpartition(".")
        setattr(net.get_submodule(parent), attr, new)
    net.config.type_vocab_size = len(CASE_TYPES)
    return name
