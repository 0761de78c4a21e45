"""Entity-level NER scores on character spans, as CoNLL's conlleval and seqeval define them.

strict: a predicted entity is right when its (type, start, end) is a reference entity's (multisets per
sentence); partial: same type and overlapping spans, each reference entity used once; text: the older
(type, text) multiset match, kept as `text_f1` for answers that cannot be placed on their input.
A predicted entity without a span (its text is not in the input, or every occurrence is taken) is a false
positive for strict and partial.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from tasktune.tasks.metrics import macro, prf, ratio
from tasktune.tasks.ner_formats import align

Key = tuple[str, int, int]
"""(type, start, end)"""


def _has_span(item: dict[str, Any], text: str) -> bool:
    start, end = item.get("start"), item.get("end")
    return isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)


def spans_of(prediction: Sequence[dict[str, Any]], text: str) -> tuple[list[Key], int]:
    """The (type, start, end) of each predicted entity that has or gets a span, and how many get none.

    Items that carry start/end (heads, parsers given the row) keep them; the others are placed by `align`,
    on occurrences not taken yet."""
    keys = [(p["type"], p["start"], p["end"]) for p in prediction if _has_span(p, text)]
    loose = [p for p in prediction if not _has_span(p, text)]
    placed = align([p["text"] for p in loose], text, used={(s, e) for _, s, e in keys})
    keys += [(p["type"], *span) for p, span in zip(loose, placed, strict=True) if span is not None]
    return keys, sum(span is None for span in placed)


def _partial_tp(predicted: list[Key], gold: list[Key]) -> Counter[str]:
    """True positives per type: exact spans first, then same type and overlapping spans (gold used once)."""
    left = list(gold)
    rest = []
    for key in predicted:
        if key in left:
            left.remove(key)
        else:
            rest.append(key)
    tp = Counter(k for k, _, _ in predicted) - Counter(k for k, _, _ in rest)
    for kind, start, end in rest:
        hit = next((g for g in left if g[0] == kind and g[1] < end and start < g[2]), None)
        if hit is not None:
            left.remove(hit)
            tp[kind] += 1
    return tp


def summary(tp: Counter[str], predicted: Counter[str], gold: Counter[str]) -> dict[str, Any]:
    """micro, macro (over the types predicted or present) and per-type P/R/F1."""
    kinds = sorted(set(predicted) | set(gold))
    per_type = {k: prf(tp[k], predicted[k], gold[k]) for k in kinds}
    return {
        "micro": prf(sum(tp.values()), sum(predicted.values()), sum(gold.values())),
        "macro": macro(per_type),
        "per_type": per_type,
    }


def score_spans(predictions: Sequence[Sequence[dict[str, Any]] | None], texts: Sequence[str],
                references: Sequence[Sequence[Key]], references_text: Sequence[Sequence[tuple[str, str]]]
                ) -> dict[str, Any]:
    """Strict, partial and text-level scores, hallucinated (text not in the input) and unplaced entities.

    predictions: per sentence the entity dicts (type, text, optional start/end), None for an answer that
    did not parse (no entities); references: per sentence the gold (type, start, end) and (type, text)."""
    gold: Counter[str] = Counter()
    predicted: Counter[str] = Counter()
    strict_tp: Counter[str] = Counter()
    partial_tp: Counter[str] = Counter()
    text_tp: Counter[str] = Counter()
    hallucinated = unplaced = 0
    for prediction, text, keys, pairs in zip(predictions, texts, references, references_text, strict=True):
        entities = list(prediction or [])
        gold.update(k for k, _, _ in keys)
        predicted.update(p["type"] for p in entities)
        spans, missing = spans_of(entities, text)
        unplaced += missing
        hallucinated += sum(p["text"] not in text for p in entities)
        for kind, _, _ in (Counter(spans) & Counter(keys)).elements():
            strict_tp[kind] += 1
        partial_tp.update(_partial_tp(spans, list(keys)))
        for kind, _ in (Counter(pairs) & Counter((p["type"], p["text"]) for p in entities)).elements():
            text_tp[kind] += 1
    failures = sum(p is None for p in predictions)
    strict = summary(strict_tp, predicted, gold)
    partial = summary(partial_tp, predicted, gold)
    text_level = summary(text_tp, predicted, gold)
    total = sum(predicted.values())
    return {
        "n": len(texts),
        "precision": strict["micro"]["precision"],
        "recall": strict["micro"]["recall"],
        "f1": strict["micro"]["f1"],
        "macro_f1": strict["macro"]["f1"],
        "partial_f1": partial["micro"]["f1"],
        "text_f1": text_level["micro"]["f1"],
        "parse_failure_rate": ratio(failures, len(texts)),
        "parse_failures": failures,
        "hallucinated": hallucinated,
        "hallucinated_rate": ratio(hallucinated, total),
        "unplaced": unplaced,
        "predicted_entities": total,
        "strict": strict,
        "partial": partial,
        "text": text_level,
    }
