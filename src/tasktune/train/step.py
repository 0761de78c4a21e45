"""Pure pieces of one optimizer step: the masked loss and the token counts it is normalised by."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import torch
import torch.nn.functional as F

from tasktune.model.attention import cpu_attention
from tasktune.train.fused_ce import final_hidden_states, final_norm_and_head, linear_cross_entropy_sum

IGNORE = -100


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Targets aligned with the logits: position t predicts labels[t + 1]; the last position predicts nothing."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE)


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def count_input_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Real (non-padding) tokens in a batch, for tokens/s."""
    if "num_tokens" in batch:
        return int(batch["num_tokens"])
    if "attention_mask" in batch and batch["attention_mask"] is not None:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def tuner_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The peft adapter layers (LoRA, ...) of a model, found once."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def autocast_casts_inputs(layers: list[torch.nn.Module]) -> Iterator[None]:
    """Inside autocast: leave casting the inputs of these adapter layers to autocast.

    A peft layer casts its input to its adapter's weight dtype (fp32) and autocast casts it straight back
    to bf16/fp16 for the matmul: a copy and a copy back (and two more in backward) per LoRA layer, with the
    same numbers as without them. Outside autocast (generation, a bf16 base with fp32 adapters) the cast is
    needed, so it is switched off only for what runs inside this block. Like
    `peft.helpers.disable_input_dtype_casting`, without walking the model on every call.
    """
    saved = [getattr(layer, "cast_input_dtype_enabled", True) for layer in layers]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for layer, value in zip(layers, saved, strict=True):
            layer.cast_input_dtype_enabled = value


@cache
def _accepts_logits_to_keep(forward_owner: type) -> bool:
    return "logits_to_keep" in inspect.signature(forward_owner.forward).parameters


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model under DDP and peft wrappers."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def _base_class(model: torch.nn.Module) -> type:
    return type(_base_model(model))


def summed_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the token cross-entropies over all target positions of the batch.

    Only target positions reach the output projection (with a 49k vocabulary and loss on assistant tokens
    only, most of it is skipped), and for the usual decoder families the projection and the loss are fused
    (train/fused_ce.py): no [targets, vocabulary] logits are kept for backward. On the CPU, attention shares
    one additive mask across layers and keeps unrepeated key/value heads (model/attention.py).
    """
    with cpu_attention(model, short_queries=False):
        return _summed_loss(model, batch)


def _summed_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    targets = shifted_targets(batch["labels"])
    keep = targets != IGNORE
    inputs = {"input_ids": batch["input_ids"], "use_cache": False}
    if batch.get("position_ids") is not None:
        inputs["position_ids"] = batch["position_ids"]
    if batch.get("attention_mask") is not None:
        inputs["attention_mask"] = batch["attention_mask"]
    base_class = _base_class(model)
    if not _accepts_logits_to_keep(base_class):
        return F.cross_entropy(model(**inputs).logits[keep].float(), targets[keep], reduction="sum")
    fused = final_norm_and_head(_base_model(model))
    if fused is not None:
        norm, head = fused
        hidden = final_hidden_states(model, norm, inputs, keep)
        return linear_cross_entropy_sum(hidden, head.weight, targets[keep])
    logits = model(**inputs, logits_to_keep=keep).logits
    logits = logits.reshape(-1, logits.shape[-1])
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum")
