"""What an evaluation writes and prints: metrics.json (headline metrics at the top), predictions.jsonl,
confusion.png (classify) and a plain-text report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasktune.tasks import classify
from tasktune.tasks.metrics import format_table

HEADLINE = {
    "ner": ("f1", "precision", "recall"),
    "classify": ("accuracy", "macro_f1"),
    "qa": ("exact_match", "f1"),
    "mt": ("bleu", "chrf", "ter"),
}
"""The metrics each task reports first (and returns to the training loop)."""


def task_metrics(task: str, scores: dict[str, Any], rows: list[Any]) -> dict[str, Any]:
    """A task's `score` result reshaped for metrics.json: headline first, then the other numbers, then the
    breakdown under a fixed name (ner per_type, classify per_class + confusion, mt per_direction)."""
    flat = {k: v for k, v in scores.items() if not isinstance(v, dict)}
    metrics = {"n": flat.pop("n"), **{k: flat.pop(k) for k in HEADLINE[task]}, **flat}
    if task == "ner":
        metrics["per_type"] = scores["strict"]["per_type"]
        metrics["partial_per_type"] = scores["partial"]["per_type"]
    elif task == "classify":
        metrics["per_class"] = scores["per_class"]
        metrics["confusion"] = scores["confusion"]
    elif task == "mt":
        metrics["per_direction"] = scores.get("by_direction") or {
            f"{rows[0].src_lang}-{rows[0].tgt_lang}": {k: v for k, v in metrics.items() if k in _MT_KEYS}
        }
    elif "by_script" in scores:
        metrics["by_script"] = scores["by_script"]
    return metrics


_MT_KEYS = ("n", "bleu", "chrf", "ter", "bleu_signature", "chrf_signature", "ter_signature")


def degenerate_warning(task: str, scores: dict[str, Any]) -> str | None:
    """A loud line when a model answered the same for the whole sample (ner: no entity at all; classify: one
    label for every text), which F1 alone hides behind a zero; None otherwise."""
    n = scores.get("n", 0)
    if task == "ner" and n and scores.get("predicted_entities", 1) == 0:
        return (f"WARNING: the model predicted NO entity in any of the {n} examples (a collapsed model; see "
                "README 'Heads that do not collapse' for the causes and the recipe)")
    if task == "classify" and n > 1:
        used = [label for label, s in scores.get("per_class", {}).items() if s.get("predicted")]
        if len(used) == 1 and len(scores["per_class"]) > 1:
            return f"WARNING: the model answered {used[0]!r} for all {n} examples (a collapsed model)"
    return None


def format_report(metrics: dict[str, Any]) -> str:
    """Headline line, speed line and the task's breakdown table(s)."""
    task = metrics["task"]
    headline = "  ".join(f"{k} {metrics[k]:.4f}" for k in HEADLINE[task])
    title = f"== {task} | split {metrics.get('split')} | {metrics['n']} examples | {metrics.get('model')} =="
    truncated = metrics.get("truncated_rate", 0.0)
    if metrics.get("scoring") == "head":
        lines = [title, f"{headline}  inputs cut to max_seq_length {truncated:.1%}",
                 f"{metrics['examples_per_s']:.2f} examples/s (task head)"]
    else:
        decoding = "log-likelihood" if metrics.get("scoring") == "loglik" else (
            "constrained decoding" if metrics.get("constrained") else "free decoding")
        lines = [title,
                 f"{headline}  parse failures {metrics['parse_failure_rate']:.1%}  "
                 f"cut by max_new_tokens {truncated:.1%}",
                 f"{metrics['examples_per_s']:.2f} examples/s, {metrics['generated_tokens_per_s']:.1f} generated "
                 f"tokens/s ({decoding})"]
    warning = degenerate_warning(task, metrics)
    if warning:
        lines.append(f"!!! {warning} !!!")
    table = _breakdown_table(task, metrics)
    if table:
        lines += ["", table]
    if task == "classify":
        confusion = metrics["confusion"]
        lines += ["", classify.confusion_table(confusion["matrix"], confusion["labels"], confusion["unparsed"])]
    return "\n".join(lines)


def _breakdown_table(task: str, metrics: dict[str, Any]) -> str | None:
    if task in ("ner", "classify"):
        key, name = ("per_type", "type") if task == "ner" else ("per_class", "label")
        rows = [[k, s["precision"], s["recall"], s["f1"], s["support"]] for k, s in metrics[key].items()]
        return format_table(rows, [name, "precision", "recall", "f1", "support"]) if rows else None
    if task == "mt":
        rows = [[k, s["n"], s["bleu"], s["chrf"], s["ter"]] for k, s in metrics["per_direction"].items()]
        return format_table(rows, ["direction", "n", "bleu", "chrf", "ter"])
    if "by_script" in metrics:
        rows = [[k, s["n"], s["exact_match"], s["f1"]] for k, s in metrics["by_script"].items()]
        return format_table(rows, ["script", "n", "exact_match", "f1"])
    return None


def write_jsonl(records: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def write_outputs(out_dir: Path, records: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    """predictions.jsonl, metrics.json and, for classify, confusion.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(records, out_dir / "predictions.jsonl")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    if metrics["task"] == "classify":
        confusion = metrics["confusion"]
        classify.plot_confusion(confusion["matrix"], confusion["labels"], out_dir / "confusion.png")
