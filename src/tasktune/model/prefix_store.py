"""Prompt caches the decoder can start from: the keys and values of token sequences it already ran, so that a
prompt starting with one prefills only the rest.

Two kinds of entries:
- pinned: a fixed prefix that every prompt of a task or of a chat template starts with (the decoder's
  `prefix_ids`), computed once per adapter and never evicted;
- finished rows, kept by a chat or API server (a byte budget > 0): the next turn of a conversation starts with
  the previous turn's prompt and reply, so only the new message is prefilled (SGLang's and vLLM's prefix
  caching, on a small scale: a list scanned per prompt, not a radix tree).

`match` returns the entry sharing the longest token prefix with a prompt and how many of its columns to use: a
reply re-tokenised by the chat template may differ from the generated ids from some token on, and the columns
before it still hold. Finished rows are evicted least recently used past the budget; an entry that a newer one
extends (the same adapter, its tokens a prefix of the newer one's) is dropped when the newer one is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

MIN_MATCH = 8
"""Fewest shared tokens for which a finished row's entry is used (a shorter match saves less than it costs)."""


@dataclass(eq=False)  # compared by identity: entries hold tensors
class CachedPrefix:
    """The keys and values of `tokens` (run by `adapter`), one [1, kv_heads, len(tokens), head_dim] per layer."""

    adapter: str | None
    tokens: tuple[int, ...]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    pinned: bool = False

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


def shared_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixStore:
    """Cached prefixes of one decoder: pinned ones, plus finished rows within `budget` bytes (0: none kept)."""

    def __init__(self, budget: int = 0):
        self.budget = max(0, budget)
        self.entries: list[CachedPrefix] = []  # least recently used first
        self.hits = 0  # prompts that started from a finished row's entry
        self.reused = 0  # tokens those prompts did not prefill

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries if not e.pinned)

    def pinned(self, adapter: str | None) -> CachedPrefix | None:
        return next((e for e in self.entries if e.pinned and e.adapter == adapter), None)

    def add(self, entry: CachedPrefix) -> None:
        """Keep `entry`; a finished row's only within the budget (evicting the least recently used first)."""
        if not entry.pinned:
            if self.budget == 0 or entry.nbytes > self.budget:
                return
            self.entries = [e for e in self.entries if e.pinned or e.adapter != entry.adapter
                            or shared_length(e.tokens, entry.tokens) < len(e.tokens)]
            while self.nbytes + entry.nbytes > self.budget:
                self.entries.remove(next(e for e in self.entries if not e.pinned))
        self.entries.append(entry)

    def match(self, adapter: str | None, prompt: Sequence[int]) -> tuple[CachedPrefix | None, int]:
        """The entry of `adapter` sharing the most leading tokens with `prompt` and how many it shares (always
        leaving the prompt's last token to be run, whose output picks the first new token); (None, 0) when
        none shares enough (a pinned entry counts whole or not at all)."""
        best, length = None, 0
        for entry in self.entries:
            if entry.adapter != adapter:
                continue
            n = min(shared_length(entry.tokens, prompt), len(prompt) - 1)
            if entry.pinned and n < len(entry.tokens) or not entry.pinned and n < MIN_MATCH:
                continue
            if n > length:
                best, length = entry, n
        if best is not None and not best.pinned:
            self.entries.remove(best)  # most recently used last
            self.entries.append(best)
            self.hits += 1
            self.reused += length
        return best, length


def prefix_tensors(entries: list[tuple[CachedPrefix | None, int]], start: int
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, the rows' cached prefixes right-aligned in `start` columns (zeros before a shorter one): views
    of one entry where every row starts from the same one, else new tensors. `start` 0: none."""
    if start == 0:
        return [], []
    first, length = entries[0]
    if all(entry is first and n == length for entry, n in entries):
        rows = len(entries)
        return ([k[:, :, :start].expand(rows, -1, -1, -1) for k in first.keys],
                [v[:, :, :start].expand(rows, -1, -1, -1) for v in first.values])
    layers = range(len(first.keys))
    return ([_right_aligned([(e.keys[i], n) for e, n in entries], start) for i in layers],
            [_right_aligned([(e.values[i], n) for e, n in entries], start) for i in layers])


def _right_aligned(parts: list[tuple[torch.Tensor, int]], width: int) -> torch.Tensor:
    """[rows, kv_heads, width, head_dim]: row i holds the first n columns of part i ([1, kv_heads, >= n,
    head_dim]) in its last n columns, zeros before."""
    sample = parts[0][0]
    out = sample.new_zeros((len(parts), sample.shape[1], width, sample.shape[3]))
    for i, (tensor, n) in enumerate(parts):
        out[i, :, width - n:] = tensor[0, :, :n]
    return out


def common_prefix(prompts: Sequence[Sequence[int]], keep_last: int = 1) -> list[int]:
    """The longest token prefix all prompts share, leaving at least `keep_last` tokens of each."""
    if not prompts:
        return []
    first = prompts[0]
    n = min(len(p) for p in prompts) - keep_last
    length = 0
    while length < n and all(p[length] == first[length] for p in prompts):
        length += 1
    return list(first[:length])
