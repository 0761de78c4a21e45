"""Multi-task runs (`tasks:`): every task scored with its own metric, by `tasktune eval` and during training.

`tasktune eval` loads the model once and writes, under the eval folder (OUTPUT_DIR/eval by default), one
folder per task alias with that task's predictions.jsonl + metrics.json, and summary.json: each task's
headline metrics and the mean of their default metrics (ner f1, classify macro_f1, qa f1, mt bleu / 100).
The training evaluator logs `ALIAS/METRIC` for every task and picks the best checkpoint by that mean, or
by the one metric eval.metric_for_best names (`ner/f1`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from tasktune.config.schema import Config, ConfigError
from tasktune.config.task import check_task_list, task_aliases
from tasktune.evaluate.report import HEADLINE
from tasktune.evaluate.runner import (
    DEFAULT_METRIC,
    SPLIT_FILES,
    Evaluator,
    default_eval_dir,
    evaluate_task,
    make_training_evaluator,
    metric_for_best,
    resolve_eval_model,
)
from tasktune.tasks.metrics import format_table

MEAN = "mean"
"""summary.json / training-log key of the mean of the tasks' default metrics."""
PERCENT_METRICS = ("bleu", "chrf", "ter")
"""Metrics on a 0-100 scale, divided by 100 before they enter the mean."""


def task_configs(cfg: Config) -> dict[str, Config]:
    """alias -> a single-task copy of `cfg` for each entry of cfg.tasks (eval.scoring=loglik applies to
    classify tasks only; eval.metric_for_best is left to the multi-task level)."""
    check_task_list(cfg.tasks, cfg.task)
    configs = {}
    for alias, spec in zip(task_aliases(cfg.tasks), cfg.tasks, strict=True):
        scoring = cfg.eval.scoring if spec.name == "classify" else "generate"
        local_eval = replace(cfg.eval, scoring=scoring, metric_for_best=None)
        configs[alias] = replace(cfg, task=spec, tasks=[], eval=local_eval)
    return configs


def selected_metric(cfg: Config) -> tuple[str, str] | None:
    """(alias, metric) named by eval.metric_for_best as ALIAS/METRIC; None: the mean of the tasks."""
    name = cfg.eval.metric_for_best
    if name is None or name == MEAN:
        return None
    aliases = dict(zip(task_aliases(cfg.tasks), cfg.tasks, strict=True))
    alias, _, metric = name.partition("/")
    if not metric or alias not in aliases:
        first, spec = next(iter(aliases.items()))
        raise ConfigError(f"eval.metric_for_best={name!r}: a multi-task run names ALIAS/METRIC with ALIAS one of "
                          f"{', '.join(aliases)} (e.g. {first}/{DEFAULT_METRIC[spec.name]}), or leave it unset for "
                          "the mean of the tasks")
    return alias, metric_for_best(aliases[alias].name, metric)


def default_metric_value(task: str, metrics: dict[str, Any]) -> float:
    """A task's default metric on a 0-1 scale (BLEU and chrF divided by 100)."""
    name = DEFAULT_METRIC[task]
    value = float(metrics[name])
    return value / 100 if name in PERCENT_METRICS else value


