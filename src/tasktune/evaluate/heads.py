"""Head inference and scoring: rows -> windows -> logits -> labels / entities / answer spans, scored by the
task's own `score` and written in the same predictions.jsonl + metrics.json schema as generation.

ner windows overlap: each word takes its tag from the window where it sits farthest from an edge. qa: the
best span over all windows of a row by start + end logit, at most max_answer_length tokens, inside the
context. Scores: classify, the probability of every label; ner, per entity the mean probability of its
words' tags; qa, the probability of the span (start times end, softmax over the window's context).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tasktune.config.load import save_config
from tasktune.config.schema import Config, ConfigError
from tasktune.config.task import TaskConfig
from tasktune.data.report import DataError
from tasktune.evaluate.report import (
    HEADLINE,
    degenerate_warning,
    format_report,
    task_metrics,
    write_jsonl,
    write_outputs,
)
from tasktune.evaluate.runner import (  # is_correct and is_main_process: shared with generation
    default_eval_dir,
    eval_model_config,
    is_correct,
    is_main_process,
    load_eval_rows,
    metric_for_best,
    task_spec,
)
from tasktune.model.head_data import collate, encode_rows, tags_to_entities
from tasktune.model.heads import TaskHead, find_head_dir, load_head
from tasktune.tasks import get_task, ner

TOP_SPANS = 20
"""qa: start and end candidates tried per window."""


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def _forward_all(model: TaskHead, units: list[dict[str, Any]], pad_id: int, batch_size: int,
                 progress: bool) -> list[dict[str, torch.Tensor]]:
    """Outputs per unit (CPU, float32, cut to the unit's length); similar lengths batched together."""
    model.eval()
    device = _device(model)
    order = sorted(range(len(units)), key=lambda i: -len(units[i]["input_ids"]))
    outputs: list[dict[str, torch.Tensor]] = [{} for _ in units]
    keys = ("input_ids", "attention_mask", "token_type_ids")
    for start in tqdm(range(0, len(order), batch_size), disable=not progress, desc="head", unit="batch"):
        chosen = order[start : start + batch_size]
        batch = collate([units[i] for i in chosen], pad_id)
        result = model(**{k: v.to(device) for k, v in batch.items() if k in keys})
        for row, i in enumerate(chosen):
            n = len(units[i]["input_ids"])
            outputs[i] = {k: (v[row] if k == "logits" and v.dim() == 2 else v[row, :n]).float().cpu()
                          for k, v in result.items()}
    return outputs


def _classify(model: TaskHead, output: dict[str, torch.Tensor]) -> tuple[str, dict[str, float]]:
    probs = output["logits"].softmax(-1).tolist()
    labels = model.info.labels
    best = max(range(len(probs)), key=probs.__getitem__)
    return labels[best], {label: round(p, 6) for label, p in zip(labels, probs, strict=True)}


def _ner(model: TaskHead, text: str, words, units, outputs) -> tuple[list[dict[str, Any]], list[float]]:
    """Tags per word from the window where the word is farthest from an edge; entities with mean tag prob."""
    chosen: dict[int, tuple[int, int, float]] = {}  # word -> (margin, tag, probability)
    for unit, output in zip(units, outputs, strict=True):
        index = torch.tensor(unit["word_index"])
        keep = index >= 0
        if not keep.any():
            continue
        logits = output["logits"]
        path = model.tag_paths(logits.unsqueeze(0), keep.unsqueeze(0))[0]
        probs = logits[keep].softmax(-1)
        positions = keep.nonzero().squeeze(1).tolist()
        edge_first, edge_last = positions[0], positions[-1]
        for k, (position, tag) in enumerate(zip(positions, path, strict=True)):
            word = int(index[position])
            margin = min(position - edge_first, edge_last - position)
            if word not in chosen or margin > chosen[word][0]:
                chosen[word] = (margin, tag, float(probs[k, tag]))
    outputs_names = model.info.outputs
    tags = [outputs_names[chosen[w][1]] if w in chosen else "O" for w in range(len(words))]
    entities = tags_to_entities(text, words, tags)
    scores = []
    for entity in entities:
        inside = [w for w, (s, _) in enumerate(words) if entity["start"] <= s < entity["end"] and w in chosen]
        scores.append(round(sum(chosen[w][2] for w in inside) / max(1, len(inside)), 6))
    return entities, scores


def _qa(model: TaskHead, context: str, units, outputs, max_answer_length: int):
    """The best span over the windows: (answer text or None, {probability, start, end})."""
    best: tuple[float, int, int, float] | None = None  # (start + end logit, char start, char end, probability)
    for unit, output in zip(units, outputs, strict=True):
        inside = [i for i, span in enumerate(unit["offsets"]) if span is not None]
        if not inside:
            continue
        where = torch.tensor(inside)
        start_logits, end_logits = output["start_logits"][where], output["end_logits"][where]
        start_probs, end_probs = start_logits.softmax(0), end_logits.softmax(0)
        k = min(TOP_SPANS, len(inside))
        for s in start_logits.topk(k).indices.tolist():
            for e in end_logits.topk(k).indices.tolist():
                if not 0 <= inside[e] - inside[s] < max_answer_length:
                    continue
                value = float(start_logits[s] + end_logits[e])
                if best is None or value > best[0]:
                    probability = float(start_probs[s] * end_probs[e])
                    best = (value, unit["offsets"][inside[s]][0], unit["offsets"][inside[e]][1], probability)
    if best is None:
        return None, {"probability": 0.0, "start": None, "end": None}
    _, start, end, probability = best
    return context[start:end], {"probability": round(probability, 6), "start": start, "end": end}


def predict_rows(model: TaskHead, tokenizer, rows: list[Any], spec: TaskConfig, batch_size: int = 32,
                 progress: bool = False) -> list[tuple[Any, Any]]:
    """(prediction, scores) per row. classify: (label, {label: probability}); ner: ([{type, text, start,
    end}], [probability per entity]); qa: (answer or None, {probability, start, end})."""
    return _predict(model, tokenizer, rows, spec, batch_size, progress)[0]


def _predict(model, tokenizer, rows, spec, batch_size, progress) -> tuple[list[tuple[Any, Any]], int]:
    """predict_rows, and how many classify texts were cut to max_seq_length."""
    spec = model.info.reading(spec)
    encoded = encode_rows(rows, spec, tokenizer)
    outputs = _forward_all(model, encoded.units, tokenizer.pad_token_id, batch_size, progress)
    by_row: list[list[int]] = [[] for _ in rows]
    for i, unit in enumerate(encoded.units):
        by_row[unit["row"]].append(i)
    results = []
    for number, row in enumerate(rows):
        units = [encoded.units[i] for i in by_row[number]]
        row_outputs = [outputs[i] for i in by_row[number]]
        if spec.name == "classify":
            results.append(_classify(model, row_outputs[0]))
        elif spec.name == "ner":
            results.append(_ner(model, row.text, encoded.words[number], units, row_outputs))
        else:
            results.append(_qa(model, row.context, units, row_outputs, spec.max_answer_length))
    return results, encoded.truncated


# ---- scoring and files ---------------------------------------------------------------------------------


def _render(task: str, prediction: Any, spec: TaskConfig, row: Any) -> str:
    """The prediction as the generative route would have written it (the `output` field)."""
    if task == "ner":
        entities = [ner.Entity(p["type"], p["text"], p["start"], p["end"]) for p in prediction]
        return ner.target(row.text, entities, spec)
    return prediction or ""


def _reference(task: str, row: Any) -> Any:
    if task == "ner":
        return [{"type": e.type, "text": e.text, "start": e.start, "end": e.end} for e in row.entities]
    return row.label if task == "classify" else row.answers


def score_rows(model: TaskHead, tokenizer, rows: list[Any], spec: TaskConfig, batch_size: int,
               progress: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any], float, int]:
    """(predictions.jsonl records, the task's `score` result, seconds of inference, texts truncated)."""
    started = time.perf_counter()
    results, truncated = _predict(model, tokenizer, rows, spec, batch_size, progress)
    seconds = time.perf_counter() - started
    predictions = [prediction for prediction, _ in results]
    records = [
        {
            "id": row.id,
            "input": {"question": row.question, "context": row.context} if spec.name == "qa" else row.text,
            "reference": _reference(spec.name, row),
            "output": _render(spec.name, prediction, spec, row),
            "prediction": prediction,
            "correct": is_correct(spec.name, prediction, row, spec),
            "scores": scores,
        }
        for row, (prediction, scores) in zip(rows, results, strict=True)
    ]
    return records, get_task(spec.name).score(predictions, rows, spec), seconds, truncated


