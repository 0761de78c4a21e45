"""AdamW over the trainable parameters and the warmup + decay learning-rate schedule."""

from __future__ import annotations

import math

import torch

from tasktune.config.schema import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, plus_ratio: float = 0.0) -> torch.optim.AdamW:
    """AdamW; weight decay skips biases and norm weights (1-D tensors).

    plus_ratio > 0 is LoRA+ (Hayou et al. 2024): the LoRA B matrices learn at plus_ratio x the learning rate.
    """
    decay, no_decay, lora_b = [], [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            if plus_ratio > 0 and "lora_B" in name:
                lora_b.append(param)
            else:
                (decay if param.ndim >= 2 else no_decay).append(param)
    if not decay and not no_decay and not lora_b:
        raise ValueError("no trainable parameters: check train.finetuning and lora.target_modules")
    if plus_ratio > 0 and not lora_b:
        raise ValueError("lora.plus_ratio is set but the model has no LoRA B matrices (train.finetuning=lora?)")
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        {"params": lora_b, "weight_decay": cfg.weight_decay, "lr": cfg.learning_rate * plus_ratio},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    warmup = int(round(cfg.warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, cfg.lr_scheduler)
    )
