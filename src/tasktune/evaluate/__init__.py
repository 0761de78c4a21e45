"""Evaluation: batched greedy generation (optionally constrained) or label log-likelihood, parsed and scored
by the task, written as predictions.jsonl + metrics.json + a printed report.

generate.py (batched generation), constrain.py (choice trie, JSON schema), loglik.py (label scoring),
runner.py (rows, checkpoint, evaluate_task, training evaluator), report.py (metrics.json, files, text).
"""

from tasktune.evaluate.generate import GenerationResult, generate_texts
from tasktune.evaluate.loglik import LoglikResult, score_choices
from tasktune.evaluate.runner import (
    evaluate_task,
    load_eval_rows,
    make_training_evaluator,
    resolve_eval_model,
    run_eval,
)

__all__ = [
    "GenerationResult",
    "LoglikResult",
    "evaluate_task",
    "generate_texts",
    "load_eval_rows",
    "make_training_evaluator",
    "resolve_eval_model",
    "run_eval",
    "score_choices",
]
