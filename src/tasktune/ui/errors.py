"""The error browser's logic: filter predictions.jsonl, classify NER errors, confusion pairs for classify.

NER errors of one sentence, matched in this order (each entity used once):
correct (same type, same span) -> wrong_type (same span, other type) -> wrong_boundary (overlapping span,
same type) -> wrong_type_and_boundary (overlapping span, other type) -> missed (gold left over) and
spurious (prediction left over, including text that is not in the sentence at all).
Spans are found by locating each entity's text in the sentence (gold in order of appearance; a predicted
text that occurs several times takes the occurrence closest to an unmatched gold entity).
"""

from __future__ import annotations

import html
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("correct", "missed", "spurious", "wrong_type", "wrong_boundary", "wrong_type_and_boundary")
COLORS = {"correct": "#c8f7c5", "missed": "#ffd6a5", "spurious": "#ffadad", "wrong_type": "#bdb2ff",
          "wrong_boundary": "#9bf6ff", "wrong_type_and_boundary": "#fdffb6"}


@dataclass
class Span:
    type: str
    text: str
    start: int | None
    """None: the text does not occur in the sentence."""
    end: int | None

    def overlaps(self, other: Span) -> bool:
        return (self.start is not None and other.start is not None
                and self.start < other.end and other.start < self.end)

    def same_span(self, other: Span) -> bool:
        return self.start is not None and (self.start, self.end) == (other.start, other.end)


@dataclass
class NerError:
    kind: str
    gold: Span | None
    predicted: Span | None


def _occurrences(needle: str, text: str) -> list[tuple[int, int]]:
    found, start = [], text.find(needle) if needle else -1
    while start != -1:
        found.append((start, start + len(needle)))
        start = text.find(needle, start + 1)
    return found


def locate_gold(text: str, entities: list[dict[str, Any]]) -> list[Span]:
    """Gold entities (listed in order of appearance) with their spans."""
    spans, cursor = [], 0
    for entity in entities:
        hits = _occurrences(entity["text"], text)
        after = [h for h in hits if h[0] >= cursor]
        start, end = (after or hits or [(None, None)])[0]
        if end is not None and after:
            cursor = start + 1
        spans.append(Span(entity["type"], entity["text"], start, end))
    return spans


def locate_predicted(text: str, entities: list[dict[str, Any]], gold: list[Span]) -> list[Span]:
    """Predicted entities with spans: an occurrence that matches or overlaps a gold span is preferred."""
    spans, used = [], set()
    for entity in entities:
        hits = [h for h in _occurrences(entity["text"], text) if h not in used] or _occurrences(entity["text"], text)
        if not hits:
            spans.append(Span(entity["type"], entity["text"], None, None))
            continue

        def rank(hit: tuple[int, int], entity=entity) -> tuple[int, int]:
            probe = Span(entity["type"], entity["text"], *hit)
            exact = any(g.same_span(probe) for g in gold)
            near = any(g.overlaps(probe) for g in gold)
            return (0 if exact else 1 if near else 2, hit[0])

        hit = min(hits, key=rank)
        used.add(hit)
        spans.append(Span(entity["type"], entity["text"], *hit))
    return spans


def classify_ner(text: str, gold: list[dict[str, Any]], predicted: list[dict[str, Any]] | None) -> list[NerError]:
    """Every gold and predicted entity of one sentence, each with its kind (see the module docstring).

    `predicted` None (an output that did not parse) counts as no entities, as the scorer does.
    """
    gold_spans = locate_gold(text, gold)
    pred_spans = locate_predicted(text, predicted or [], gold_spans)
    left_gold, left_pred = list(gold_spans), list(pred_spans)
    results: list[NerError] = []
    rules = (
        ("correct", lambda g, p: p.type == g.type and (p.same_span(g) or (p.start is None and p.text == g.text))),
        ("wrong_type", lambda g, p: p.type != g.type and (p.same_span(g) or p.text == g.text)),
        ("wrong_boundary", lambda g, p: p.type == g.type and p.overlaps(g)),
        ("wrong_type_and_boundary", lambda g, p: p.type != g.type and p.overlaps(g)),
    )
    for kind, matches in rules:
        for g in list(left_gold):
            p = next((p for p in left_pred if matches(g, p)), None)
            if p is not None:
                left_gold.remove(g)
                left_pred.remove(p)
                results.append(NerError(kind, g, p))
    results += [NerError("missed", g, None) for g in left_gold]
    results += [NerError("spurious", None, p) for p in left_pred]
    return sorted(results, key=lambda e: _position(e))


