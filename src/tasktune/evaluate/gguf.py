"""Scoring a GGUF file: llama.cpp (llama-cpp-python) as the text generator of the evaluation runner.

`gguf_generator(path)` returns a function with the signature of `generate_texts`, so `predict` and
`evaluate_task` score a GGUF export (`tasktune compress`'s gguf-* variants) on the same rows, prompts
(tasktune's tokenizer and chat template, passed as token ids) and metric as the torch model it came from.
Rows are generated one after the other (llama.cpp's Python bindings decode one sequence at a time), greedy,
without decoding constraints.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tasktune.config.schema import ConfigError
from tasktune.evaluate.generate import GenerationResult, prompt_ids


def llama_cpp_installed() -> bool:
    """Whether llama-cpp-python (llama.cpp's runtime) is installed."""
    return importlib.util.find_spec("llama_cpp") is not None


def load_gguf(path: str | Path, threads: int | None = None, context: int = 4096) -> Any:
    """A llama_cpp.Llama over `path`; ConfigError where llama-cpp-python is not installed."""
    try:
        from llama_cpp import Llama
    except ImportError as err:
        raise ConfigError("running a GGUF file needs llama-cpp-python: `make llamacpp` (compiles llama.cpp, "
                          "about 7 minutes on 2 cores)") from err
    from tasktune.runtime import configure_threads

    return Llama(str(path), n_threads=threads or configure_threads(), n_ctx=context, verbose=False)


def gguf_generator(path: str | Path, threads: int | None = None) -> Callable[..., GenerationResult]:
    """`generate_texts(model, tokenizer, conversations, max_new_tokens, ...)` run by llama.cpp on `path`
    (the `model` argument is ignored; `constraint` too: llama.cpp decodes unconstrained here)."""
    llm = load_gguf(path, threads)

    def generate(model: Any, tokenizer: Any, conversations: list[list[dict]], max_new_tokens: int,
                 batch_size: int = 1, constraint: Any = None, progress: bool = True) -> GenerationResult:
        texts, truncated, tokens = [], [], 0
        started = time.perf_counter()
        for ids in tqdm(prompt_ids(tokenizer, conversations), desc="generate (llama.cpp)", unit="ex",
                        disable=not progress, leave=False):
            reply = llm.create_completion(ids, max_tokens=max_new_tokens, temperature=0.0, top_k=1)
            choice = reply["choices"][0]
            texts.append(choice["text"].strip())
            truncated.append(choice.get("finish_reason") == "length")
            tokens += reply["usage"]["completion_tokens"]
        return GenerationResult(texts, tokens, time.perf_counter() - started, truncated)

    generate.llm = llm  # type: ignore[attr-defined]
    return generate
