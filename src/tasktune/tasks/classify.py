"""Text classification as generation: the model answers with one label name."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasktune.config.schema import ConfigError
from tasktune.config.task import TaskConfig
from tasktune.data.messages import Conversation, RowError
from tasktune.tasks.base import conversation, iter_records, row_error, row_id
from tasktune.tasks.metrics import format_table, macro, prf, ratio

name = "classify"

TEXT_FIELDS = ("text", "sentence", "text_a", "content", "review")
"""Columns tried in order for the input text when task.text_field is not set."""


@dataclass
class ClassifyRow:
    id: str
    source: str
    text: str
    label: str


# ---- reading -------------------------------------------------------------------------------------------


def _label_id(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def infer_labels(path: str | Path, spec: TaskConfig) -> tuple[list[str], str]:
    """Label names found in a file, and a one-line report with their counts.

    Integer labels are ids: names come from a `label_text` column when present (else the id itself), in id
    order. Named labels are sorted alphabetically.
    """
    label_field = spec.label_field or "label"
    counts: Counter[Any] = Counter()
    names: dict[int, str] = {}
    for _, record in iter_records(path):
        if isinstance(record, RowError) or record.get(label_field) in (None, ""):
            continue
        value = record[label_field]
        index = _label_id(value)
        if index is not None and index >= 0:
            counts[index] += 1
            if isinstance(record.get("label_text"), str):
                names.setdefault(index, record["label_text"])
        else:
            counts[str(value)] += 1
    if counts and all(isinstance(k, int) for k in counts):
        labels = [names.get(i, str(i)) for i in range(max(counts) + 1)]
        listed = ", ".join(f"{i}={labels[i]} ({counts[i]})" for i in range(len(labels)))
    else:
        labels = sorted(str(k) for k in counts)
        listed = ", ".join(f"{label} ({counts[label]})" for label in labels)
    return labels, f"inferred {len(labels)} labels from {path}: {listed}"


def read(path: str | Path, spec: TaskConfig) -> Iterator[ClassifyRow | RowError]:
    """Rows of a JSONL/JSON/CSV/TSV file with a text column and a label (a name or an integer id).

    Without task.labels the labels are inferred from task.train_file (or this file).
    """
    labels = spec.labels or infer_labels(spec.train_file or path, spec)[0]
    label_field = spec.label_field or "label"
    for source, record in iter_records(path):
        yield (
            record
            if isinstance(record, RowError)
            else _from_record(record, source, spec, labels, label_field)
        )


def _from_record(
    record: dict[str, Any], source: str, spec: TaskConfig, labels: list[str], label_field: str
) -> ClassifyRow | RowError:
    text_field = spec.text_field or next((f for f in TEXT_FIELDS if f in record), TEXT_FIELDS[0])
    text = record.get(text_field)
    if not isinstance(text, str):
        return row_error("missing_field", source, f"no string field {text_field!r}")
    if not text.strip():
        return row_error("empty_text", source, f"{text_field!r} is empty")
    value = record.get(label_field)
    if value is None or value == "":
        return row_error("missing_field", source, f"no label in {label_field!r}")
    index = _label_id(value)
    if isinstance(value, str) and value in labels:
        label = value
    elif index is not None and 0 <= index < len(labels):
        label = labels[index]
        named = record.get("label_text")
        if isinstance(named, str) and named != label:
            return row_error(
                "label_mismatch", source, f"label id {index} is {label!r} but label_text is {named!r}"
            )
    else:
        return row_error("unknown_label", source, f"{value!r} is not one of {labels} (or an id into them)")
    return ClassifyRow(row_id(record, source), source, text, label)


# ---- prompting -----------------------------------------------------------------------------------------


def instruction(spec: TaskConfig) -> str:
    if spec.instruction:
        return spec.instruction
    if not spec.labels:
        raise ConfigError("task.labels is not set: list the labels or infer them from train_file")
    labels = spec.labels
    if spec.label_descriptions:
        listed = "\n".join(
            f"- {label}: {spec.label_descriptions.get(label, '')}".rstrip(": ") for label in labels
        )
        return f"Classify the text with one of these labels:\n{listed}\nAnswer with the label only."
    return f"Classify the text as one of: {', '.join(labels)}. Answer with the label only."


def to_messages(row: ClassifyRow, spec: TaskConfig) -> Conversation:
    return conversation(instruction(spec), row.text, row.label, row, {"reference": row.label})


def output_constraint(spec: TaskConfig) -> dict[str, Any] | None:
    return {"type": "choice", "choices": list(spec.labels)} if spec.labels else None


# ---- parsing -------------------------------------------------------------------------------------------


def _normal(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .,:;!?\"'`*")


def parse(output: str, row: ClassifyRow | None, spec: TaskConfig) -> str | None:
    """The label the output names: an exact match ignoring case and spaces, else the one label the output
    starts with (as a whole word), else None."""
    labels = spec.labels or []
    said = _normal(output)
    exact = [label for label in labels if _normal(label) == said]
    if exact:
        return exact[0]
    starts = [label for label in labels if _starts_with_word(said, _normal(label))]
    return starts[0] if len(starts) == 1 else None


def _starts_with_word(text: str, word: str) -> bool:
    if not word or not text.startswith(word):
        return False
    rest = text[len(word) :]
    return not rest or not (
        rest[0].isascii() and rest[0].isalnum() and word[-1].isascii() and word[-1].isalnum()
    )


# ---- scoring -------------------------------------------------------------------------------------------


def score(predictions: list[str | None], rows: list[ClassifyRow], spec: TaskConfig) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class P/R/F1/support and the confusion matrix (rows: true, columns: predicted).

    An unparsed output (None, or a name outside the labels) is wrong and is counted in `unparsed`.
    """
    if len(predictions) != len(rows):
        raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows")
    labels = list(spec.labels) if spec.labels else sorted({r.label for r in rows})
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    unparsed = [0] * len(labels)
    for prediction, row in zip(predictions, rows, strict=True):
        if prediction in index:
            matrix[index[row.label]][index[prediction]] += 1
        else:
            unparsed[index[row.label]] += 1
    per_class = {}
    for i, label in enumerate(labels):
        support = sum(matrix[i]) + unparsed[i]
        predicted = sum(line[i] for line in matrix)
        if support or predicted:
            per_class[label] = prf(matrix[i][i], predicted, support)
    averages = macro(per_class)
    failures = sum(p not in index for p in predictions)
    return {
        "n": len(rows),
        "accuracy": ratio(sum(matrix[i][i] for i in range(len(labels))), len(rows)),
        "macro_f1": averages["f1"],
        "parse_failure_rate": ratio(failures, len(rows)),
        "parse_failures": failures,
        "macro": averages,
        "per_class": per_class,
        "confusion": {"labels": labels, "matrix": matrix, "unparsed": unparsed},
    }