def evaluate_heads(cfg: Config, model: TaskHead, tokenizer, rows: list[Any] | None = None,
                   out_dir: str | Path | None = None, progress: bool = True,
                   model_description: str | None = None) -> dict[str, Any]:
    """Score a head on the task's eval.split rows (or `rows`): the same metrics.json / predictions.jsonl as
    `evaluate_task`, plus per-row `scores`. Prints the report; returns the metrics."""
    spec = task_spec(cfg)
    if rows is None:
        rows = load_eval_rows(cfg, spec)[0]
    if not rows:
        raise DataError(f"no valid rows to score in the {cfg.eval.split} split")
    records, scores, seconds, truncated = score_rows(model, tokenizer, rows, spec, cfg.eval.rows(False), progress)
    metrics = {
        "task": spec.name,
        **task_metrics(spec.name, scores, rows),
        "truncated_rate": truncated / len(rows),
        "examples_per_s": len(rows) / seconds if seconds else 0.0,
        "generated_tokens_per_s": 0.0,
        "seconds": seconds,
        "model": model_description or model.info.base_model,
        "split": cfg.eval.split,
        "constrained": False,
        "scoring": "head",
        "max_new_tokens": None,
    }
    if out_dir is not None:
        out = Path(out_dir)
        write_outputs(out, records, metrics)
        save_config(replace(cfg, task=spec), out / "config.yaml")
    print(format_report(metrics))
    if out_dir is not None:
        print(f"predictions and metrics in {out_dir}")
    return metrics


