"""Tasks: read task data, turn rows into conversations, parse model outputs and score them (no model here).

Each task is a module following `tasktune.tasks.base.Task`: name, read, to_messages, parse, score,
output_constraint.
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from pathlib import Path

from tasktune.config.schema import ConfigError
from tasktune.config.task import TaskConfig
from tasktune.tasks import classify, mt, ner, qa
from tasktune.tasks.base import Task, TaskRow

TASKS: dict[str, Task] = {module.name: module for module in (ner, classify, qa, mt)}  # type: ignore[misc]


def get_task(name: str) -> Task:
    """The task registered under `name`, or a ConfigError that suggests the closest name."""
    if name in TASKS:
        return TASKS[name]
    close = difflib.get_close_matches(name, TASKS, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(TASKS)}"
    raise ConfigError(f"unknown task {name!r} ({hint})")


def resolve_labels(spec: TaskConfig) -> tuple[TaskConfig, str | None]:
    """The spec with `labels` filled from train_file (else eval_file) when the task needs them and none are
    set, and the report line saying what was inferred (None when nothing was)."""
    if spec.labels or spec.name not in ("ner", "classify"):
        return spec, None
    path = spec.train_file or spec.eval_file
    if path is None:
        raise ConfigError("task.labels is not set and there is no train_file or eval_file to infer it from")
    module = ner if spec.name == "ner" else classify
    labels, report = module.infer_labels(Path(path), spec)
    if not labels:
        raise ConfigError(f"no labels found in {path}: set task.labels")
    return replace(spec, labels=labels), report


__all__ = ["TASKS", "Task", "TaskConfig", "TaskRow", "get_task", "resolve_labels"]
