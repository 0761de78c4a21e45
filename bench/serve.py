"""Serving load: N concurrent OpenAI clients against `tasktune api` with the real SmolLM2.

Starts the server as a subprocess on a free loopback port, warms it up, then for each concurrency level
sends a fixed number of short greedy chat requests (max_tokens 32; each question numbered, so that none
starts from another's cache, as distinct traffic would not; bench/chat_turns.py measures that reuse) and
prints requests/s, generated tokens/s, p50/p95 latency, failures and the server's batching, with throughput
ratios against the 1-client level of the same run. Every level has a time budget; the whole run stays under 3 minutes.

With `--adapter` (repeatable, [NAME=]DIR) the server loads those LoRA adapters and consecutive requests
cycle through the base model and each adapter, so a batch mixes them. `--compare-transformers` then runs the
same levels again against a second server whose models keep transformers' forward (TASKTUNE_LEAN=0: peft's
per-row `adapter_names` instead of model/lean.py), in the same invocation, with the ratio per level.

    .venv/bin/python bench/serve.py [--levels 1,4,16] [--max-tokens 32] [--threads 1] [--json out.json]
    .venv/bin/python bench/serve.py --adapter out/demo/adapter --compare-transformers
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

SERIAL = itertools.count(1)
"""Numbers every request of the run, levels and warm-up included (see `run_level`)."""
PROMPTS = [
    "Name three primary colours.",
    "What is the capital of France?",
    "Give me a synonym for happy.",
    "Write one sentence about the sea.",
    "What is 12 times 12?",
    "Translate 'good morning' into Spanish.",
    "List two fruits that are yellow.",
    "Why is the sky blue? Answer briefly.",
]


@dataclass
class Level:
    clients: int
    requests: int
    failed: int
    seconds: float
    completion_tokens: int
    p50_s: float
    p95_s: float
    batches: int

    @property
    def requests_per_s(self) -> float:
        return (self.requests - self.failed) / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, port: int, max_batch: int, max_queue: int, threads: int, adapters: list[str],
                 lean: bool = True) -> subprocess.Popen:
    command = [sys.executable, "-m", "tasktune.cli", "api", "--model", model, "--port", str(port),
               "--max-batch", str(max_batch), "--max-queue", str(max_queue), "--threads", str(threads)]
    for adapter in adapters:
        command += ["--adapter", adapter]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TASKTUNE_LEAN": "1" if lean else "0"}
    env.pop("TASKTUNE_API_KEY", None)
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def wait_ready(url: str, process: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited: {process.stderr.read()[-2000:]}")
            try:
                if (await http.get(f"{url}/health", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.25)
    raise TimeoutError(f"the server at {url} was not ready in {timeout:.0f} s")


async def server_batches(url: str) -> int:
    import httpx

    async with httpx.AsyncClient() as http:
        return (await http.get(f"{url}/health", timeout=5)).json()["stats"]["batches"]


async def run_level(url: str, models: list[str], clients: int, requests: int, max_tokens: int,
                    budget_s: float) -> Level:
    """`clients` concurrent loops share `requests` requests (request i asks models[i % len(models)]); none
    starts after `budget_s`."""
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
    latencies: list[float] = []
    tokens, failed, issued = 0, 0, 0
    start = time.perf_counter()
    batches_before = await server_batches(url)

    async def one_client() -> None:
        nonlocal tokens, failed, issued
        while issued < requests and time.perf_counter() - start < budget_s:
            # distinct from the first token on: no request starts from another's cache (--prefix-cache-mb)
            prompt = f"Request {next(SERIAL)}: {PROMPTS[issued % len(PROMPTS)]}"
            model = models[issued % len(models)]
            issued += 1
            began = time.perf_counter()
            try:
                reply = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                    temperature=0)
                tokens += reply.usage.completion_tokens
                latencies.append(time.perf_counter() - began)
            except openai.OpenAIError as err:
                failed += 1
                print(f"  request failed: {err!r}", file=sys.stderr)

    await asyncio.gather(*(one_client() for _ in range(clients)))
    seconds = time.perf_counter() - start
    await client.close()
    ordered = sorted(latencies) or [float("nan")]
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return Level(clients, issued, failed, seconds, tokens, statistics.median(ordered), p95,
                 await server_batches(url) - batches_before)


def table(levels: list[Level]) -> str:
    base = levels[0]
    lines = ["| clients | requests | failed | req/s | gen tok/s | p50 s | p95 s | batches | tok/s vs 1 client |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in levels:
        lines.append(f"| {lv.clients} | {lv.requests} | {lv.failed} | {lv.requests_per_s:.2f} | {lv.tokens_per_s:.1f} "
                     f"| {lv.p50_s:.2f} | {lv.p95_s:.2f} | {lv.batches} | {lv.tokens_per_s / base.tokens_per_s:.2f}x |")
    return "\n".join(lines)


def adapter_names(adapters: list[str]) -> list[str]:
    """The API model names of `--adapter` values, as `tasktune api` names them."""
    from tasktune.serve.front import parse_adapter_specs

    return list(parse_adapter_specs(adapters))


async def serve_levels(args: argparse.Namespace, lean: bool) -> list[Level]:
    levels = [int(n) for n in args.levels.split(",")]
    models = ["base", *adapter_names(args.adapter)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_server(args.model, port, max(levels), args.max_queue, args.threads, args.adapter, lean)
    try:
        await wait_ready(url, process, timeout=90)
        await run_level(url, models, 1, 2 * len(models), args.max_tokens, 30)  # warm-up (every model's prefix)
        results = []
        for clients in levels:
            level = await run_level(url, models, clients, max(8, 2 * clients), args.max_tokens, args.level_budget)
            print(f"  {'lean' if lean else 'transformers'} forward, {clients:>2} clients: {level.requests} requests "
                  f"in {level.seconds:.1f} s", file=sys.stderr)
            results.append(level)
        return results
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--levels", default="1,4,16", help="concurrent clients per level; the first is the baseline")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-queue", type=int, default=64, help="server queue bound (levels stay below it)")
    parser.add_argument("--level-budget", type=float, default=40.0, help="seconds after which a level stops issuing")
    parser.add_argument("--threads", type=int, default=1,
                        help="server torch threads (default 1: on a shared 2-core machine more threads are slower)")
    parser.add_argument("--adapter", action="append", default=[], metavar="[NAME=]DIR",
                        help="a LoRA adapter for the server to load; requests cycle through the base model and these")
    parser.add_argument("--compare-transformers", action="store_true",
                        help="run the levels again on a server with transformers' forward (TASKTUNE_LEAN=0)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    started = time.perf_counter()
    levels = asyncio.run(serve_levels(args, lean=True))
    print(table(levels))
    compared = asyncio.run(serve_levels(args, lean=False)) if args.compare_transformers else []
    if compared:
        print("\nthe same levels, transformers' forward (TASKTUNE_LEAN=0)\n" + table(compared))
        print("\nlean forward vs transformers' forward, generated tok/s: " + ", ".join(
            f"{lean.clients} clients {lean.tokens_per_s / other.tokens_per_s:.2f}x"
            for lean, other in zip(levels, compared, strict=True)))
    top, base = levels[-1], levels[0]
    served = " + ".join([args.model, *adapter_names(args.adapter)])
    print(f"\n{served}, greedy, max_tokens={args.max_tokens}, {os.cpu_count()} CPUs, {args.threads} torch "
          f"thread(s); {top.clients} clients vs {base.clients}: "
          f"{top.tokens_per_s / base.tokens_per_s:.2f}x generated tokens/s, "
          f"{top.requests_per_s / base.requests_per_s:.2f}x requests/s; total {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump([{**asdict(lv), "forward": forward, "requests_per_s": lv.requests_per_s,
                        "tokens_per_s": lv.tokens_per_s}
                       for forward, runs in (("lean", levels), ("transformers", compared)) for lv in runs],
                      out, indent=2)
    failures = sum(lv.failed for lv in levels + compared)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