def head_checkpoint(cfg: Config) -> tuple[Path, str]:
    """The trained head eval.checkpoint selects (auto: best/ or the final adapter/model in output.dir)."""
    if cfg.eval.checkpoint == "base":
        raise ConfigError("eval.checkpoint=base: a task head is new, there is no base model to score; "
                          "use auto or a trained head's directory")
    model_cfg, description = eval_model_config(cfg)
    path = model_cfg.adapter or model_cfg.name_or_path
    try:
        return find_head_dir(path), description
    except FileNotFoundError:
        raise ConfigError(f"no trained task head for eval.checkpoint={cfg.eval.checkpoint} in "
                          f"output.dir={cfg.output.dir}: train first (task.method=head) or name a head's "
                          "directory") from None


def run_head_eval(cfg: Config) -> dict[str, Any]:
    """`tasktune eval` for task.method=head: load the head, score it, write to `default_eval_dir`."""
    task_spec(cfg)
    path, description = head_checkpoint(cfg)
    model, tokenizer = load_head(path, cfg.model)
    if torch.cuda.is_available():
        model = model.to("cuda")
    print(f"scoring {description}")
    return evaluate_heads(cfg, model, tokenizer, out_dir=default_eval_dir(cfg), model_description=description)


def make_head_evaluator(cfg: Config):
    """The training loop's scorer for heads: as `make_training_evaluator`, on a fixed sample of
    eval.during_training_limit rows of task.eval_file."""
    spec = task_spec(cfg)
    metric = metric_for_best(spec.name, cfg.eval.metric_for_best)
    rows, _ = load_eval_rows(cfg, spec, split="eval", limit=cfg.eval.during_training_limit)
    if not rows:
        raise DataError(f"no valid rows in task.eval_file={spec.eval_file} to score during training")
    steps_dir = Path(cfg.output.dir) / "eval_steps"

    def evaluate(model: TaskHead, tokenizer, step: int) -> dict[str, float]:
        records, scores, seconds, _ = score_rows(model, tokenizer, rows, spec, cfg.eval.rows(False), progress=False)
        if is_main_process():
            write_jsonl(records, steps_dir / f"step-{step}" / "predictions.jsonl")
            warning = degenerate_warning(spec.name, scores)
            if warning:
                print(f"\n!!! step {step}: {warning} !!!", flush=True)
        result = {key: float(scores[key]) for key in (*HEADLINE[spec.name], metric)}
        result["parse_failure_rate"] = float(scores["parse_failure_rate"])
        result["examples_per_s"] = len(rows) / seconds if seconds else 0.0
        result["metric"] = result[metric]
        return result

    return evaluate