def _position(error: NerError) -> tuple[int, int]:
    spans = [s for s in (error.gold, error.predicted) if s is not None and s.start is not None]
    return (min(s.start for s in spans), 0) if spans else (1 << 30, 0)


def error_counts(records: list[dict[str, Any]]) -> Counter[str]:
    """NER error kinds over prediction records."""
    counts: Counter[str] = Counter()
    for record in records:
        if isinstance(record.get("input"), str):
            counts.update(e.kind for e in classify_ner(record["input"], record.get("reference") or [],
                                                         record.get("prediction")))
    return counts


def highlight_ner(text: str, errors: list[NerError]) -> str:
    """The sentence as HTML, each entity (gold or predicted) marked with its error kind's colour."""
    marks = []
    for error in errors:
        span = error.gold if error.gold is not None and error.gold.start is not None else error.predicted
        if span is not None and span.start is not None:
            marks.append((span.start, span.end, error))
    marks.sort(key=lambda m: (m[0], -m[1]))
    out, cursor, hidden = [], 0, []
    for start, end, error in marks:
        if start < cursor:  # overlapping marks: the outer one is drawn, this one listed below
            hidden.append(error)
            continue
        out.append(html.escape(text[cursor:start]))
        out.append(f'<mark class="ner-{error.kind}" style="background:{COLORS[error.kind]}" '
                   f'title="{html.escape(_describe(error))}">{html.escape(text[start:end])}'
                   f"<sub>{html.escape(_label(error))}</sub></mark>")
        cursor = end
    out.append(html.escape(text[cursor:]))
    extra = [e for e in errors if e.predicted is not None and e.predicted.start is None]
    for title, shown in (("not in the sentence", extra), ("overlapping the marks above", hidden)):
        if shown:
            out.append(f"<br><small>{title}: " + ", ".join(
                f'<mark style="background:{COLORS[e.kind]}" title="{html.escape(_describe(e))}">'
                f"{html.escape((e.predicted or e.gold).type)}: {html.escape((e.predicted or e.gold).text)}"
                f"<sub>{html.escape(_label(e))}</sub></mark>" for e in shown) + "</small>")
    return "".join(out)


def _label(error: NerError) -> str:
    if error.kind in ("wrong_type", "wrong_type_and_boundary"):
        return f"{error.gold.type}→{error.predicted.type}"
    span = error.gold or error.predicted
    return f"{span.type} {error.kind}" if error.kind != "correct" else span.type


def _describe(error: NerError) -> str:
    gold = f"gold {error.gold.type}: {error.gold.text!r}" if error.gold else "no gold entity"
    pred = f"predicted {error.predicted.type}: {error.predicted.text!r}" if error.predicted else "not predicted"
    return f"{error.kind}: {gold}; {pred}"


# ---- any task ------------------------------------------------------------------------------------------


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def record_types(record: dict[str, Any]) -> set[str]:
    """Entity types (ner) or labels (classify) a record involves, on either side."""
    found: set[str] = set()
    for side in (record.get("reference"), record.get("prediction")):
        if isinstance(side, list):
            found.update(e.get("type") for e in side if isinstance(e, dict) and e.get("type"))
        elif isinstance(side, str):
            found.add(side)
    return found


def filter_records(records: list[dict[str, Any]], correctness: str = "all", kind: str = "all",
                   error_kind: str = "all") -> list[dict[str, Any]]:
    """Records by correctness (all | correct | wrong), by entity type / class, by NER error kind."""
    kept = []
    for record in records:
        if correctness == "correct" and record.get("correct") is not True:
            continue
        if correctness == "wrong" and record.get("correct") is not False:
            continue
        if kind != "all" and kind not in record_types(record):
            continue
        if error_kind != "all":
            if not isinstance(record.get("input"), str):
                continue
            errors = classify_ner(record["input"], record.get("reference") or [], record.get("prediction"))
            if not any(e.kind == error_kind for e in errors):
                continue
        kept.append(record)
    return kept


def confusion_pairs(records: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """classify: (gold, predicted, count) over wrong records, most frequent first (unparsed as `(none)`)."""
    pairs = Counter((str(r.get("reference")), "(none)" if r.get("prediction") is None else str(r["prediction"]))
                    for r in records if r.get("correct") is False)
    return [(gold, pred, n) for (gold, pred), n in pairs.most_common()]
