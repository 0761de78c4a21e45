"""Tasks: read task data, turn rows into conversations, parse model outputs and score them (no model here).

Each task is a module following `tasktune.tasks.base.Task`: name, read, to_messages, parse, score,
output_constraint.
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from pathlib import Path

from tasktune.config.schema import ConfigError
from tasktune.config.task import TaskConfig, row_slice
from tasktune.data.messages import Conversation, RowError
from tasktune.data.report import RejectReport
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




def task_rows(spec: TaskConfig, path: str | Path, report: RejectReport, rows: str | None = None) -> list[TaskRow]:
    """Valid rows of a task file (bad ones go to the report with their file:line), sliced by `rows`."""
    valid: list[TaskRow] = []
    for item in get_task(spec.name).read(path, spec):
        if isinstance(item, RowError):
            report.add(item.source or str(path), item)
        else:
            valid.append(item)
    return valid[row_slice(rows)]


def task_conversations(spec: TaskConfig, path: str | Path, report: RejectReport) -> list[Conversation]:
    """The rows of task.train_range of a task file as training conversations."""
    task = get_task(spec.name)
    conversations: list[Conversation] = []
    for row in task_rows(spec, path, report, spec.train_range):
        try:
            conversations.append(task.to_messages(row, spec))
        except RowError as err:
            report.add(row.source, err)
    return conversations


__all__ = ["TASKS", "Task", "TaskConfig", "TaskRow", "get_task", "resolve_labels", "task_conversations", "task_rows"]
