"""`tasktune chat`: one streamed answer (`--prompt`) or an interactive multi-turn chat in the terminal."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TextIO

DEFAULT_MODEL = "smollm2-135m-instruct"
HELP = ("commands: /adapter lists the models, /adapter NAME switches (/adapter base: no adapter), "
        "/reset clears the conversation, /exit (or Ctrl-D) quits")


def add_chat_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `tasktune chat` options to `parser` (a subparser); `run_chat_args` runs them."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"registry name or local model directory (default: {DEFAULT_MODEL})")
    parser.add_argument("--adapter", action="append", metavar="[NAME=]DIR",
                        help="a trained LoRA adapter directory to load on top; repeat for several, "
                             "then switch with /adapter NAME (the first one starts)")
    parser.add_argument("--prompt", default=None, help="answer this one message, then exit")
    parser.add_argument("--max-new-tokens", type=int, default=256,
                        help="longest answer in tokens (default: 256)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="sampling temperature; 0 is greedy and reproducible (default: 0)")
    parser.add_argument("--system", default=None, help="system prompt (default: the chat template's own)")
    parser.add_argument("--backend", choices=("torch", "llama.cpp"), default="torch",
                        help="torch (default; switch adapters with /adapter) or llama.cpp: the model with its "
                             "one adapter merged, exported to GGUF once and decoded by llama-cpp-python, about "
                             "5x faster per token on a CPU (needs `make llamacpp`)")
    return parser


def run_chat_args(args: argparse.Namespace) -> int:
    """Run `run_chat` with the options parsed by `add_chat_args`."""
    return run_chat(args.model, args.adapter, args.prompt, args.max_new_tokens, args.temperature,
                    system=args.system, backend=args.backend)


def _answer(engine, model: str, history: list[dict], max_new_tokens: int, temperature: float,
            output: TextIO) -> str:
    pieces = []
    for piece in engine.stream_chat(history, model, max_new_tokens=max_new_tokens, temperature=temperature):
        pieces.append(piece)
        output.write(piece)
        output.flush()
    output.write("\n")
    output.flush()
    return "".join(pieces)


def _switch(engine, current: str, argument: str, output: TextIO) -> str:
    """`/adapter` lists the models (current one starred); `/adapter NAME` returns NAME when it exists."""
    from tasktune.serve.engine import EngineError

    if not argument:
        for name in engine.models:
            label = "base" if name == engine.base_model else name
            output.write(f"{'*' if name == current else ' '} {label}\n")
        return current
    try:
        chosen = engine.resolve(argument)
    except EngineError as err:
        output.write(f"({err})\n")
        return current
    output.write(f"(now answering with {'the base model' if chosen == engine.base_model else chosen})\n")
    return chosen


def run_chat(
    model: str,
    adapter: str | list[str] | None,
    prompt: str | None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    input_fn: Callable[[str], str] = input,
    output: TextIO | None = None,
    system: str | None = None,
    backend: str = "torch",
) -> int:
    """Chat with `model` (+ adapters, each "DIR" or "NAME=DIR"): answer `prompt` once, or loop on `input_fn`
    until /exit; `output` defaults to the sys.stdout of the call. backend: torch | llama.cpp (one adapter,
    merged; serve/llamacpp.py). Returns 0, or 1 when the one `prompt` could
    not be answered."""
    output = output or sys.stdout
    from tasktune.serve.engine import Engine, EngineError, parse_adapter_specs

    adapters = parse_adapter_specs([adapter] if isinstance(adapter, str) else adapter)
    if backend == "llama.cpp":
        from tasktune.config.schema import ConfigError
        from tasktune.serve.llamacpp import LlamaCppChat

        if len(adapters) > 1:
            raise ConfigError("--backend llama.cpp runs one adapter (merged into the model); give one --adapter")
        engine = LlamaCppChat(model, next(iter(adapters.values()), None))
        adapters = {}
    else:
        engine = Engine(model, adapters, max_queue=2, max_batch=1)
    current = next(iter(adapters), engine.base_model)
    start = [{"role": "system", "content": system}] if system else []
    try:
        if prompt is not None:
            try:
                _answer(engine, current, [*start, {"role": "user", "content": prompt}], max_new_tokens,
                        temperature, output)
            except EngineError as err:
                print(f"tasktune chat: {err}", file=sys.stderr)
                return 1
            return 0
        output.write(f"chatting with {model}{f' + {current}' if adapters else ''}; {HELP}\n")
        history = list(start)
        while True:
            try:
                text = input_fn("\nuser> ").strip()
            except (EOFError, KeyboardInterrupt):
                output.write("\n")
                return 0
            if text in ("/exit", "/quit"):
                return 0
            if text == "/reset":
                history = list(start)
                output.write("(conversation cleared)\n")
                continue
            if text == "/adapter" or text.startswith("/adapter "):
                current = _switch(engine, current, text.removeprefix("/adapter").strip(), output)
                continue
            if not text:
                continue
            history.append({"role": "user", "content": text})
            output.write("assistant> ")
            try:
                reply = _answer(engine, current, history, max_new_tokens, temperature, output)
            except KeyboardInterrupt:  # stop this answer, keep the session
                output.write("\n(interrupted)\n")
                history.pop()
                continue
            except EngineError as err:  # e.g. the conversation outgrew the context: say so, keep the session
                output.write(f"\n({err})\n")
                history.pop()
                continue
            history.append({"role": "assistant", "content": reply})
    finally:
        engine.close()
