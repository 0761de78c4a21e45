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
