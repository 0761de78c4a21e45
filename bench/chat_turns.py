"""A multi-turn conversation through the chat/API engine, with and without the prefix cache, same run.

Each turn sends the whole history (as chat clients and OpenAI-style API clients do) plus a new question;
greedy, 48 new tokens a turn. `reuse` is the engine as `tasktune chat` and `tasktune api` run it (finished
requests' caches kept, `--prefix-cache-mb`, model/prefix_store.py): a turn prefills only what follows the
previous turn's prompt and reply. `none` is the same engine with `prefix_cache_mb=0`, which prefills every
turn after the chat template's opening. Both conversations run interleaved, `--repeats` times; the table
gives each turn's prompt tokens and median time to the first streamed piece (TTFT), then the medians of the
whole conversation. Each conversation opens with its own number, so none starts from another's cache.

Run on an otherwise idle machine, one benchmark at a time:

    .venv/bin/python bench/chat_turns.py [--model smollm2-135m-instruct] [--turns 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

QUESTIONS = [
    "Tell me about the history of Paris in a few sentences.",
    "What are its most famous museums?",
    "Which one would you visit first, and why?",
    "How long should I plan for that visit?",
    "What is a good place to eat nearby?",
    "And what should I see in the evening?",
    "Summarise the plan for the day.",
    "Thank you. Any last tip?",
    "Which season is best for the trip?",
    "How do I get there from the airport?",
]


def conversation(engine, turns: int, max_new: int, number: int, replies: list[str] | None = None
                 ) -> list[tuple[int, float, float]]:
    """(prompt tokens, seconds to the first streamed piece, seconds for the turn) per turn; the replies are
    appended to `replies`. `number` opens the first question, so that no conversation of the run starts from
    another one's cache."""
    history: list[dict] = []
    out = []
    for turn, question in enumerate(QUESTIONS[:turns]):
        history.append({"role": "user", "content": f"Conversation {number}. {question}" if turn == 0 else question})
        prompt = len(engine.render_chat(history))
        started = time.perf_counter()
        first = None
        pieces = []
        for piece in engine.stream_chat(history, max_new_tokens=max_new):
            if first is None:
                first = time.perf_counter() - started
            pieces.append(piece)
        out.append((prompt, first or 0.0, time.perf_counter() - started))
        history.append({"role": "assistant", "content": "".join(pieces)})
        if replies is not None:
            replies.append(history[-1]["content"])
    return out


def main() -> None:
    from tasktune.runtime import preload_allocator

    preload_allocator(__file__, sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new", type=int, default=48)
    parser.add_argument("--dtype", default="auto", help="weight dtype (default auto: bf16 where supported)")
    args = parser.parse_args()

    from tasktune.runtime import configure_threads
    from tasktune.serve.engine import Engine

    threads = configure_threads()
    print(f"threads {threads}; load average before: {os.getloadavg()[0]:.2f}")
    engines = {"reuse": Engine(args.model, dtype=args.dtype, max_batch=1),
               "none": Engine(args.model, dtype=args.dtype, max_batch=1, prefix_cache_mb=0)}
    runs: dict[str, list[list[tuple[int, float, float]]]] = {name: [] for name in engines}
    replies: dict[str, list[str]] = {name: [] for name in engines}
    try:
        for engine in engines.values():  # warm-up (first passes allocate)
            conversation(engine, 1, 8, 0)
        for repeat in range(args.repeats):
            for name in (list(engines) if repeat % 2 == 0 else list(reversed(engines))):
                runs[name].append(conversation(engines[name], args.turns, args.max_new, repeat + 1,
                                               replies[name]))
    finally:
        for engine in engines.values():
            engine.close()
    print(f"\n{args.model}, {args.turns} turns of {args.max_new} new tokens, greedy, {threads} threads, "
          f"median of {args.repeats}")
    print("| turn | prompt tokens | TTFT reuse s | TTFT none s | none / reuse |")
    print("|---:|---:|---:|---:|---:|")
    for turn in range(args.turns):
        prompt = runs["reuse"][0][turn][0]
        reuse = statistics.median(run[turn][1] for run in runs["reuse"])
        none = statistics.median(run[turn][1] for run in runs["none"])
        print(f"| {turn + 1} | {prompt} | {reuse:.3f} | {none:.3f} | {none / reuse:.2f}x |")
    totals = {name: statistics.median(sum(t[2] for t in run) for run in values) for name, values in runs.items()}
    ttfts = {name: statistics.median(sum(t[1] for t in run) for run in values) for name, values in runs.items()}
    print(f"\nwhole conversation: reuse {totals['reuse']:.2f} s, none {totals['none']:.2f} s "
          f"({totals['none'] / totals['reuse']:.2f}x); summed TTFT: reuse {ttfts['reuse']:.2f} s, "
          f"none {ttfts['none']:.2f} s ({ttfts['none'] / ttfts['reuse']:.2f}x)")
    same = replies["reuse"] == replies["none"]
    print(f"replies: {'the same' if same else 'DIFFERENT'} with and without the cache")


if __name__ == "__main__":
    main()
