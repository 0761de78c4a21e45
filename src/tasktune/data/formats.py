"""Row -> Conversation, one plain function per dataset format (alpaca, sharegpt, openai).

Each raises RowError with a short reason: missing_column, wrong_type, empty_prompt, empty_response,
unknown_role, bad_turn_order (see `Conversation.check` for the turn rules).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tasktune.data.messages import Conversation, Message, RowError
from tasktune.data.registry import DatasetSpec

Format = Callable[[dict[str, Any], DatasetSpec], Conversation]


def _value(row: dict[str, Any], column: str | None, required: bool = True) -> Any:
    """The cell, or None for an absent/null optional one; RowError("missing_column") for a required one."""
    value = row.get(column) if column else None
    if value is None and required:
        raise RowError("missing_column", f"no {column!r} value (row has {sorted(row)})")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RowError("wrong_type", f"{what} is {type(value).__name__}, expected text")
    return value


def _json(value: Any, what: str) -> Any:
    """Parse a JSON-encoded cell (csv, parquet and some exports store lists as strings)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise RowError("wrong_type", f"{what} is a string that is not valid JSON") from None


def _tools(row: dict[str, Any], spec: DatasetSpec) -> list[dict[str, Any]] | None:
    value = _value(row, spec.column("tools"), required=False)
    if value in (None, "", []):
        return None
    tools = _json(value, "tools")
    tools = [tools] if isinstance(tools, dict) else tools
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RowError("wrong_type", "tools must be a list of function schemas (objects)")
    return tools or None


def _system(row: dict[str, Any], spec: DatasetSpec) -> list[Message]:
    value = _value(row, spec.column("system"), required=False)
    return [Message("system", _text(value, "system"))] if value else []


def _checked(conv: Conversation) -> Conversation:
    conv.check()
    return conv


def alpaca(row: dict[str, Any], spec: DatasetSpec) -> Conversation:
    """instruction + "\\n" + input -> user, output -> assistant, after optional system and history pairs."""
    prompt = _text(_value(row, spec.column("prompt")), spec.column("prompt"))
    query = _value(row, spec.column("query"), required=False)
    response = _text(_value(row, spec.column("response")), spec.column("response"))
    history = _value(row, spec.column("history"), required=False) or []
    messages = _system(row, spec)
    if not isinstance(history, list):
        raise RowError(
            "wrong_type", f"history is {type(history).__name__}, expected [[prompt, response], ...]"
        )
    for pair in history:
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise RowError("wrong_type", "history items must be [prompt, response] text pairs")
        messages += [Message("user", pair[0]), Message("assistant", pair[1])]
    user = "\n".join(p for p in (prompt, _text(query, "input") if query else "") if p)
    if not user.strip():
        raise RowError("empty_prompt", f"{spec.column('prompt')} and {spec.column('query')} are blank")
    messages += [Message("user", user), Message("assistant", response)]
    return _checked(Conversation(messages, tools=_tools(row, spec)))


def _content(turn: dict[str, Any], key: str, i: int) -> str:
    """Text of one turn: a string, a list of text parts, or an OpenAI tool call when content is null."""
    content = turn.get(key)
    if content is None and turn.get("tool_calls"):
        calls = [dict(c.get("function", c)) for c in turn["tool_calls"] if isinstance(c, dict)]
        for call in calls:
            if isinstance(call.get("arguments"), str):
                call["arguments"] = _json(call["arguments"], f"turn {i} tool call arguments")
        if not calls:
            raise RowError("wrong_type", f"turn {i} tool_calls holds no call objects")
        return json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
    if content is None:
        raise RowError("missing_column", f"turn {i} has no {key!r}")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise RowError("wrong_type", f"turn {i} has non-text content parts (multimodal is not supported)")
        return "".join(str(p.get("text", "")) for p in content)
    return _text(content, f"turn {i} {key}")


def _chat(row: dict[str, Any], spec: DatasetSpec) -> Conversation:
    turns = _json(_value(row, spec.column("messages")), spec.column("messages"))
    if not isinstance(turns, list):
        raise RowError("wrong_type", f"{spec.column('messages')} is {type(turns).__name__}, expected a list")
    roles = {
        spec.tag("user_tag"): "user",
        spec.tag("assistant_tag"): "assistant",
        spec.tag("observation_tag"): "tool",
        spec.tag("function_tag"): "assistant",
        spec.tag("system_tag"): "system",
    }
    if spec.formatting == "openai":
        roles.setdefault("function", "tool")
    role_key, content_key = spec.tag("role_tag"), spec.tag("content_tag")
    messages = _system(row, spec)
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError("wrong_type", f"turn {i} is {type(turn).__name__}, expected an object")
        if role_key not in turn:
            raise RowError("missing_column", f"turn {i} has no {role_key!r} (keys: {sorted(turn)})")
        tag = turn[role_key]
        if tag not in roles:
            raise RowError("unknown_role", f"turn {i} has {role_key}={tag!r}; expected one of {list(roles)}")
        messages.append(Message(roles[tag], _content(turn, content_key, i)))
    return _checked(Conversation(messages, tools=_tools(row, spec)))


def sharegpt(row: dict[str, Any], spec: DatasetSpec) -> Conversation:
    """from/value turns (tags configurable); function_call -> assistant, observation -> tool."""
    return _chat(row, spec)


def openai(row: dict[str, Any], spec: DatasetSpec) -> Conversation:
    """role/content messages; assistant `tool_calls` become the call as JSON content; function -> tool."""
    return _chat(row, spec)


FORMATS: dict[str, Format] = {"alpaca": alpaca, "sharegpt": sharegpt, "openai": openai}
