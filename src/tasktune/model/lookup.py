"""Draft tokens for the decoder to verify in one pass: copied from the prompt (prompt lookup decoding), or
the rest of the text a copy constraint copies (evaluate/byte_grammar.py's `draft`), and which rows of a
decode step guess how many (`row_drafts`).

Task answers often copy their input: inline NER rewrites the sentence with brackets, QA answers with a span
of the context. When a reply's last tokens also occur in its prompt, the tokens that followed them there are
a good guess of what comes next. The decoder (model/decode.py) feeds a greedy row's guesses together with its
last token, keeps the longest run the model itself would have chosen, plus the model's own next token, and
masks the columns of the rest: the same tokens as one-at-a-time greedy decoding, in fewer forward passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasktune.model.request import Request

DRAFT_POSITIONS = 64
"""Token positions (rows x (1 + guesses)) a pass with guesses may hold. Up to about this many a CPU forward pass
costs little more than one token per row (bf16 matmuls here: 4x the rows from 16 to 64 take 1.9x the time,
from 64 to 256 3.4x), so guesses fill the batch as it drains instead of widening a full one (measured on
`bench/eval_speed.py`: 4 guesses on a 64-row batch made the demo evaluation slower, 8.0 s against 6.7 s)."""

COPY_DRAFT_POSITIONS = 96
"""Token positions a pass of copy-constrained rows may hold in the tail of an evaluation: as the batch drains,
its rows guess more than `copy_drafts` tokens each (up to 32), since a pass of a few rows costs about the
same whatever its width and most of its guesses hold."""

MAX_NGRAM = 3
"""Longest run of a reply's last tokens looked up in its prompt (longer matches are tried first)."""
MIN_NGRAM = 2
"""Shortest run that counts as a match: a single common token ("the", ",") occurs in most prompts and would
make guesses that are mostly wrong and cost a wider forward pass."""


class PromptLookup:
    """Where each n-gram (n = MIN_NGRAM..MAX_NGRAM) of one prompt last occurs, to propose what followed it."""

    def __init__(self, prompt: Sequence[int]):
        self.prompt = list(prompt)
        self._ends: dict[tuple[int, ...], int] = {}
        for n in range(MIN_NGRAM, MAX_NGRAM + 1):
            for end in range(n, len(self.prompt)):  # an n-gram ending on the prompt's last token has no follower
                self._ends[tuple(self.prompt[end - n:end])] = end

    def propose(self, generated: Sequence[int], k: int) -> list[int]:
        """Up to `k` prompt tokens after the latest occurrence of the longest tail of `generated` found in the
        prompt; [] when no run of at least MIN_NGRAM of its last tokens occurs there (or `k` < 1)."""
        if k < 1:
            return []
        for n in range(min(MAX_NGRAM, len(generated)), MIN_NGRAM - 1, -1):
            end = self._ends.get(tuple(generated[-n:]))
            if end is not None:
                return self.prompt[end:end + k]
        return []


def row_drafts(rows: Sequence[Request], draft_tokens: int, copy_drafts: int) -> list[list[int]] | None:
    """Per row of a decode step, the tokens guessed after its last one (greedy rows only, within budget), or
    None (one token per row). A row whose constraint copies a text (`draft`: inline NER, QA spans) guesses up
    to `copy_drafts` tokens of it (more as the batch drains, COPY_DRAFT_POSITIONS); the others guess from their
    prompt (`draft_tokens`), and those guesses count only where at least half the rows have one (every row
    attends over the widest) and the pass stays within DRAFT_POSITIONS."""
    if not draft_tokens and not copy_drafts:
        return None
    lookup = min(draft_tokens, DRAFT_POSITIONS // max(1, len(rows)) - 1)
    live = sum(not r.done for r in rows)
    copy = max(copy_drafts, min(32, COPY_DRAFT_POSITIONS // max(1, live) - 1)) if copy_drafts else 0
    copied: list[list[int]] = []
    looked: list[list[int]] = []
    for r in rows:
        room = r.max_new_tokens - len(r.generated) - 1
        copies = copy > 0 and callable(getattr(r.constraint, "draft", None))
        greedy = r.temperature == 0 and room > 0 and not r.done
        copied.append(r.constraint.draft(tuple(r.generated), min(copy, room)) if greedy and copies else [])
        if greedy and not copies and lookup > 0:
            if r._lookup is None:
                r._lookup = PromptLookup(r.prompt_ids)
            looked.append(r._lookup.propose(r.generated, min(lookup, room)))
        else:
            looked.append([])
    if 2 * sum(1 for d in looked if d) < live:
        looked = [[] for _ in rows]
    drafts = [c or guess for c, guess in zip(copied, looked, strict=True)]
    return drafts if any(drafts) else None
