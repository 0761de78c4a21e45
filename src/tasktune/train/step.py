"""Pure pieces of one optimizer step: the masked loss and the token counts it is normalised by."""

from __future__ import annotations

import inspect
from functools import cache

import torch
import torch.nn.functional as F

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


@cache
def _accepts_logits_to_keep(forward_owner: type) -> bool:
    return "logits_to_keep" in inspect.signature(forward_owner.forward).parameters


def _base_class(model: torch.nn.Module) -> type:
    """The Hugging Face model class under DDP and peft wrappers."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return type(model)


def summed_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the token cross-entropies over all target positions of the batch.

    Logits are computed only where a target exists (`logits_to_keep` as a boolean mask): with a
    49k vocabulary and loss on assistant tokens only, most of the output projection is skipped.
    """
    targets = shifted_targets(batch["labels"])
    keep = targets != IGNORE
    inputs = {"input_ids": batch["input_ids"], "use_cache": False}
    if batch.get("position_ids") is not None:
        inputs["position_ids"] = batch["position_ids"]
    if batch.get("attention_mask") is not None:
        inputs["attention_mask"] = batch["attention_mask"]
    if _accepts_logits_to_keep(_base_class(model)):
        logits = model(**inputs, logits_to_keep=keep).logits
        logits = logits.reshape(-1, logits.shape[-1])
    else:
        logits = model(**inputs).logits[keep]
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum")
