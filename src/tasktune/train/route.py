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
from tasktune.config.task import check_task_list, task_aliases
from tasktune.data.collate import collate
from tasktune.data.pipeline import PreparedData, build_datasets, load_conversations, mix_datasets
from tasktune.data.report import RejectReport
from tasktune.model.adapters import prepare_for_training, save_trained
from tasktune.model.fused import use_fused_blocks
from tasktune.model.head_data import build_head_data
from tasktune.model.head_data import collate as head_collate
from tasktune.model.head_data import count_targets as head_targets
from tasktune.model.heads import build_head, save_head
from tasktune.model.heads import summed_loss as head_loss
from tasktune.model.load import load_model
from tasktune.runtime import resolve_precision
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
    step_metrics: Callable[[Callable[[torch.Tensor], torch.Tensor]], dict[str, float]] | None = None
    """Metrics of the training batches since the last call, logged with the loss (given a sum over processes),
    e.g. the preference stages' rewards/chosen, rejected, accuracy, margin."""


def resolve_task(cfg: Config) -> None:
    """Fill task.labels from the data when unset, so the saved config says what was trained."""
    if cfg.task.name:
        cfg.task.check()
        cfg.task, note = resolve_labels(cfg.task)
        if note:
            print(note)
    check_task_list(cfg.tasks, cfg.task)
    for i, spec in enumerate(cfg.tasks):  # multi-task: each task's labels, the same way
        cfg.tasks[i], note = resolve_labels(spec)
        if note:
            print(f"{task_aliases(cfg.tasks)[i]}: {note}")


def build_sft_data(cfg: Config, tokenizer: Any, out_dir: Path | None) -> PreparedData:
    """Conversations from the task's train_file (when a task is set) plus data.datasets, then encoded."""
    if not cfg.data.datasets and not (cfg.task.name and cfg.task.train_file) and not cfg.tasks:
        raise ConfigError("nothing to train on: set data.datasets, or task.name with task.train_file")
    report = RejectReport()
    groups = []
    if cfg.task.name and cfg.task.train_file:
        groups.append(task_conversations(cfg.task, cfg.task.train_file, report))
    if cfg.tasks:  # multi-task: every task's rows, resampled to its weighted share of the mixture
        aliases = task_aliases(cfg.tasks)
        missing = [alias for alias, spec in zip(aliases, cfg.tasks, strict=True) if not spec.train_file]
        if missing:
            raise ConfigError(f"tasks {missing}: no train_file to train on")
        loaded = [task_conversations(spec, spec.train_file, report) for spec in cfg.tasks]
        groups.extend(mix_datasets(loaded, [spec.weight for spec in cfg.tasks], cfg.data.seed, aliases))
    if cfg.data.datasets:
        groups.extend(load_conversations(cfg.data, report))
    return build_datasets(cfg.data, tokenizer, out_dir, conversations=groups, report=report)


def _build_causal_lm(cfg: Config) -> torch.nn.Module:
    if cfg.train.finetuning == "qlora":
        from tasktune.model.kbit import load_quantized

        base = load_quantized(cfg.model, gradient_checkpointing=cfg.train.gradient_checkpointing)
        return prepare_for_training(base, cfg.train, cfg.lora)
    model = load_model(cfg.model, frozen_base_dtype(cfg))
    if cfg.train.fused_blocks:
        use_fused_blocks(model)
    return prepare_for_training(model, cfg.train, cfg.lora)


def frozen_base_dtype(cfg: Config) -> torch.dtype | None:
    """bf16 for the frozen base of a LoRA run under bf16 mixed precision (model.dtype=auto): half the weight
    memory and no per-step bf16 copies of the weights; peft keeps the adapter itself in fp32. None: as set."""
    if cfg.model.dtype != "auto" or cfg.train.finetuning != "lora":
        return None
    return torch.bfloat16 if resolve_precision(cfg.train.mixed_precision) == "bf16" else None


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
    if cfg.train.stage != "sft":
        from tasktune.train.preference_route import preference_route

        return preference_route(cfg)
    return HEAD if cfg.task.method == "head" else GENERATIVE


# ---- logit distillation (tasktune compress) ------------------------------------------------------------


def logit_distill_route(kd: Any, teacher: torch.nn.Module | None = None, topk: Any = None) -> Route:
    """The generative route with the KD loss of `train.distill` (`alpha * KD + (1 - alpha) * CE` on the target
    tokens): the teacher's logits on the fly under no_grad, or its cached top-k (`TopKCache`, whose units
    carry `kd_index`, passed on to the batch). Used by `tasktune compress` as `train(cfg, route=...)`."""
    from dataclasses import replace
    from functools import partial

    from tasktune.train.distill import distill_summed_loss

    kd.check()

    def collate_indexed(units: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
        batch = collate(units, pad_id)
        if topk is not None:
            batch["kd_index"] = torch.tensor([u["kd_index"] for u in units], dtype=torch.long)
        return batch

    return replace(GENERATIVE, collate=collate_indexed,
                   summed_loss=partial(distill_summed_loss, kd=kd, teacher=teacher, topk=topk))
