"""One generation request of the decoding core (model/decode.py) and the constraint protocol it takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from tasktune.model.lookup import PromptLookup

BASE_ADAPTER = "__base__"
"""`Request.adapter` value for the base model under a peft model (peft's own name for it)."""


class RowConstraint(Protocol):
    """Decoding constraint of one row (evaluate/constrain.py): the tokens allowed next, as a sorted list of
    ids (never empty) or a boolean mask over the vocabulary."""

    def row_allowed(self, generated: tuple[int, ...], vocab: int) -> list[int] | torch.Tensor: ...


@dataclass(eq=False)
class Request:
    """One generation and its progress. `on_token(request, token)` returns a finish reason to stop now."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    constraint: RowConstraint | None = None
    adapter: str | None = None
    """peft adapter name for this row; None: the model as it is set; BASE_ADAPTER: the base model."""
    on_token: Callable[[Request, int], str | None] | None = None
    generated: list[int] = field(default_factory=list)
    """New tokens, without the stop token."""
    finish_reason: str | None = None
    """stop (end-of-turn token or complete constrained output) | length | what on_token returned."""
    stop_token_seen: bool = False
    _generator: torch.Generator | None = None
    _allowed: list[int] | torch.Tensor | None = None
    _lookup: PromptLookup | None = None
    _reported: bool = False  # returned by a decoder step as finished

    @property
    def done(self) -> bool:
        return self.finish_reason is not None
