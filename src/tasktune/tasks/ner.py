"""Named-entity recognition as generation: the model lists the entities (type and text) it finds.

Scores are entity-level: strict = same type and same text (multisets per sentence, which equals seqeval's
span match whenever a predicted text identifies its span), partial = same type and overlapping text.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tasktune.config.schema import ConfigError
from tasktune.config.task import TaskConfig
from tasktune.data.messages import Conversation, RowError
from tasktune.tasks import bio
from tasktune.tasks.base import conversation, has_cjk, is_cjk_language, iter_records, row_error, row_id
from tasktune.tasks.metrics import macro, prf, ratio

name = "ner"


@dataclass(frozen=True)
class Entity:
    type: str
    text: str
    start: int
    """Character offset into the row's text."""
    end: int
    """Exclusive end offset: text[start:end] == entity text."""


@dataclass
class NerRow:
    id: str
    source: str
    text: str
    entities: list[Entity]
    tokens: list[str] | None = None
    tags: list[str] | None = field(default=None, repr=False)


Prediction = list[dict[str, str]]
"""[{"type": ..., "text": ...}, ...]"""


# ---- reading -------------------------------------------------------------------------------------------


def read(path: str | Path, spec: TaskConfig) -> Iterator[NerRow | RowError]:
    """Rows of a JSONL/JSON file (`entities` with offsets, CLUENER `label` maps, or `tokens` + `tags`)
    or of a CoNLL/BIO column file (any other file whose first line is not a JSON object)."""
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".json") or _first_line(path).startswith("{"):
        for source, record in iter_records(path):
            yield record if isinstance(record, RowError) else _from_record(record, source, spec)
        return
    for number, item in enumerate(bio.read_conll(path), start=1):
        if isinstance(item, RowError):
            yield item
        else:
            source, tokens, tags = item
            yield _from_tags(f"{path.stem}-{number}", source, tokens, tags, spec)


def _first_line(path: Path) -> str:
    with path.open(encoding="utf-8") as f:
        return next((line.strip() for line in f if line.strip()), "")


def _from_record(record: dict[str, Any], source: str, spec: TaskConfig) -> NerRow | RowError:
    text_field = spec.text_field or "text"
    if "entities" not in record and "label" not in record and "tags" in record and "tokens" in record:
        return _from_tags(row_id(record, source), source, record["tokens"], record["tags"], spec)
    text = record.get(text_field)
    if not isinstance(text, str):
        return row_error("missing_field", source, f"no string field {text_field!r}")
    if not text.strip():
        return row_error("empty_text", source, "the text is empty")
    if "entities" in record:
        entities = _entities_from_list(record["entities"], text, source)
    elif isinstance(record.get("label"), dict):
        entities = _entities_from_label_map(record["label"], text, source)
    else:
        return row_error(
            "missing_field", source, "expected `entities`, a CLUENER `label` map, or `tokens` + `tags`"
        )
    if isinstance(entities, RowError):
        return entities
    tokens, tags = record.get("tokens"), record.get("tags")
    if not (isinstance(tokens, list) and isinstance(tags, list) and len(tokens) == len(tags)):
        tokens = tags = None
    return _checked(NerRow(row_id(record, source), source, text, entities, tokens, tags), spec)


def _entities_from_list(items: Any, text: str, source: str) -> list[Entity] | RowError:
    if not isinstance(items, list):
        return row_error("missing_field", source, "`entities` is not a list")
    entities = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            return row_error("missing_field", source, f"entity without a type: {item!r}")
        start, end = item.get("start"), item.get("end")
        if not isinstance(start, int) or not isinstance(end, int):
            return row_error("missing_field", source, f"entity without integer start/end: {item!r}")
        if not 0 <= start < end <= len(text) or ("text" in item and text[start:end] != item["text"]):
            return row_error(
                "offset_mismatch", source, f"text[{start}:{end}]={text[start:end]!r} but entity is {item!r}"
            )
        entities.append(Entity(item["type"], text[start:end], start, end))
    return sorted(entities, key=lambda e: (e.start, e.end))


def _entities_from_label_map(label: dict[str, Any], text: str, source: str) -> list[Entity] | RowError:
    """CLUENER: {type: {span text: [[start, end_inclusive], ...]}}."""
    entities = []
    for kind, spans in label.items():
        if not isinstance(spans, dict):
            return row_error("missing_field", source, f"label[{kind!r}] is not a map of span -> offsets")
        for span_text, offsets in spans.items():
            for pair in offsets if isinstance(offsets, list) else [offsets]:
                if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, int) for x in pair)):
                    return row_error(
                        "missing_field", source, f"label[{kind!r}][{span_text!r}]: bad offsets {pair!r}"
                    )
                start, last = pair
                if not 0 <= start <= last < len(text) or text[start : last + 1] != span_text:
                    return row_error(
                        "offset_mismatch",
                        source,
                        f"text[{start}:{last + 1}]={text[start : last + 1]!r}, label says {span_text!r}",
                    )
                entities.append(Entity(kind, span_text, start, last + 1))
    return sorted(entities, key=lambda e: (e.start, e.end))


