"""One job's progress inside a batched `generate`: end of turn, stop strings, its own token limit,
cancellation, and the text deltas it streams."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import StoppingCriteria

if TYPE_CHECKING:
    from tasktune.serve.engine import Job


@dataclass
class Result:
    """A finished generation; finish_reason: stop (end of turn or stop string) | length | cancelled."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


Event = str | Result | BaseException
"""What a job sends its consumer, in order: text deltas (streaming only), then one Result or one exception."""


class Row:
    """One job's progress inside a batch: its ids, its decoded text, what was already streamed."""

    def __init__(self, job: Job, stop_ids: set[int], decode: Callable[[list[int]], str]):
        self.job, self.stop_ids, self.decode = job, stop_ids, decode
        self.ids: list[int] = []
        self.sent = 0
        self.done = False
        self.limit = job.params.max_new_tokens or 0
        self.text = ""

    def feed(self, token: int) -> None:
        if self.job.cancel.is_set():
            return self.finish("cancelled")
        if token in self.stop_ids:
            return self.finish("stop")
        self.ids.append(token)
        if self.job.params.stop or self.job.stream:
            self.text = self.decode(self.ids)
            cut = _first_stop(self.text, self.job.params.stop)
            if cut is not None:
                self.text = self.text[:cut]
                return self.finish("stop")
        if len(self.ids) >= self.limit:
            return self.finish("length")
        if self.job.stream:
            visible = len(self.text) - _held_back(self.text, self.job.params.stop)
            if visible > self.sent:
                self.job.emit(self.text[self.sent:visible])
                self.sent = visible

    def finish(self, reason: str) -> None:
        if self.done:
            return
        self.done = True
        if not (self.job.params.stop or self.job.stream):
            self.text = self.decode(self.ids)
        if self.job.stream and len(self.text) > self.sent and reason != "cancelled":
            self.job.emit(self.text[self.sent:])
            self.sent = len(self.text)
        self.job.end(Result(self.text, len(self.job.prompt_ids), len(self.ids), reason))


def _first_stop(text: str, stops: list[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: list[str]) -> int:
    """Characters at the end not to stream yet: an incomplete UTF-8 character or a possible stop-string start."""
    if text.endswith("\ufffd"):
        return len(text) - len(text.rstrip("\ufffd"))
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:size]):
                hold = size
                break
    return hold


class RowStopper(StoppingCriteria):
    """Feeds each new token to its row; a row is done at end of turn, stop string, its limit or cancel."""

    def __init__(self, rows: list[Row]):
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        for row, token in zip(self.rows, input_ids[:, -1].tolist(), strict=True):
            if not row.done:
                row.feed(token)
        return torch.tensor([row.done for row in self.rows], device=input_ids.device)
