"""Pruning: unstructured magnitude and Wanda, 2:4 semi-structured, and depth pruning (whole decoder layers).

Calibration rows are the task's own training conversations (prompt and answer, through the chat template).

- magnitude: `torch.nn.utils.prune.l1_unstructured` per Linear (the maintained implementation).
- wanda / 2:4: written here. torchao's `WandaSparsifier` ranks |W| * ||x|| across the whole layer and collects
  activations through the deprecated `torch.ao.quantization` observers; the Wanda paper (Sun et al. 2023) ranks
  within each output row, which is what it found to matter for LLMs, and two forward hooks do the collecting.
  One shot: the activation norms of every layer come from one pass of the dense model.
- drop-layers: the block of n consecutive layers whose output is closest to its input, by the mean angular
  distance arccos(cos(x_l, x_{l+n})) / pi over the calibration tokens (Gromov et al. 2024), is removed; the
  model keeps its class and saves as a plain, smaller transformers directory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from tasktune.model.adapters import decoder_layers


def calibration_ids(rows: list[Any], spec: Any, tokenizer: Any, max_tokens: int) -> list[torch.Tensor]:
    """Token ids [1, T] of each task row as a whole training conversation (chat template), cut to max_tokens."""
    from tasktune.tasks import get_task

    task = get_task(spec.name)
    batches = []
    for row in rows:
        messages = task.to_messages(row, spec).as_dicts()
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        batches.append(torch.tensor([list(ids)[:max_tokens]], dtype=torch.long))
    return batches


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear inside the decoder layers (not the embeddings, not the output head)."""
    layers = decoder_layers(model)
    return {f"layers.{i}.{name}": module for i, layer in enumerate(layers)
            for name, module in layer.named_modules() if isinstance(module, nn.Linear)}


def sparsity_of(model: nn.Module) -> float:
    """Share of zeros in the weights of the prunable Linears."""
    linears = prunable_linears(model).values()
    zeros = sum(int((m.weight == 0).sum()) for m in linears)
    return zeros / max(1, sum(m.weight.numel() for m in linears))


def magnitude_prune(model: nn.Module, sparsity: float) -> None:
    """Zero the `sparsity` share of smallest-magnitude weights of each decoder Linear (layer-wise)."""
    from torch.nn.utils import prune

    for module in prunable_linears(model).values():
        prune.l1_unstructured(module, "weight", amount=sparsity)
        prune.remove(module, "weight")


@torch.no_grad()
def input_norms(model: nn.Module, calibration: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """||x_j||_2 over all calibration tokens, for every input channel j of every prunable Linear."""
    sums: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in prunable_linears(model).items():
        sums[name] = torch.zeros(module.in_features, dtype=torch.float64)

        def record(_module, args, _output, name=name):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] += (x * x).sum(0).cpu()

        hooks.append(module.register_forward_hook(record))
    device = next(model.parameters()).device
    try:
        for ids in calibration:
            model(input_ids=ids.to(device), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: total.sqrt().float() for name, total in sums.items()}


def wanda_mask(weight: torch.Tensor, norms: torch.Tensor, sparsity: float, n_of_m: tuple[int, int] | None = None
               ) -> torch.Tensor:
    """Keep-mask (True = kept) by the Wanda score |W_ij| * ||x_j||: the lowest `sparsity` share of each output
    row is pruned, or with n_of_m=(n, m) the n lowest of every m consecutive inputs (2:4 = (2, 4))."""
    score = weight.detach().abs().float() * norms.to(weight.device)[None, :]
    keep = torch.ones_like(score, dtype=torch.bool)
    if n_of_m is not None:
        n, m = n_of_m
        if score.shape[1] % m:
            raise ValueError(f"{n}:{m} sparsity needs in_features divisible by {m}, got {score.shape[1]}")
        groups = score.reshape(score.shape[0], -1, m)
        lowest = groups.argsort(-1)[..., :n]
        return keep.reshape(groups.shape).scatter_(-1, lowest, False).reshape(score.shape)
    count = int(score.shape[1] * sparsity)
    if count == 0:
        return keep
    lowest = score.topk(count, dim=1, largest=False).indices
    return keep.scatter_(1, lowest, False)


@torch.no_grad()
def wanda_prune(model: nn.Module, calibration: list[torch.Tensor], sparsity: float,
                n_of_m: tuple[int, int] | None = None) -> None:
    """Wanda (or n:m Wanda) on every decoder Linear, from activation norms on `calibration`."""
    norms = input_norms(model, calibration)
    for name, module in prunable_linears(model).items():
        module.weight.mul_(wanda_mask(module.weight, norms[name], sparsity, n_of_m).to(module.weight.dtype))


# ---- depth pruning -------------------------------------------------------------------------------------


@contextmanager
def _layer_states(layers: nn.ModuleList, states: list[list[torch.Tensor]]) -> Iterator[None]:
    """Record each layer's input hidden state (states[i]) and the last layer's output (states[-1])."""

    def before(i):
        def hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            states[i].append(hidden.detach()[0].float().cpu())
        return hook

    def after(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        states[-1].append(hidden.detach()[0].float().cpu())

    hooks = [layer.register_forward_pre_hook(before(i), with_kwargs=True) for i, layer in enumerate(layers)]
    hooks.append(layers[-1].register_forward_hook(after))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows (tokens) of arccos(cosine similarity) / pi: 0 for the same direction, 1 for opposite."""
    cos = nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).clamp(-1.0, 1.0)
    return float((torch.arccos(cos) / math.pi).mean())


@torch.no_grad()
def block_distances(model: nn.Module, calibration: list[torch.Tensor], n: int) -> list[float]:
    """distances[l]: angular distance between the input of layer l and the output of layer l + n - 1."""
    layers = decoder_layers(model)
    if not 1 <= n < len(layers):
        raise ValueError(f"compress.drop_layers={n}: the model has {len(layers)} layers; drop 1..{len(layers) - 1}")
    states: list[list[torch.Tensor]] = [[] for _ in range(len(layers) + 1)]
    device = next(model.parameters()).device
    with _layer_states(layers, states):
        for ids in calibration:
            model(input_ids=ids.to(device), use_cache=False)
    joined = [torch.cat(s) for s in states]
    return [angular_distance(joined[start], joined[start + n]) for start in range(len(layers) - n + 1)]


def choose_layers_to_drop(model: nn.Module, calibration: list[torch.Tensor], n: int) -> tuple[list[int], list[float]]:
    """The n consecutive layers whose removal changes the hidden states least, and every block's distance."""
    distances = block_distances(model, calibration, n)
    start = min(range(len(distances)), key=distances.__getitem__)
    return list(range(start, start + n)), distances


def drop_layers(model: nn.Module, drop: list[int]) -> None:
    """Remove decoder layers `drop` in place; renumber the rest (KV-cache slots) and the config."""
    layers = decoder_layers(model)
    kept = [layer for i, layer in enumerate(layers) if i not in set(drop)]
    for index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    layers_parent_swap(model, nn.ModuleList(kept))
    config = model.config
    if getattr(config, "layer_types", None):
        config.layer_types = [t for i, t in enumerate(config.layer_types) if i not in set(drop)]
    config.num_hidden_layers = len(kept)


def layers_parent_swap(model: nn.Module, new_layers: nn.ModuleList) -> None:
    """Put `new_layers` where `decoder_layers(model)` found the old list."""
    old = decoder_layers(model)
    for module in model.modules():
        for name, child in module.named_children():
            if child is old:
                setattr(module, name, new_layers)
                return
    raise ValueError("decoder layers not found")