def _from_tags(
    rid: str, source: str, tokens: list[str], tags: list[str], spec: TaskConfig
) -> NerRow | RowError:
    if not all(isinstance(x, list) and all(isinstance(v, str) for v in x) for x in (tokens, tags)):
        return row_error("missing_field", source, "`tokens` and `tags` must be lists of strings")
    if len(tokens) != len(tags):
        return row_error("offset_mismatch", source, f"{len(tokens)} tokens but {len(tags)} tags")
    try:
        spans = bio.decode(tags, spec.tag_scheme)
    except ValueError as e:
        return row_error("invalid_tag", source, str(e))
    cjk = is_cjk_language(spec.language) or (spec.language is None and any(has_cjk(t) for t in tokens))
    separator = "" if cjk else " "
    starts, position = [], 0
    for token in tokens:
        starts.append(position)
        position += len(token) + len(separator)
    text = separator.join(tokens)
    if not text.strip():
        return row_error("empty_text", source, "the sentence has no text")
    ends = [start + len(token) for start, token in zip(starts, tokens, strict=True)]
    entities = [Entity(kind, text[starts[a] : ends[b - 1]], starts[a], ends[b - 1]) for kind, a, b in spans]
    return _checked(NerRow(rid, source, text, entities, list(tokens), list(tags)), spec)


def _checked(row: NerRow, spec: TaskConfig) -> NerRow | RowError:
    if spec.labels is not None:
        unknown = sorted({e.type for e in row.entities} - set(spec.labels))
        if unknown:
            return row_error("unknown_label", row.source, f"entity types {unknown} not in {spec.labels}")
    return row


def infer_labels(path: str | Path, spec: TaskConfig) -> tuple[list[str], str]:
    """Entity types found in a file (sorted), and a one-line report with their counts."""
    counts: Counter[str] = Counter()
    for row in read(path, replace(spec, labels=None)):
        if not isinstance(row, RowError):
            counts.update(e.type for e in row.entities)
    labels = sorted(counts)
    listed = ", ".join(f"{label} ({counts[label]})" for label in labels)
    return labels, f"inferred {len(labels)} entity types from {path}: {listed}"


# ---- prompting -----------------------------------------------------------------------------------------


def _types(spec: TaskConfig) -> list[str]:
    if not spec.labels:
        raise ConfigError(
            "task.labels (the entity types) is not set: list them or infer them from train_file"
        )
    return spec.labels


def instruction(spec: TaskConfig) -> str:
    """The task instruction: the entity types (with descriptions) and the answer format."""
    if spec.instruction:
        return spec.instruction
    described = [
        f"{t} ({spec.label_descriptions[t]})" if t in spec.label_descriptions else t for t in _types(spec)
    ]
    head = f"Entity types: {', '.join(described)}. List the entities in the text"
    if spec.ner_output_format == "inline":
        return f"{head} as `type: text; type: text` in order of appearance, or none."
    return f'{head} as a JSON list of {{"type", "text"}} in order of appearance, or [].'


def target(entities: list[Entity], spec: TaskConfig) -> str:
    ordered = sorted(entities, key=lambda e: (e.start, e.end))
    if spec.ner_output_format == "inline":
        return "; ".join(f"{e.type}: {e.text}" for e in ordered) or "none"
    return json.dumps([{"type": e.type, "text": e.text} for e in ordered], ensure_ascii=False)


def to_messages(row: NerRow, spec: TaskConfig) -> Conversation:
    reference = [{"type": e.type, "text": e.text} for e in row.entities]
    return conversation(
        instruction(spec), row.text, target(row.entities, spec), row, {"reference": reference}
    )


def output_constraint(spec: TaskConfig) -> dict[str, Any] | None:
    if spec.ner_output_format != "json":
        return None
    kind: dict[str, Any] = (
        {"type": "string", "enum": list(spec.labels)} if spec.labels else {"type": "string"}
    )
    item = {
        "type": "object",
        "properties": {"type": kind, "text": {"type": "string", "minLength": 1}},
        "required": ["type", "text"],
        "additionalProperties": False,
    }
    return {"type": "json_schema", "schema": {"type": "array", "items": item}}


# ---- parsing -------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[A-Za-z]*")


def parse(output: str, row: NerRow | None, spec: TaskConfig) -> Prediction | None:
    """The entity list in a model output, or None when there is none to be read."""
    if spec.ner_output_format == "inline":
        return _parse_inline(output, spec)
    return _parse_json(output)


