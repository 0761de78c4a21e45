"""Split an evaluation sample across the processes of a distributed run, and put the answers back in order.

With replicated weights (DDP) each process generates for every `world`-th row (`rank`, `rank + world`, ...),
then all of them exchange their answers, so every process holds the whole list and scores it the same way.
With one process (or no process group) nothing is split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tasktune.evaluate.generate import GenerationResult
from tasktune.evaluate.loglik import LoglikResult


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) without an initialised process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def _gather(n: int, mine: list[int], values: list[Any], world: int) -> list[Any]:
    """Every process's `values`, each placed at its index (`mine` on this process) in a list of `n`."""
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, (mine, values))
    placed: list[Any] = [None] * n
    for indices, part in parts:
        for index, value in zip(indices, part, strict=True):
            placed[index] = value
    return placed


def split_generate(generate: Callable[..., GenerationResult], model, tokenizer, prompts: list, budget: int,
                   batch_size: int, constraint: Any, progress: bool) -> GenerationResult:
    """`generate` on this process's share of `prompts` (and their per-row constraints); the whole result,
    in the prompts' order, on every process. Seconds: the slowest process's."""
    rank, world = rank_and_world()
    if world == 1:
        return generate(model, tokenizer, prompts, budget, batch_size, constraint, progress)
    mine = list(range(rank, len(prompts), world))
    own = [constraint[i] for i in mine] if isinstance(constraint, list) else constraint
    result = generate(model, tokenizer, [prompts[i] for i in mine], budget, batch_size, own, progress)
    rows = [(text, cut) for text, cut in zip(result.texts, result.truncated or [False] * len(mine), strict=True)]
    placed = _gather(len(prompts), mine, rows, world)
    totals = _gather(world, [rank], [(result.generated_tokens, result.seconds)], world)
    return GenerationResult([text for text, _ in placed], sum(t for t, _ in totals), max(s for _, s in totals),
                            [cut for _, cut in placed])


def split_choices(score: Callable[..., LoglikResult], model, tokenizer, prompts: list, labels: list[str],
                  batch_size: int, progress: bool) -> LoglikResult:
    """`score` (log-likelihood label choice) split across processes like `split_generate`."""
    rank, world = rank_and_world()
    if world == 1:
        return score(model, tokenizer, prompts, labels, batch_size, progress)
    mine = list(range(rank, len(prompts), world))
    result = score(model, tokenizer, [prompts[i] for i in mine], labels, batch_size, progress)
    placed = _gather(len(prompts), mine, list(zip(result.choices, result.scores, strict=True)), world)
    seconds = _gather(world, [rank], [result.seconds], world)
    return LoglikResult([c for c, _ in placed], [s for _, s in placed], max(seconds))
