"""Pack encoded examples into sequences of at most cutoff_len tokens, positions restarting per example.

Best-fit decreasing: longest examples first, each into the fullest pack it still fits (ties: the oldest
pack). Deterministic for a given input order. With position_ids restarting at 0 and no attention mask,
transformers builds a block-diagonal causal mask, so packed examples never attend to each other.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import Any


def with_positions(example: dict[str, Any]) -> dict[str, Any]:
    """An unpacked training unit: input_ids, labels and position_ids 0..n-1."""
    n = len(example["input_ids"])
    return {
        "input_ids": list(example["input_ids"]),
        "labels": list(example["labels"]),
        "position_ids": list(range(n)),
    }


def pack_groups(lengths: list[int], cutoff_len: int) -> list[list[int]]:
    """Example indices per pack (best-fit decreasing)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    packs: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, pack index), sorted
    for i in order:
        n = lengths[i]
        if n > cutoff_len:
            raise ValueError(f"example {i} has {n} tokens > cutoff_len={cutoff_len}")
        k = bisect_left(room, (n, -1))
        if k < len(room):
            free, p = room.pop(k)
            packs[p].append(i)
        else:
            free, p = cutoff_len, len(packs)
            packs.append([i])
        if free - n > 0:
            insort(room, (free - n, p))
    return packs


def pack_examples(examples: list[dict[str, Any]], cutoff_len: int) -> list[dict[str, Any]]:
    """Concatenate examples into packs of at most cutoff_len tokens, each with restarting position_ids."""
    packs = []
    for group in pack_groups([len(e["input_ids"]) for e in examples], cutoff_len):
        unit: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
        for i in group:
            for key, values in with_positions(examples[i]).items():
                unit[key] += values
        packs.append(unit)
    return packs
