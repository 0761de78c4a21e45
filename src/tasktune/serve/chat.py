"""`tasktune chat`: one streamed answer (`--prompt`) or an interactive multi-turn chat in the terminal."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TextIO

DEFAULT_MODEL = "smollm2-135m-instruct"
HELP = "commands: /reset clears the conversation, /exit (or Ctrl-D) quits"


def add_chat_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `tasktune chat` options to `parser` (a subparser); `run_chat_args` runs them."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"registry name or local model directory (default: {DEFAULT_MODEL})")
    parser.add_argument("--adapter", default=None, help="a trained LoRA adapter directory to load on top")
    parser.add_argument("--prompt", default=None, help="answer this one message, then exit")
    parser.add_argument("--max-new-tokens", type=int, default=256,
                        help="longest answer in tokens (default: 256)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="sampling temperature; 0 is greedy and reproducible (default: 0)")
    parser.add_argument("--system", default=None, help="system prompt (default: the chat template's own)")
    return parser


def run_chat_args(args: argparse.Namespace) -> int:
    """Run `run_chat` with the options parsed by `add_chat_args`."""
    return run_chat(args.model, args.adapter, args.prompt, args.max_new_tokens, args.temperature,
                    system=args.system)


def _answer(model, tokenizer, history: list[dict], max_new_tokens: int, temperature: float,
            output: TextIO) -> str:
    from tasktune.model.generate import stream_chat

    pieces = []
    stream = stream_chat(model, tokenizer, history, max_new_tokens=max_new_tokens, temperature=temperature)
    for piece in stream:
        pieces.append(piece)
        output.write(piece)
        output.flush()
    output.write("\n")
    output.flush()
    return "".join(pieces)


def run_chat(
    model: str,
    adapter: str | None,
    prompt: str | None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    input_fn: Callable[[str], str] = input,
    output: TextIO = sys.stdout,
    system: str | None = None,
) -> int:
    """Chat with `model` (+ `adapter`): answer `prompt` once, or loop on `input_fn` until /exit. Returns 0."""
    from tasktune.config.schema import ModelConfig
    from tasktune.model.load import load_model, load_tokenizer

    cfg = ModelConfig(name_or_path=model, adapter=adapter)
    tokenizer = load_tokenizer(cfg, padding_side="left")
    lm = load_model(cfg)
    start = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        messages = [*start, {"role": "user", "content": prompt}]
        _answer(lm, tokenizer, messages, max_new_tokens, temperature, output)
        return 0
    output.write(f"chatting with {model}{f' + {adapter}' if adapter else ''}; {HELP}\n")
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
        if not text:
            continue
        history.append({"role": "user", "content": text})
        output.write("assistant> ")
        try:
            reply = _answer(lm, tokenizer, history, max_new_tokens, temperature, output)
        except KeyboardInterrupt:  # stop this answer, keep the session
            output.write("\n(interrupted)\n")
            history.pop()
            continue
        history.append({"role": "assistant", "content": reply})
