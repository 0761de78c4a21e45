"""One job's progress inside the decoder: stop strings, cancellation, and the text deltas it streams."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasktune.model.text_stream import TextStream

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
    """One job's progress inside the decoder: its ids, its decoded text, what was already streamed.

    The streamed text grows incrementally (model/text_stream.py); the final text is decoded whole.
    """

    def __init__(self, job: Job, decode: Callable[[list[int]], str]):
        self.job, self.decode = job, decode
        self.ids: list[int] = []
        self.sent = 0
        self.done = False
        self.text = ""
        self.cut = False
        self._stream = TextStream(decode)

    def feed(self, token: int) -> str | None:
        """Take the next token; returns a finish reason when the job must end now (cancel, stop string)."""
        if self.job.cancel.is_set():
            return "cancelled"
        self.ids.append(token)
        stops = self.job.params.stop
        if not (stops or self.job.stream):
            return None
        before = len(self.text)
        self.text += self._stream.push(self.ids)
        if stops:
            cut = _first_stop(self.text, stops, max(0, before - max(len(s) for s in stops)))
            if cut is not None:
                self.text, self.cut = self.text[:cut], True
                return "stop"
        if self.job.stream:
            visible = len(self.text) - _held_back(self.text, stops)
            if visible > self.sent:
                self.job.emit(self.text[self.sent:visible])
                self.sent = visible
        return None

    def finish(self, reason: str) -> None:
        if self.done:
            return
        self.done = True
        if not self.cut:
            self.text = self.decode(self.ids)
        if self.job.stream and len(self.text) > self.sent and reason != "cancelled":
            self.job.emit(self.text[self.sent:])
            self.sent = len(self.text)
        self.job.end(Result(self.text, len(self.job.prompt_ids), len(self.ids), reason))


def _first_stop(text: str, stops: list[str], start: int = 0) -> int | None:
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
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