def _parse_json(output: str) -> Prediction | None:
    """The first JSON list in the output (code fences and text around it ignored), if every item is
    an object with string `type` and non-empty string `text`."""
    text = _FENCE.sub("", output)
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\[", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if not isinstance(value, list):
            continue
        entities = []
        for item in value:
            if not (
                isinstance(item, dict)
                and isinstance(item.get("type"), str)
                and isinstance(item.get("text"), str)
            ):
                return None
            if not item["text"].strip() or not item["type"].strip():
                return None
            entities.append({"type": item["type"].strip(), "text": item["text"].strip()})
        return entities
    return None


def _parse_inline(output: str, spec: TaskConfig) -> Prediction | None:
    """`type: text; type: text` (also one per line); `none` is the empty list; types must be known labels."""
    text = _FENCE.sub("", output).strip()
    if text.lower().rstrip(".") in ("none", "[]"):
        return []
    labels = {label.lower(): label for label in spec.labels or []}
    entities = []
    for part in re.split(r"[;\n]", text):
        if not part.strip():
            continue
        kind, sep, value = part.partition(":")
        kind = kind.strip().strip("`*-").strip()
        if not sep or not value.strip() or (labels and kind.lower() not in labels):
            return None
        entities.append({"type": labels.get(kind.lower(), kind), "text": value.strip().strip("`")})
    return entities or None


# ---- scoring -------------------------------------------------------------------------------------------


def _occurrences(needle: str, haystack: str) -> list[tuple[int, int]]:
    found, start = [], haystack.find(needle)
    while start != -1 and needle:
        found.append((start, start + len(needle)))
        start = haystack.find(needle, start + 1)
    return found


def _partial_matches(predicted: Prediction, row: NerRow) -> Counter[str]:
    """True positives per type: exact (type, text) pairs first, then type + overlap of a located text."""
    unmatched = list(row.entities)
    leftover = []
    for p in predicted:
        exact = next((g for g in unmatched if g.type == p["type"] and g.text == p["text"]), None)
        if exact is not None:
            unmatched.remove(exact)
        else:
            leftover.append(p)
    tp = Counter(p["type"] for p in predicted) - Counter(p["type"] for p in leftover)
    for p in leftover:
        spans = _occurrences(p["text"], row.text)
        hit = next(
            (
                g
                for g in unmatched
                if g.type == p["type"] and any(s < g.end and g.start < e for s, e in spans)
            ),
            None,
        )
        if hit is not None:
            unmatched.remove(hit)
            tp[p["type"]] += 1
    return tp


def _summary(tp: Counter[str], predicted: Counter[str], gold: Counter[str]) -> dict[str, Any]:
    kinds = sorted(set(predicted) | set(gold))
    per_type = {k: prf(tp[k], predicted[k], gold[k]) for k in kinds}
    return {
        "micro": prf(sum(tp.values()), sum(predicted.values()), sum(gold.values())),
        "macro": macro(per_type),
        "per_type": per_type,
    }


def score(predictions: list[Prediction | None], rows: list[NerRow], spec: TaskConfig) -> dict[str, Any]:
    """Strict and partial entity P/R/F1 (micro, macro, per type), parse failures and hallucinated entities.

    An unparsed output (None) counts as predicting no entities.
    """
    if len(predictions) != len(rows):
        raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows")
    gold: Counter[str] = Counter()
    predicted: Counter[str] = Counter()
    strict_tp: Counter[str] = Counter()
    partial_tp: Counter[str] = Counter()
    hallucinated = 0
    for prediction, row in zip(predictions, rows, strict=True):
        entities = prediction or []
        gold.update(e.type for e in row.entities)
        predicted.update(p["type"] for p in entities)
        common = Counter((e.type, e.text) for e in row.entities) & Counter(
            (p["type"], p["text"]) for p in entities
        )
        for (kind, _), count in common.items():
            strict_tp[kind] += count
        partial_tp.update(_partial_matches(entities, row))
        hallucinated += sum(p["text"] not in row.text for p in entities)
    failures = sum(p is None for p in predictions)
    strict = _summary(strict_tp, predicted, gold)
    partial = _summary(partial_tp, predicted, gold)
    return {
        "n": len(rows),
        "precision": strict["micro"]["precision"],
        "recall": strict["micro"]["recall"],
        "f1": strict["micro"]["f1"],
        "macro_f1": strict["macro"]["f1"],
        "partial_f1": partial["micro"]["f1"],
        "parse_failure_rate": ratio(failures, len(rows)),
        "parse_failures": failures,
        "hallucinated": hallucinated,
        "hallucinated_rate": ratio(hallucinated, sum(predicted.values())),
        "strict": strict,
        "partial": partial,
    }
