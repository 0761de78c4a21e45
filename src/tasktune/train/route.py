"""What differs between training routes; the loop itself is the same for all of them.

The generative route tunes a causal LM on conversations (loss on assistant tokens). The head route
(task.method=head) plugs in its own model, data, batches and loss through the same `Route` fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tasktune.config.schema import Config, ConfigError
from tasktune.data.collate import collate
from tasktune.data.pipeline import PreparedData, build_datasets, load_conversations
from tasktune.data.report import RejectReport
from tasktune.model.adapters import prepare_for_training, save_trained
from tasktune.model.head_data import build_head_data
from tasktune.model.head_data import collate as head_collate
from tasktune.model.head_data import count_targets as head_targets
from tasktune.model.heads import build_head, save_head
from tasktune.model.heads import summed_loss as head_loss
from tasktune.model.load import load_model
from tasktune.tasks import resolve_labels, task_conversations
from tasktune.train.step import count_targets, summed_loss


@dataclass(frozen=True)
class Route:
    build_model: Callable[[Config], torch.nn.Module]
    """The model, loaded and prepared for training (adapters, frozen layers)."""
    build_data: Callable[[Config, Any, Path | None], PreparedData]
    """Training and validation units; writes rejected.jsonl when given an output directory."""
    collate: Callable[[list[dict[str, Any]], int], dict[str, torch.Tensor]]
    """Units -> a batch of tensors (the int is the tokenizer's pad id)."""
    summed_loss: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    """Sum of the per-target losses of a batch."""
    count_targets: Callable[[dict[str, torch.Tensor]], int]
    """Targets in a batch: the loss of a step is divided by their total."""
    save: Callable[[torch.nn.Module, Any, Path, str], Path]
    """Write the trained adapter or model (and tokenizer) under a directory."""


def resolve_task(cfg: Config) -> None:
    """Fill task.labels from the data when unset, so the saved config says what was trained."""
    if cfg.task.name:
        cfg.task.check()
        cfg.task, note = resolve_labels(cfg.task)
        if note:
            print(note)


def build_sft_data(cfg: Config, tokenizer: Any, out_dir: Path | None) -> PreparedData:
    """Conversations from the task's train_file (when a task is set) plus data.datasets, then encoded."""
    if not cfg.data.datasets and not (cfg.task.name and cfg.task.train_file):
        raise ConfigError("nothing to train on: set data.datasets, or task.name with task.train_file")
    report = RejectReport()
    groups = []
    if cfg.task.name and cfg.task.train_file:
        groups.append(task_conversations(cfg.task, cfg.task.train_file, report))
    if cfg.data.datasets:
        groups.extend(load_conversations(cfg.data, report))
    return build_datasets(cfg.data, tokenizer, out_dir, conversations=groups, report=report)


def _build_causal_lm(cfg: Config) -> torch.nn.Module:
    return prepare_for_training(load_model(cfg.model), cfg.train, cfg.lora)


GENERATIVE = Route(
    build_model=_build_causal_lm,
    build_data=build_sft_data,
    collate=collate,
    summed_loss=summed_loss,
    count_targets=count_targets,
    save=save_trained,
)


HEAD = Route(
    build_model=build_head,
    build_data=build_head_data,
    collate=head_collate,
    summed_loss=head_loss,
    count_targets=head_targets,
    save=save_head,
)
"""task.method=head: a classification / tagging / span head on the model (model.heads, model.head_data)."""


def route_for(cfg: Config) -> Route:
    return HEAD if cfg.task.method == "head" else GENERATIVE
