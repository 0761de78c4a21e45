"""Named-entity recognition as generation: the model writes the entities it finds (task.ner_output_format:
json, inline or tagged-words, see `tasks.ner_formats`); answers are placed back on the input's characters.

Scores are entity-level on character spans (`tasks.ner_score`): strict = same (type, start, end), as
seqeval; partial = same type, overlapping spans; text_f1 = the (type, text) multiset match.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tasktune.config.schema import ConfigError
from tasktune.config.task import TaskConfig
from tasktune.data.messages import Conversation, RowError
from tasktune.data.text import read_lines
from tasktune.tasks import bio
from tasktune.tasks import ner_formats as formats
from tasktune.tasks.base import conversation, has_cjk, is_cjk_language, iter_records, row_error, row_id
from tasktune.tasks.ner_score import score_spans, spans_of

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


Prediction = list[dict[str, Any]]
"""[{"type": ..., "text": ..., "start": int | None, "end": int | None}, ...]"""


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
    return next((line.strip() for line in read_lines(path) if line.strip()), "")


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


ANSWER_FORMATS = {
    "json": 'List the entities in the text as a JSON list of {"type", "text"} in order of appearance, or [].',
    "inline": "Copy the text unchanged, writing each entity as [entity text|TYPE].",
    "tagged-words": "Copy the text word by word, each word followed by its tag in parentheses: B-TYPE for the "
    "first word of an entity, I-TYPE for its next words, O for words outside entities.",
}
"""The answer part of the default instruction, per task.ner_output_format."""


def instruction(spec: TaskConfig) -> str:
    """The task instruction: the entity types (with descriptions) and the answer format."""
    if spec.instruction:
        return spec.instruction
    described = [
        f"{t} ({spec.label_descriptions[t]})" if t in spec.label_descriptions else t for t in _types(spec)
    ]
    return f"Entity types: {', '.join(described)}. {ANSWER_FORMATS[spec.ner_output_format]}"


def target(text: str, entities: list[Entity], spec: TaskConfig) -> str:
    """The answer for a text and its entities in task.ner_output_format."""
    return formats.render(text, entities, spec.ner_output_format)


def to_messages(row: NerRow, spec: TaskConfig) -> Conversation:
    """User: instruction + text; assistant: the answer (sentences without entities are kept: `[]`, or
    the text copied unchanged)."""
    reference = [{"type": e.type, "text": e.text, "start": e.start, "end": e.end} for e in row.entities]
    return conversation(
        instruction(spec), row.text, target(row.text, row.entities, spec), row, {"reference": reference}
    )


def output_constraint(spec: TaskConfig) -> dict[str, Any] | None:
    """json: the entity-list JSON schema (types from task.labels); inline: per row (`row_constraint`)."""
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


def row_constraint(row: NerRow, spec: TaskConfig) -> dict[str, Any] | None:
    """inline: decoding that can only copy the row's text, open a bracket, or close one with `|TYPE]`."""
    if spec.ner_output_format != "inline":
        return None
    return {"type": "copy_inline", "text": row.text, "labels": list(_types(spec))}


# ---- parsing and scoring -------------------------------------------------------------------------------


def parse(output: str, row: NerRow | None, spec: TaskConfig) -> Prediction | None:
    """The entities of a model output ({type, text, start, end}; start/end None for an entity that is not
    in the row's text), or None when the output cannot be read. Without a row, no spans."""
    return formats.parse(output, row.text if row is not None else None, spec.ner_output_format, spec.labels)


def exact_match(prediction: Prediction | None, row: NerRow) -> bool:
    """Whether the predicted spans are exactly the reference's (type, start, end) multiset."""
    if prediction is None:
        return False
    spans, unplaced = spans_of(prediction, row.text)
    return not unplaced and Counter(spans) == Counter((e.type, e.start, e.end) for e in row.entities)


def score(predictions: list[Prediction | None], rows: list[NerRow], spec: TaskConfig) -> dict[str, Any]:
    """Span-exact entity P/R/F1 (micro, macro, per type; equal to seqeval's), partial (overlap) and
    text-level (`text_f1`) scores, parse failures, hallucinated and unplaced entities.

    An unparsed output (None) counts as predicting no entities."""
    if len(predictions) != len(rows):
        raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows")
    return score_spans(
        predictions,
        [row.text for row in rows],
        [[(e.type, e.start, e.end) for e in row.entities] for row in rows],
        [[(e.type, e.text) for e in row.entities] for row in rows],
    )
