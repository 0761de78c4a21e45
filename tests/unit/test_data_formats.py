"""Formats: alpaca / sharegpt / openai rows become conversations; bad rows raise RowError(reason)."""

from __future__ import annotations

import json

import pytest

from tasktune.data.formats import FORMATS
from tasktune.data.messages import Conversation, Message, RowError
from tasktune.data.registry import DatasetSpec

ALPACA = DatasetSpec(name="t")
SHAREGPT = DatasetSpec(name="t", formatting="sharegpt")
OPENAI = DatasetSpec(name="t", formatting="openai")


def roles(conv: Conversation) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in conv.messages]


def test_alpaca_joins_instruction_and_input_after_system_and_history():
    row = {
        "instruction": "Translate.",
        "input": "Hallo",
        "output": "Hello",
        "system": "Be exact.",
        "history": [["Translate: Tschuess", "Bye"]],
    }
    assert roles(FORMATS["alpaca"](row, ALPACA)) == [
        ("system", "Be exact."),
        ("user", "Translate: Tschuess"),
        ("assistant", "Bye"),
        ("user", "Translate.\nHallo"),
        ("assistant", "Hello"),
    ]
    assert roles(FORMATS["alpaca"]({"instruction": "Hi", "input": "", "output": "Yo"}, ALPACA)) == [
        ("user", "Hi"),
        ("assistant", "Yo"),
    ]


def test_alpaca_custom_columns():
    spec = DatasetSpec(name="t", columns={"prompt": "q", "response": "a"})
    assert roles(FORMATS["alpaca"]({"q": "2+2?", "a": "4"}, spec)) == [("user", "2+2?"), ("assistant", "4")]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"instruction": "x"}, "missing_column"),
        ({"output": "x"}, "missing_column"),
        ({"instruction": 3, "output": "x"}, "wrong_type"),
        ({"instruction": "x", "output": ["a", "b"]}, "wrong_type"),
        ({"instruction": "x", "output": "y", "history": [["only one"]]}, "wrong_type"),
        ({"instruction": "x", "output": " \n"}, "empty_response"),
        ({"instruction": " ", "input": "", "output": "y"}, "empty_prompt"),
    ],
)
def test_alpaca_rejects(row, reason):
    with pytest.raises(RowError) as err:
        FORMATS["alpaca"](row, ALPACA)
    assert err.value.reason == reason


def test_sharegpt_tool_calls_observations_and_tools():
    tools = [{"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}]
    row = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "Q"},
            {"from": "function_call", "value": '{"name": "f", "arguments": {}}'},
            {"from": "observation", "value": '{"ok": true}'},
            {"from": "gpt", "value": "A"},
        ],
        "tools": json.dumps(tools),
    }
    conv = FORMATS["sharegpt"](row, SHAREGPT)
    assert roles(conv) == [
        ("system", "S"),
        ("user", "Q"),
        ("assistant", '{"name": "f", "arguments": {}}'),
        ("tool", '{"ok": true}'),
        ("assistant", "A"),
    ]
    assert conv.tools == tools
    assert [m.trained for m in conv.messages] == [False, False, True, False, True]


def test_sharegpt_custom_tags():
    spec = DatasetSpec(
        name="t",
        formatting="sharegpt",
        columns={"messages": "msgs"},
        tags={"role_tag": "who", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"},
    )
    row = {"msgs": [{"who": "me", "text": "hi"}, {"who": "bot", "text": "hey"}]}
    assert roles(FORMATS["sharegpt"](row, spec)) == [("user", "hi"), ("assistant", "hey")]


@pytest.mark.parametrize(
    ("turns", "reason"),
    [
        ([{"from": "wizard", "value": "x"}, {"from": "gpt", "value": "y"}], "unknown_role"),
        ([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], "bad_turn_order"),
        ([{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}], "bad_turn_order"),
        (
            [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}, {"from": "human", "value": "c"}],
            "bad_turn_order",
        ),
        ([{"from": "human", "value": "a"}, {"from": "observation", "value": "b"}], "bad_turn_order"),
        (
            [
                {"from": "human", "value": "a"},
                {"from": "gpt", "value": "b"},
                {"from": "system", "value": "c"},
                {"from": "gpt", "value": "d"},
            ],
            "bad_turn_order",
        ),
        ([{"from": "human"}, {"from": "gpt", "value": "b"}], "missing_column"),
        ([{"value": "a"}], "missing_column"),
        (["a", "b"], "wrong_type"),
        ("not json", "wrong_type"),
        ([], "bad_turn_order"),
    ],
)
def test_sharegpt_rejects(turns, reason):
    with pytest.raises(RowError) as err:
        FORMATS["sharegpt"]({"conversations": turns}, SHAREGPT)
    assert err.value.reason == reason


def test_openai_messages_tool_calls_and_text_parts():
    row = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Rome?"}],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"type": "function", "function": {"name": "w", "arguments": '{"city": "Rome"}'}}
                ],
            },
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
        ]
    }
    conv = FORMATS["openai"](row, OPENAI)
    assert roles(conv) == [
        ("user", "Weather in Rome?"),
        ("assistant", '{"name": "w", "arguments": {"city": "Rome"}}'),
        ("tool", "sunny"),
        ("assistant", "Sunny."),
    ]
    image = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url"}]},
            {"role": "assistant", "content": "x"},
        ]
    }
    with pytest.raises(RowError, match="multimodal") as err:
        FORMATS["openai"](image, OPENAI)
    assert err.value.reason == "wrong_type"


def test_conversation_check_accepts_parallel_tool_results_and_user_after_assistant():
    conv = Conversation(
        [
            Message("user", "q"),
            Message("assistant", "call"),
            Message("tool", "r1"),
            Message("tool", "r2"),
            Message("assistant", "a"),
            Message("user", "q2"),
            Message("assistant", "a2"),
        ]
    )
    conv.check()  # no error
    conv.messages.append(Message("tool", "late"))
    with pytest.raises(RowError, match="ends on a tool turn"):
        conv.check()
