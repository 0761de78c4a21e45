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

    def check(self) -> None:
        """Raise RowError unless this is a trainable conversation.

        Rules: roles from ROLES with string content; at most one system message, first; then a user turn;
        user -> assistant, assistant -> user | tool (a function call's result), tool -> tool | assistant;
        the last turn is the assistant's; user and assistant turns are not blank.
        """
        if not self.messages:
            raise RowError("bad_turn_order", "no messages")
        for i, m in enumerate(self.messages):
            if m.role not in ROLES:
                raise RowError("unknown_role", f"message {i} has role {m.role!r}; expected one of {ROLES}")
            if not isinstance(m.content, str):
                raise RowError("wrong_type", f"message {i} content is {type(m.content).__name__}, not text")
            if m.role == "user" and not m.content.strip():
                raise RowError("empty_prompt", f"message {i} (user) is blank")
            if m.role == "assistant" and not m.content.strip():
                raise RowError("empty_response", f"message {i} (assistant) is blank")
        previous = "system" if self.messages[0].role == "system" else "start"
        start = 1 if previous == "system" else 0
        for i, m in enumerate(self.messages[start:], start):
            if m.role not in _NEXT_ROLES[previous]:
                raise RowError("bad_turn_order", f"message {i} is {m.role} after {previous}")
            previous = m.role
        if previous != "assistant":
            raise RowError(
                "bad_turn_order", f"the conversation ends on a {previous} turn, not the assistant's"
            )


_NEXT_ROLES = {
    "start": ("user",),
    "system": ("user",),
    "user": ("assistant",),
    "assistant": ("user", "tool"),
    "tool": ("tool", "assistant"),
}


class RowError(ValueError):
    """A row that cannot become a conversation; `reason` is a short stable key for the report."""

    def __init__(self, reason: str, detail: str = "", source: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.source = source
        """`file:line` of the row when the raiser knows it."""
