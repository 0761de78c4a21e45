"""Draft tokens copied from the prompt (prompt lookup decoding) for the decoder to verify in one pass.

Task answers often copy their input: inline NER rewrites the sentence with brackets, QA answers with a span
of the context. When a reply's last tokens also occur in its prompt, the tokens that followed them there are
a good guess of what comes next. The decoder (model/decode.py) feeds a greedy row's guesses together with its
last token, keeps the longest run the model itself would have chosen, plus the model's own next token, and
masks the columns of the rest: the same tokens as one-at-a-time greedy decoding, in fewer forward passes.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_NGRAM = 3
"""Longest run of a reply's last tokens looked up in its prompt (longer matches are tried first)."""


class PromptLookup:
    """Where each n-gram (n = 1..MAX_NGRAM) of one prompt last occurs, to propose what followed it."""

    def __init__(self, prompt: Sequence[int]):
        self.prompt = list(prompt)
        self._ends: dict[tuple[int, ...], int] = {}
        for n in range(1, MAX_NGRAM + 1):
            for end in range(n, len(self.prompt)):  # an n-gram ending on the prompt's last token has no follower
                self._ends[tuple(self.prompt[end - n:end])] = end

    def propose(self, generated: Sequence[int], k: int) -> list[int]:
        """Up to `k` prompt tokens after the latest occurrence of the longest tail of `generated` found in the
        prompt; [] when none of its last tokens occur there (or `k` < 1)."""
        if k < 1 or not generated:
            return []
        for n in range(min(MAX_NGRAM, len(generated)), 0, -1):
            end = self._ends.get(tuple(generated[-n:]))
            if end is not None:
                return self.prompt[end:end + k]
        return []
