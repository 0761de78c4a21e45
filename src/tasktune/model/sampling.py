"""How the decoding core (model/decode.py) turns a row's scores into its next token: greedy or sampled."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tasktune.model.request import Request


def pick_tokens(logits: torch.Tensor, rows: Sequence[Request], ids: torch.Tensor | None) -> torch.Tensor:
    """Greedy or sampled column per row of `logits`, as token ids (`ids[column]` when given)."""
    columns = logits.argmax(dim=-1)
    for k, r in enumerate(rows):
        if r.temperature > 0 and not r.done:
            columns[k] = sample_token(logits[k], r.temperature, r.top_p, r._generator)
    return columns if ids is None else ids[columns]


def only_stops(allowed: list[int] | torch.Tensor, stop_ids: set[int]) -> bool:
    """Whether a row's allowed tokens are nothing but end-of-turn tokens (or nothing at all)."""
    if isinstance(allowed, list):
        return set(allowed) <= stop_ids
    if int(allowed.sum()) > len(stop_ids):
        return False
    return set(allowed.nonzero().flatten().tolist()) <= stop_ids


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """A token id drawn from softmax(logits / temperature), within the top_p nucleus."""
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        cut = sorted_probs.cumsum(0) - sorted_probs > top_p
        sorted_probs[cut] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))
