"""Span-constrained decoding for extractive QA: the reply can only be a span copied from the context.

The grammar runs on the context's bytes (`byte_grammar`): the first byte is any context byte where a span
may start (not whitespace, no word cut), each next byte is the context's next byte, and the reply may end
after a byte that is not whitespace where no word is cut. A reply under it is a substring of the context by
construction, so `not_span_rate` is 0; which span, the model decides.
"""

from __future__ import annotations

from collections.abc import Sequence

from tasktune.evaluate.byte_grammar import SPACE, ByteGrammarConstraint
from tasktune.evaluate.copy_inline import word_edges

START = -1
"""The state before the first byte; any other state is the number of context bytes read."""


class CopySpanConstraint(ByteGrammarConstraint):
    """A non-empty span of `text` that starts and ends on word edges, then a stop."""

    def __init__(self, tokenizer, text: str, stop_ids: Sequence[int]):
        super().__init__(tokenizer, frozenset({START}), stop_ids)
        self.text = text.encode()
        self.edge = word_edges(text)
        self._first: dict[int, list[int]] = {}
        for j, byte in enumerate(self.text):
            if self.edge[j] and byte not in SPACE:
                self._first.setdefault(byte, []).append(j + 1)

    def _next(self, state: int) -> dict[int, list[int]]:
        if state == START:
            return self._first
        return {self.text[state]: [state + 1]} if state < len(self.text) else {}

    def _continuation(self, states: frozenset) -> bytes | None:
        """Inside the span: the rest of the context (where the span ends, the model decides)."""
        if len(states) != 1 or START in states:
            return None
        return self.text[next(iter(states)):]

    def complete(self, states: frozenset) -> bool:
        return any(j != START and self.edge[j] and self.text[j - 1] not in SPACE for j in states)
