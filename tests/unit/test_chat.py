"""`tasktune chat` on the tiny Llama: one prompt with an adapter, and the interactive loop's commands."""

from __future__ import annotations

import argparse
import io

from tasktune.serve.chat import add_chat_args, run_chat
from tasktune.serve.engine import Engine


def test_prompt_with_adapter_prints_an_answer(tiny_llama_dir, tiny_adapter_dir):
    output = io.StringIO()
    code = run_chat(str(tiny_llama_dir), str(tiny_adapter_dir), "Hello!", max_new_tokens=5, temperature=0.0,
                    output=output)
    assert code == 0
    assert output.getvalue().strip()


def _recording_stream(calls: list, models: list | None = None):
    def fake_stream_chat(engine, messages, model=None, **kwargs):
        calls.append([dict(m) for m in messages])
        if models is not None:
            models.append(model)
        yield "re"
        yield "ply"

    return fake_stream_chat


def test_interactive_history_reset_and_exit(tiny_llama_dir, monkeypatch):
    calls: list = []
    monkeypatch.setattr(Engine, "stream_chat", _recording_stream(calls))
    lines = iter(["one", "two", "/reset", "", "three", "/exit", "never read"])
    output = io.StringIO()
    code = run_chat(str(tiny_llama_dir), None, None, input_fn=lambda _: next(lines), output=output,
                    system="Be brief.")
    assert code == 0
    assert [[m["content"] for m in c] for c in calls] == [
        ["Be brief.", "one"],
        ["Be brief.", "one", "reply", "two"],
        ["Be brief.", "three"],
    ]
    assert output.getvalue().count("assistant> reply\n") == 3
    assert next(lines) == "never read"


def test_end_of_input_ends_the_loop(tiny_llama_dir):
    def eof(_prompt: str) -> str:
        raise EOFError

    assert run_chat(str(tiny_llama_dir), None, None, input_fn=eof, output=io.StringIO()) == 0


def test_chat_args_defaults():
    args = add_chat_args(argparse.ArgumentParser()).parse_args(["--prompt", "hi", "--max-new-tokens", "7"])
    assert (args.model, args.adapter, args.prompt, args.max_new_tokens, args.temperature, args.system) == (
        "smollm2-135m-instruct", None, "hi", 7, 0.0, None)


def test_adapter_command_lists_and_switches(tiny_llama_dir, tiny_adapter_dir, monkeypatch):
    calls: list = []
    models: list = []
    monkeypatch.setattr(Engine, "stream_chat", _recording_stream(calls, models))
    lines = iter(["one", "/adapter", "/adapter base", "two", "/adapter nope", "/adapter second", "three", "/exit"])
    output = io.StringIO()
    adapters = [f"first={tiny_adapter_dir}", f"second={tiny_adapter_dir}"]
    assert run_chat(str(tiny_llama_dir), adapters, None, input_fn=lambda _: next(lines), output=output) == 0
    assert models == ["first", str(tiny_llama_dir), "second"]
    assert "* first\n  second\n" in output.getvalue() and "  base\n" in output.getvalue()
    assert "'nope' does not exist" in output.getvalue()
    assert [m["content"] for m in calls[-1]] == ["one", "reply", "two", "reply", "three"]


def test_chat_args_repeat_adapter():
    args = add_chat_args(argparse.ArgumentParser()).parse_args(["--adapter", "a=/x", "--adapter", "/y"])
    assert args.adapter == ["a=/x", "/y"]
