"""Incremental detokenisation for streamed replies (CLI chat, the API)."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextStream:
    """Incremental detokenisation: `push(ids)` returns the text the new tokens add. Only the tokens since the
    last complete character are decoded again (a few per call, not the whole reply), as in vLLM's and TGI's
    detokenisers; an unfinished multi-byte character is held back until it completes."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode = decode
        self.text = ""
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, ids: Sequence[int]) -> str:
        settled = self.decode(list(ids[self._prefix_offset:self._read_offset]))
        current = self.decode(list(ids[self._prefix_offset:]))
        if len(current) <= len(settled) or current.endswith("\ufffd"):
            return ""
        piece = current[len(settled):]
        self.text += piece
        self._prefix_offset, self._read_offset = self._read_offset, len(ids)
        return piece
