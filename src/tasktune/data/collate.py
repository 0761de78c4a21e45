"""Right-pad training units into tensors; no attention mask (position_ids separate the examples)."""

from __future__ import annotations

from typing import Any

import torch

from tasktune.data.tokenize import IGNORE_INDEX


def collate(units: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """input_ids (pad id), labels (IGNORE_INDEX) and position_ids, right-padded to the longest unit.

    The padding gets positions 0, 1, 2, ... so it forms its own segment: with attention_mask None,
    transformers (masking_utils.find_packed_sequence_indices) builds a block-diagonal causal mask from
    position_ids, and no real token attends to padding.
    """
    width = max(len(u["input_ids"]) for u in units)
    input_ids = torch.full((len(units), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(units), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(units), width), dtype=torch.long)
    for row, unit in enumerate(units):
        n = len(unit["input_ids"])
        positions = unit.get("position_ids") or range(n)
        input_ids[row, :n] = torch.tensor(unit["input_ids"], dtype=torch.long)
        labels[row, :n] = torch.tensor(unit["labels"], dtype=torch.long)
        position_ids[row, :n] = torch.tensor(list(positions), dtype=torch.long)
        position_ids[row, n:] = torch.arange(width - n)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def count_target_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Label positions that carry loss after the causal shift (labels[:, 1:])."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
