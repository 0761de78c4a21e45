"""Score a model on a task: rows -> prompts -> greedy generation (or label log-likelihood) -> parse -> score.

`tasktune eval` calls `run_eval`; the training loop calls the function `make_training_evaluator` returns.
Per-example `correct`: ner = the predicted (type, start, end) spans equal the reference; classify = same
label; qa = exact match with a reference (the task's normalisation); mt = null (BLEU/chrF/TER are corpus
scores, and no per-sentence threshold says "correct").
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from tasktune.config.load import save_config
from tasktune.config.schema import Config, ConfigError, ModelConfig
from tasktune.config.task import TaskConfig
from tasktune.data.report import DataError, RejectReport
from tasktune.evaluate.generate import generate_texts
from tasktune.evaluate.loglik import score_choices
from tasktune.evaluate.ranks import is_main_process, split_choices, split_generate
from tasktune.evaluate.report import (
    HEADLINE,
    degenerate_warning,
    format_report,
    task_metrics,
    write_jsonl,
    write_outputs,
)
from tasktune.runtime import frozen_gc
from tasktune.tasks import get_task, resolve_labels, task_rows

DEFAULT_MAX_NEW_TOKENS = {"ner": 256, "classify": 16, "qa": 64, "mt": 256}
"""Generation budget per example when eval.max_new_tokens is not set."""
DEFAULT_METRIC = {"ner": "f1", "classify": "macro_f1", "qa": "f1", "mt": "bleu"}
"""metric_for_best by task. classify: macro_f1, which a model answering one label for everything cannot
raise (accuracy can, on unbalanced data)."""
BEST_METRICS = {
    "ner": ("f1", "precision", "recall", "macro_f1", "partial_f1", "text_f1"),
    "classify": ("accuracy", "macro_f1"),
    "qa": ("f1", "exact_match"),
    "mt": ("bleu", "chrf"),
}
"""Metrics eval.metric_for_best may name (all higher-is-better; TER is refused, not negated)."""
SPLIT_FILES = {"eval": "eval_file", "test": "test_file", "train": "train_file"}

Evaluator = Callable[[Any, Any, int], dict[str, float]]


# ---- rows ----------------------------------------------------------------------------------------------


def task_spec(cfg: Config) -> TaskConfig:
    """cfg.task checked, with labels inferred from the data when unset."""
    if not cfg.task.name:
        raise ConfigError("task.name is not set: evaluation scores a task (ner, classify, qa or mt)")
    cfg.task.check()
    cfg.eval.check()
    spec, note = resolve_labels(cfg.task)
    if note:
        print(note)
    return spec


def sample_rows(rows: list[Any], limit: int | None, seed: int) -> list[Any]:
    """At most `limit` rows, drawn with `seed` (the same rows on every call), kept in file order."""
    if limit is None or limit >= len(rows):
        return list(rows)
    chosen = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in chosen]


def load_eval_rows(
    cfg: Config, spec: TaskConfig | None = None, split: str | None = None, limit: int | None = None,
    rejected_path: Path | None = None,
) -> tuple[list[Any], RejectReport]:
    """Valid rows of the `eval.split` file (a seeded sample of `eval.limit`) and the report of rejected rows.

    split / limit override eval.split / eval.limit; task.train_range (split train) or task.eval_range
    (eval, test) slices the valid rows before sampling. Rejected rows are written to `rejected_path` when
    given; more than data.max_rejected_share rejected stops with a DataError, as in training.
    """
    spec = spec or task_spec(cfg)
    split = split or cfg.eval.split
    path = getattr(spec, SPLIT_FILES[split])
    if not path:
        raise ConfigError(f"eval.split={split} needs task.{SPLIT_FILES[split]}")
    report = RejectReport()
    rows = task_rows(spec, path, report, spec.train_range if split == "train" else spec.eval_range)
    if rejected_path is not None:
        report.write(rejected_path)
    if len(report):
        print(report.summary(total=len(rows) + len(report)))
    report.check(cfg.data.max_rejected_share, len(rows) + len(report))
    return sample_rows(rows, limit or cfg.eval.limit, cfg.eval.seed), report


# ---- model ---------------------------------------------------------------------------------------------


def eval_model_config(cfg: Config) -> tuple[ModelConfig, str]:
    """The model config eval.checkpoint selects, and a description of it for the report."""
    base, choice = cfg.model, cfg.eval.checkpoint
    adapter = f" + adapter {base.adapter}" if base.adapter else ""
    if choice == "base":
        return base, f"{base.name_or_path}{adapter}"
    if choice == "auto":
        out = Path(cfg.output.dir)
        for candidate in (out / "best" / "adapter", out / "best" / "model", out / "adapter", out / "model"):
            if candidate.is_dir():
                return _from_dir(base, candidate)
        return base, f"{base.name_or_path}{adapter} (no trained output in {out})"
    path = Path(choice)
    if not path.is_dir():
        raise ConfigError(f"eval.checkpoint={choice!r}: expected auto, base or an existing directory")
    return _from_dir(base, path)


def _from_dir(base: ModelConfig, path: Path) -> tuple[ModelConfig, str]:
    if (path / "adapter_config.json").is_file():
        return replace(base, adapter=str(path)), f"adapter {path} on {base.name_or_path}"
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path}: neither an adapter (adapter_config.json) nor a model (config.json)")
    return replace(base, name_or_path=str(path), adapter=None), f"model {path}"


def resolve_eval_model(cfg: Config):
    """(model, tokenizer, description) for eval.checkpoint: auto | base | an adapter or model directory.

    The model is loaded for read-only generation (`model.load.load_for_inference`: bf16 where the hardware runs
    it, the adapter folded in, the lean forward on the CPU) and goes to the GPU when there is one; the tokenizer
    pads on the left.
    """
    import torch

    from tasktune.model.load import load_for_inference, load_tokenizer

    model_cfg, description = eval_model_config(cfg)
    model, how = load_for_inference(model_cfg, gpu=torch.cuda.is_available())
    if how:
        description = f"{description} ({how})"
    return model, load_tokenizer(model_cfg, padding_side="left"), description


# ---- scoring -------------------------------------------------------------------------------------------


@dataclass
class Scored:
    records: list[dict[str, Any]]
    """One predictions.jsonl line per row."""
    scores: dict[str, Any]
    """The task's `score` result."""
    seconds: float
    generated_tokens: int
    truncated: int
    constrained: bool
    max_new_tokens: int


