"""What an export costs and changes: file sizes, perplexity on our own text, forward and generation speed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

EVAL_TEXT_FILE = Path(__file__).with_name("eval_text.txt")
"""About 360 SmolLM2 tokens of plain English prose written for tasktune (in no training set)."""
NEW_TOKENS = 32
"""Tokens generated (greedy, forced length) to time generation."""


def files_with_sizes(folder: Path) -> list[dict[str, Any]]:
    """[{"file": name, "bytes": size}] for every file directly in `folder`, sorted by name."""
    return [{"file": p.name, "bytes": p.stat().st_size} for p in sorted(folder.iterdir()) if p.is_file()]


def weights_bytes(folder: Path) -> int:
    """Total size of the safetensors files in `folder`."""
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def perplexity(model: Any, input_ids: Any) -> float:
    """exp(mean next-token cross-entropy) of `input_ids` (shape 1 x T) under `model`."""
    import torch

    with torch.inference_mode():
        return float(torch.exp(model(input_ids, labels=input_ids).loss))


def _seconds(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def _timed_runs(model: Any, input_ids: Any, new_tokens: int) -> tuple[float, float]:
    """Seconds of one forward pass over `input_ids`, and of greedy generation of `new_tokens` after 32 of them."""
    import torch

    prompt = input_ids[:, :32]
    with torch.inference_mode():
        forward = _seconds(lambda: model(input_ids))
        generate = _seconds(lambda: model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, pad_token_id=model.generation_config.pad_token_id or 0,
        ))
    return forward, generate


def compare_model_dirs(before: Path, after: Path, text: str | None = None, repeats: int = 3,
                       new_tokens: int = NEW_TOKENS) -> dict[str, Any]:
    """Perplexity on `text` (default: EVAL_TEXT_FILE) and speed of two model directories, loaded with plain
    transformers: {"eval_tokens": n, "perplexity" | "forward_tokens_per_s" | "generate_tokens_per_s":
    {"before": x, "after": y}}.

    Timings are the best of `repeats` runs, the two models taking turns, so that load from other processes on
    a shared machine hits both alike; torch's default CPU threads.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(before, local_files_only=True)
    input_ids = tokenizer(text or EVAL_TEXT_FILE.read_text(), return_tensors="pt").input_ids
    models = {name: AutoModelForCausalLM.from_pretrained(path, dtype="auto", local_files_only=True).eval()
              for name, path in (("before", before), ("after", after))}
    best = {name: [float("inf"), float("inf")] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            best[name] = [min(old, new) for old, new in zip(best[name], _timed_runs(model, input_ids, new_tokens),
                                                            strict=True)]
    tokens = int(input_ids.shape[1])
    return {
        "eval_tokens": tokens,
        "perplexity": {name: perplexity(model, input_ids) for name, model in models.items()},
        "forward_tokens_per_s": {name: tokens / best[name][0] for name in models},
        "generate_tokens_per_s": {name: new_tokens / best[name][1] for name in models},
    }