def confusion_table(matrix: list[list[int]], labels: list[str], unparsed: list[int] | None = None) -> str:
    """The confusion matrix as text: one row per true label, one column per predicted label."""
    headers = ["true \\ predicted", *labels] + (["unparsed"] if unparsed else [])
    lines = [[label, *matrix[i]] + ([unparsed[i]] if unparsed else []) for i, label in enumerate(labels)]
    return format_table(lines, headers)


def per_class_table(scores: dict[str, Any]) -> str:
    """Per-class precision, recall, F1 and support of a `score` result, as text."""
    rows = [
        [label, s["precision"], s["recall"], s["f1"], s["support"]]
        for label, s in scores["per_class"].items()
    ]
    return format_table(rows, ["label", "precision", "recall", "f1", "support"])


def plot_confusion(matrix: list[list[int]], labels: list[str], path: str | Path) -> Path:
    """Write the confusion matrix as a PNG heat map with counts (matplotlib, no display needed)."""
    from matplotlib.figure import Figure

    size = 1.6 + 0.6 * len(labels)
    figure = Figure(figsize=(size + 1, size))
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes)
    ticks = range(len(labels))
    axes.set_xticks(ticks, labels, rotation=45, ha="right")
    axes.set_yticks(ticks, labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    peak = max((max(line) for line in matrix), default=0)
    for i, line in enumerate(matrix):
        for j, count in enumerate(line):
            axes.text(
                j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black"
            )
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, format="png", dpi=100)
    return path