def _constraint(cfg: Config, spec: TaskConfig, rows: list[Any]) -> dict[str, Any] | list[Any] | None:
    """The task's output constraint, or one per row where the task builds them (`row_constraint`, e.g. ner
    inline: copy the row's text); on by default for classify and for per-row constraints."""
    task = get_task(spec.name)
    row_hook = getattr(task, "row_constraint", None)
    per_row = [row_hook(row, spec) for row in rows] if row_hook is not None else []
    default = spec.name == "classify" or any(per_row)
    if not (cfg.eval.constrained if cfg.eval.constrained is not None else default):
        return None
    constraint = task.output_constraint(spec)
    if any(per_row):
        return [own or constraint for own in per_row]
    if constraint is None:
        raise ConfigError(f"eval.constrained=true, but task {spec.name!r} (with these settings) has no output "
                          "constraint: set eval.constrained=false")
    return constraint


def is_correct(task: str, prediction: Any, row: Any, spec: TaskConfig) -> bool | None:
    if task == "ner":
        return get_task("ner").exact_match(prediction, row)
    if task == "classify":
        return prediction == row.label
    if task == "qa":
        return prediction is not None and get_task("qa").score([prediction], [row], spec)["exact_match"] == 1.0
    return None


def _prompt(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation without its final assistant message (the reference answer)."""
    return messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages


@frozen_gc()  # the model's and tokenizer's objects stay out of full collections (runtime.frozen_gc)
def predict(cfg: Config, spec: TaskConfig, model, tokenizer, rows: list[Any], progress: bool = True,
            generator: Callable[..., Any] | None = None, split_across_ranks: bool = False) -> Scored:
    """Generate (or pick by log-likelihood) an answer for every row, parse it and score the lot.

    generator: replaces `generate_texts` (same signature), e.g. `evaluate.gguf.gguf_generator`; it decodes
    without the task's constraint. split_across_ranks: in a distributed run (replicated weights), each
    process answers its share of the rows and all of them score the whole list (`evaluate.ranks`)."""
    task = get_task(spec.name)
    conversations = [task.to_messages(row, spec) for row in rows]
    prompts = [_prompt(c.as_dicts()) for c in conversations]
    budget = cfg.eval.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[spec.name]
    constraint = None
    if cfg.eval.scoring == "loglik":
        if spec.name != "classify":
            raise ConfigError(f"eval.scoring=loglik works for classify only, not {spec.name}")
        choose = partial(split_choices, score_choices) if split_across_ranks else score_choices
        result = choose(model, tokenizer, prompts, list(spec.labels), cfg.eval.rows(False), progress)
        texts, seconds, tokens, truncated = [spec.labels[k] for k in result.choices], result.seconds, 0, 0
    else:
        constraint = _constraint(cfg, spec, rows) if generator is None else None
        generate = generator or partial(generate_texts, draft_tokens=cfg.eval.draft_tokens,
                                        copy_drafts=cfg.eval.copy_drafts)
        if split_across_ranks:
            generate = partial(split_generate, generate)
        generated = generate(model, tokenizer, prompts, budget, cfg.eval.rows(True), constraint, progress)
        texts, seconds = generated.texts, generated.seconds
        tokens, truncated = generated.generated_tokens, sum(generated.truncated)
    predictions = [task.parse(text, row, spec) for text, row in zip(texts, rows, strict=True)]
    records = [
        {
            "id": row.id,
            "input": {"question": row.question, "context": row.context} if spec.name == "qa" else row.text,
            "reference": conversation.meta["reference"],
            "output": text,
            "prediction": prediction,
            "correct": is_correct(spec.name, prediction, row, spec),
        }
        for row, conversation, text, prediction in zip(rows, conversations, texts, predictions, strict=True)
    ]
    scores = task.score(predictions, rows, spec)
    return Scored(records, scores, seconds, tokens, truncated, constraint is not None, budget)


def evaluate_task(
    cfg: Config,
    model,
    tokenizer,
    rows: list[Any] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    model_description: str | None = None,
    generator: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Score `model` on the task's eval.split rows (or `rows`); print the report and return the metrics.
    `generator` replaces the generation core (see `predict`).

    With out_dir: writes predictions.jsonl, metrics.json, config.yaml (labels resolved) and, for classify,
    confusion.png there.
    """
    spec = task_spec(cfg)
    rejected = None
    if rows is None:
        rows, rejected = load_eval_rows(cfg, spec, rejected_path=Path(out_dir) / "rejected.jsonl" if out_dir else None)
    if not rows:
        raise DataError(f"no valid rows to score in the {cfg.eval.split} split")
    scored = predict(cfg, spec, model, tokenizer, rows, progress, generator)
    n = len(rows)
    metrics = {
        "task": spec.name,
        **task_metrics(spec.name, scored.scores, rows),
        "truncated_rate": scored.truncated / n,
        "examples_per_s": n / scored.seconds if scored.seconds else 0.0,
        "generated_tokens_per_s": scored.generated_tokens / scored.seconds if scored.seconds else 0.0,
        "seconds": scored.seconds,
        "model": model_description or getattr(model.config, "_name_or_path", type(model).__name__),
        "split": cfg.eval.split,
        "constrained": scored.constrained,
        "scoring": cfg.eval.scoring,
        "max_new_tokens": scored.max_new_tokens,
    }
    if rejected is not None:  # rows of the split file that could not be scored (every one in rejected.jsonl)
        metrics["rejected"] = len(rejected)
        metrics["rejected_by_reason"] = rejected.counts()
    if out_dir is not None:
        out = Path(out_dir)
        write_outputs(out, scored.records, metrics)
        save_config(replace(cfg, task=spec), out / "config.yaml")
    print(format_report(metrics))
    if out_dir is not None:
        print(f"predictions and metrics in {out_dir}")
    return metrics


def default_eval_dir(cfg: Config) -> Path:
    """eval.output_dir, else OUTPUT_DIR/eval (split eval) or OUTPUT_DIR/eval-<split>."""
    if cfg.eval.output_dir:
        return Path(cfg.eval.output_dir)
    name = "eval" if cfg.eval.split == "eval" else f"eval-{cfg.eval.split}"
    return Path(cfg.output.dir) / name


def run_eval(cfg: Config) -> dict[str, Any]:
    """`tasktune eval`: load the eval.checkpoint model, score it, write the files to `default_eval_dir`.

    task.method=head goes to `evaluate.heads.run_head_eval`; a multi-task config (`tasks:`) to
    `evaluate.multitask.run_multitask_eval` (one folder per task plus summary.json).
    """
    if cfg.tasks:
        from tasktune.evaluate.multitask import run_multitask_eval

        return run_multitask_eval(cfg)
    if cfg.task.method == "head":
        from tasktune.evaluate.heads import run_head_eval

        return run_head_eval(cfg)
    task_spec(cfg)  # config errors before the model loads
    cfg.output.check()
    model, tokenizer, description = resolve_eval_model(cfg)
    print(f"scoring {description}")
    return evaluate_task(cfg, model, tokenizer, out_dir=default_eval_dir(cfg), model_description=description)


# ---- during training -----------------------------------------------------------------------------------


def metric_for_best(task: str, name: str | None) -> str:
    """eval.metric_for_best checked against the task (default DEFAULT_METRIC); TER is refused."""
    name = name or DEFAULT_METRIC[task]
    if name == "ter":
        raise ConfigError("eval.metric_for_best=ter: lower TER is better and the best checkpoint keeps the "
                          "highest value; use bleu or chrf")
    if name not in BEST_METRICS[task]:
        raise ConfigError(f"eval.metric_for_best={name!r} for {task}: expected one of {', '.join(BEST_METRICS[task])}")
    return name


def make_training_evaluator(cfg: Config, steps_dir: Path | None = None) -> Evaluator:
    """A scorer for the training loop: a fixed seeded sample of eval.during_training_limit rows of
    task.eval_file; returns the headline metrics, parse_failure_rate and "metric" (eval.metric_for_best).

    Writes nothing but STEPS_DIR/step-N/predictions.jsonl (default OUTPUT_DIR/eval_steps; main process only).
    task.method=head gets `evaluate.heads.make_head_evaluator`; multi-task configs (`tasks:`)
    `evaluate.multitask.make_multitask_evaluator`.
    """
    if cfg.tasks:
        from tasktune.evaluate.multitask import make_multitask_evaluator

        return make_multitask_evaluator(cfg)
    if cfg.task.method == "head":
        from tasktune.evaluate.heads import make_head_evaluator

        return make_head_evaluator(cfg)
    spec = task_spec(cfg)
    metric = metric_for_best(spec.name, cfg.eval.metric_for_best)
    rows, _ = load_eval_rows(cfg, spec, split="eval", limit=cfg.eval.during_training_limit)
    if not rows:
        raise DataError(f"no valid rows in task.eval_file={spec.eval_file} to score during training")
    _constraint(cfg, spec, rows[:1])  # config errors now, not at the first eval step
    steps_dir = Path(steps_dir or Path(cfg.output.dir) / "eval_steps")

    def evaluate(model, tokenizer, step: int, split_across_ranks: bool = False) -> dict[str, float]:
        scored = predict(cfg, spec, model, tokenizer, rows, progress=is_main_process(),
                         split_across_ranks=split_across_ranks)
        if is_main_process():
            write_jsonl(scored.records, steps_dir / f"step-{step}" / "predictions.jsonl")
            warning = degenerate_warning(spec.name, scored.scores)
            if warning:
                print(f"\n!!! step {step}: {warning} !!!", flush=True)
        result = {key: float(scored.scores[key]) for key in (*HEADLINE[spec.name], metric)}
        result["parse_failure_rate"] = float(scored.scores["parse_failure_rate"])
        result["examples_per_s"] = len(rows) / scored.seconds if scored.seconds else 0.0
        result["metric"] = result[metric]
        return result

    evaluate.splits_across_ranks = True  # type: ignore[attr-defined]  # evaluate_once: every DDP process, split
    return evaluate


def model_dir_scorer(cfg: Config) -> Callable[[Path], dict[str, float]]:
    """Score any model directory on the task's eval split (eval.limit rows): for `tasktune export` to show
    what merging or quantizing cost. Files go to <model dir>/../eval-<model dir name>. A multi-task config
    (`tasks:`) scores every task: `mean` and `ALIAS/METRIC` for each task's headline metrics."""
    spec = None if cfg.tasks else task_spec(cfg)

    def score(model_dir: Path) -> dict[str, float]:
        out = Path(model_dir).parent / f"eval-{Path(model_dir).name.lstrip('.')}"
        local = replace(cfg, eval=replace(cfg.eval, checkpoint=str(model_dir), output_dir=str(out)))
        metrics = run_eval(local)
        if spec is None:
            from tasktune.evaluate.multitask import flat_summary

            return flat_summary(metrics)
        keys = (*HEADLINE[spec.name], "parse_failure_rate", "examples_per_s")
        return {key: float(metrics[key]) for key in keys if isinstance(metrics.get(key), (int, float))}

    return score


__all__ = ["Scored", "default_eval_dir", "evaluate_task", "eval_model_config", "load_eval_rows",
           "make_training_evaluator", "metric_for_best", "predict", "resolve_eval_model", "run_eval",
           "model_dir_scorer", "sample_rows", "task_spec"]