def summarise(per_task: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """summary.json: the mean of the default metrics, then per task its headline metrics and default metric."""
    tasks = {}
    for alias, metrics in per_task.items():
        task = metrics["task"]
        tasks[alias] = {
            "task": task, "n": metrics["n"],
            **{k: metrics[k] for k in HEADLINE[task]},
            "metric": DEFAULT_METRIC[task], "metric_value": default_metric_value(task, metrics),
            "parse_failure_rate": metrics.get("parse_failure_rate"),
            "examples_per_s": metrics.get("examples_per_s"),
        }  # fmt: skip
    mean = sum(t["metric_value"] for t in tasks.values()) / len(tasks)
    return {MEAN: mean, "tasks": tasks}


def flat_summary(summary: dict[str, Any]) -> dict[str, float]:
    """summary.json as one flat mapping: `mean`, then `ALIAS/METRIC` for each task's headline metrics."""
    flat = {MEAN: float(summary[MEAN])}
    for alias, scores in summary["tasks"].items():
        flat.update({f"{alias}/{key}": float(scores[key]) for key in HEADLINE[scores["task"]]
                     if isinstance(scores.get(key), (int, float))})
    return flat


def format_summary(summary: dict[str, Any]) -> str:
    rows = [[alias, t["task"], t["n"], t["metric"], t["metric_value"], t["parse_failure_rate"] or 0.0]
            for alias, t in summary["tasks"].items()]
    table = format_table(rows, ["task", "kind", "n", "metric", "value", "parse failures"])
    return f"== multi-task summary | mean {summary[MEAN]:.4f} ==\n{table}"


def run_multitask_eval(cfg: Config) -> dict[str, Any]:
    """`tasktune eval` of a multi-task config: the model loaded once, each task scored into its own folder
    under the eval folder, summary.json beside them. Returns the summary."""
    configs = task_configs(cfg)
    selected_metric(cfg)  # config errors before the model loads
    key = SPLIT_FILES[cfg.eval.split]
    missing = [alias for alias, local in configs.items() if not getattr(local.task, key)]
    if missing:
        raise ConfigError(f"eval.split={cfg.eval.split} needs {key} in every task; missing in: {', '.join(missing)}")
    model, tokenizer, description = resolve_eval_model(cfg)
    print(f"scoring {description} on {len(configs)} tasks: {', '.join(configs)}")
    base = default_eval_dir(cfg)
    per_task = {}
    for alias, local in configs.items():
        print(f"\n-- {alias} --")
        per_task[alias] = evaluate_task(local, model, tokenizer, out_dir=base / alias,
                                        model_description=description)
    summary = {"model": description, "split": cfg.eval.split, **summarise(per_task)}
    base.mkdir(parents=True, exist_ok=True)
    (base / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print("\n" + format_summary(summary))
    print(f"per-task predictions and metrics in {base}/<task>/, summary in {base / 'summary.json'}")
    return summary


def make_multitask_evaluator(cfg: Config) -> Evaluator:
    """The training-time scorer of a multi-task run: each task with an eval_file scored on its own fixed
    sample (eval.during_training_limit rows each); returns `ALIAS/METRIC` for all of them, `mean` and
    "metric" (the mean, or the ALIAS/METRIC eval.metric_for_best names). Predictions go to
    OUTPUT_DIR/eval_steps/ALIAS/step-N/."""
    chosen = selected_metric(cfg)
    configs = {alias: local for alias, local in task_configs(cfg).items() if local.task.eval_file}
    skipped = [alias for alias in task_aliases(cfg.tasks) if alias not in configs]
    if not configs:
        raise ConfigError("train.eval_steps is set but no task in `tasks` has an eval_file to score")
    if chosen is not None and chosen[0] not in configs:
        raise ConfigError(f"eval.metric_for_best={cfg.eval.metric_for_best!r}: task {chosen[0]} has no eval_file")
    if skipped:
        print(f"not scored during training (no eval_file): {', '.join(skipped)}")
    steps_root = Path(cfg.output.dir) / "eval_steps"
    evaluators = {alias: make_training_evaluator(local, steps_dir=steps_root / alias)
                  for alias, local in configs.items()}

    def evaluate(model, tokenizer, step: int) -> dict[str, float]:
        result: dict[str, float] = {}
        values = []
        for alias, scorer in evaluators.items():
            metrics = scorer(model, tokenizer, step)
            result.update({f"{alias}/{k}": v for k, v in metrics.items() if k != "metric"})
            values.append(default_metric_value(configs[alias].task.name, metrics))
        result[MEAN] = sum(values) / len(values)
        result["metric"] = result[MEAN] if chosen is None else result[f"{chosen[0]}/{chosen[1]}"]
        return result

    return evaluate


__all__ = ["make_multitask_evaluator", "run_multitask_eval", "selected_metric", "summarise", "task_configs"]
