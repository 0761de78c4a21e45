"""The one conversation type every data source is turned into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Message:
    role: str
    """system | user | assistant | tool"""
    content: str
    train: bool | None = None
    """Whether this message carries loss; None means: assistant messages do, others do not."""

    @property
    def trained(self) -> bool:
        return self.role == "assistant" if self.train is None else self.train


@dataclass
class Conversation:
    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    """Tool (function) schemas offered to the model, passed to the chat template as `tools`."""
    source: str = ""
    """Where the row came from, as `file:line`, for reports."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Task-specific fields carried along (e.g. the reference answer for evaluation)."""

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


class RowError(ValueError):
    """A row that cannot become a conversation; `reason` is a short stable key for the report."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
