"""Metric helpers shared by the tasks: P/R/F1 from counts, macro averages, rates, text tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, 0.0 when the denominator is 0."""
    return numerator / denominator if denominator else 0.0


def prf(tp: int, predicted: int, gold: int) -> dict[str, float | int]:
    """Precision, recall and F1 from true positives and the predicted and gold counts (0 when undefined)."""
    precision = ratio(tp, predicted)
    recall = ratio(tp, gold)
    f1 = ratio(2 * precision * recall, precision + recall)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "predicted": predicted,
        "support": gold,
    }


def macro(per_class: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Unweighted mean of precision, recall and F1 over the classes given."""
    n = len(per_class)
    return {
        key: ratio(sum(scores[key] for scores in per_class.values()), n)
        for key in ("precision", "recall", "f1")
    }


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned, floats with 4 decimals."""

    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    table = [[str(h) for h in headers]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]

    def render(line: list[str]) -> str:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(table[0]), rule, *(render(line) for line in table[1:])])
