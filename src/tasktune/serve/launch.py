"""`tasktune api` command line: its options, and start-up (engine, app, uvicorn) until Ctrl-C.

Kept apart from api.py so that building the CLI parser does not import FastAPI.
"""

from __future__ import annotations

import argparse
import os
import sys

API_KEY_ENV = "TASKTUNE_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_api_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `tasktune api` options to `parser`; `run_api_args` runs them."""
    from tasktune.serve.chat import DEFAULT_MODEL
    from tasktune.serve.front import DEFAULT_PREFIX_CACHE_MB

    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"registry name or local model directory (default: {DEFAULT_MODEL})")
    parser.add_argument("--adapter", action="append", metavar="NAME=DIR",
                        help="a LoRA adapter to serve as model NAME (a bare DIR is named after its folder); "
                             "repeat for several")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--api-key", default=None,
                        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} when set)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="waiting requests beyond which the server answers 429 (default: 64)")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="requests generated together in one batch (default: 8)")
    parser.add_argument("--default-max-tokens", type=int, default=512,
                        help="answer length when a chat request gives no max_tokens (default: 512)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="weight dtype (default: auto = bfloat16 where the hardware runs it)")
    parser.add_argument("--backend", default="torch", choices=("torch", "vllm"),
                        help="torch (default: tasktune's own decoder, CPU or GPU) or vllm (a CUDA GPU with the vllm "
                             "package: one multi-LoRA engine, each --adapter a LoRA request)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85,
                        help="--backend vllm: share of the GPU's memory vLLM takes for weights and KV cache")
    parser.add_argument("--prefix-cache-mb", type=int, default=DEFAULT_PREFIX_CACHE_MB,
                        help="memory for the caches of finished requests that a later prompt may start from, so "
                             "that a conversation's next turn prefills only its new message; 0 keeps none "
                             f"(default: {DEFAULT_PREFIX_CACHE_MB})")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice); on a busy shared CPU, 1 can be "
                             "many times faster than more")
    return parser


def run_api_args(args: argparse.Namespace) -> int:
    """Load the engine and serve until Ctrl-C."""
    import uvicorn

    from tasktune.serve.api import create_app
    from tasktune.serve.engine import Engine, parse_adapter_specs

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if args.host not in LOOPBACK and not api_key:
        print(f"tasktune api: warning: listening on {args.host} without an API key; anyone who can reach this "
              f"port can use the model (set --api-key or ${API_KEY_ENV})", file=sys.stderr)
    adapters = parse_adapter_specs(args.adapter)
    if args.backend == "vllm":
        from tasktune.serve.vllm_engine import VllmEngine, unavailable

        reason = unavailable()
        if reason:
            print(f"tasktune api: --backend vllm: {reason}", file=sys.stderr)
            return 2
        engine = VllmEngine(args.model, adapters, dtype=args.dtype, max_queue=args.max_queue,
                            max_batch=args.max_batch, default_max_tokens=args.default_max_tokens,
                            gpu_memory_utilization=args.gpu_memory_utilization)
    else:
        engine = Engine(args.model, adapters, dtype=args.dtype, max_queue=args.max_queue, max_batch=args.max_batch,
                        default_max_tokens=args.default_max_tokens, threads=args.threads,
                        prefix_cache_mb=args.prefix_cache_mb)
    print(f"serving {', '.join(engine.models)} on http://{args.host}:{args.port}/v1"
          f"{' (API key required)' if api_key else ''}", file=sys.stderr)
    try:
        uvicorn.run(create_app(engine, api_key), host=args.host, port=args.port, log_level="info",
                    timeout_graceful_shutdown=5)
    finally:
        engine.close()
    return 0
