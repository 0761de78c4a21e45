"""Extractive question answering as generation: the model answers with a span of the context.

Scored with the official SQuAD v1.1 exact match and token F1 (max over reference answers); Chinese,
Japanese and Korean answers are compared by characters (runs of Latin letters and digits stay whole).
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasktune.config.task import TaskConfig
from tasktune.data.messages import Conversation, RowError
from tasktune.data.text import read_text
from tasktune.tasks.base import conversation, has_cjk, is_cjk_language, iter_records, row_error, row_id
from tasktune.tasks.metrics import ratio

name = "qa"

_PUNCTUATION = set(string.punctuation)
DEFAULT_INSTRUCTION = "Answer the question with the shortest span copied exactly from the context."


@dataclass
class QaRow:
    id: str
    source: str
    context: str
    question: str
    answers: list[str]
    """Reference answers, each a substring of the context."""
    answer_starts: list[int]
    title: str = ""


# ---- reading -------------------------------------------------------------------------------------------


def read(path: str | Path, spec: TaskConfig) -> Iterator[QaRow | RowError]:
    """Rows of a SQuAD-layout JSONL file (one question per line) or a nested SQuAD v1 / CMRC JSON file."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        text = read_text(path)
        if text.lstrip().startswith("{"):
            yield from _read_nested(path, text)
            return
    for source, record in iter_records(path):
        yield (
            record if isinstance(record, RowError) else _from_record(record, source, record.get("title", ""))
        )


def _read_nested(path: Path, text: str) -> Iterator[QaRow | RowError]:
    """{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers"}]}]}]}; each
    question's line is where its id first appears after the previous question. A malformed article,
    paragraph or question is one rejected row (`malformed_entry`), never passed over silently."""
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        line = getattr(e, "lineno", 1)
        yield row_error("invalid_json", f"{path}:{line}", str(e))
        return
    position, line = 0, 1
    for a, article in _entries(document, "data", f"{path}:{line}"):
        if isinstance(article, RowError):
            yield article
            continue
        for p, paragraph in _entries(article, "paragraphs", f"{path}:{line} (data[{a}])"):
            if isinstance(paragraph, RowError):
                yield paragraph
                continue
            for _, qa in _entries(paragraph, "qas", f"{path}:{line} (data[{a}].paragraphs[{p}])"):
                if isinstance(qa, RowError):
                    yield qa
                    continue
                found = text.find(json.dumps(qa.get("id"), ensure_ascii=False), position)
                if found != -1:
                    line += text.count("\n", position, found)
                    position = found
                record = {**qa, "context": paragraph.get("context")}
                yield _from_record(record, f"{path}:{line}", article.get("title", ""))


def _entries(parent: Any, key: str, where: str) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    """(index, object) for each item listed under `key`; a missing list or an item that is not an object
    comes as a `malformed_entry` RowError instead."""
    items = parent.get(key) if isinstance(parent, dict) else None
    if not isinstance(items, list):
        found = "nothing" if items is None else type(items).__name__
        yield -1, row_error("malformed_entry", where, f"expected a list under {key!r}, found {found}")
        return
    for i, item in enumerate(items):
        if isinstance(item, dict):
            yield i, item
        else:
            yield i, row_error("malformed_entry", where, f"{key}[{i}] is {type(item).__name__}, expected an object")


def _answer_list(record: dict[str, Any]) -> list[tuple[str, int | None]] | None:
    answers = record.get("answers", record.get("answer"))
    if isinstance(answers, str):
        return [(answers, None)]
    if isinstance(answers, dict) and isinstance(answers.get("text"), list):
        starts = answers.get("answer_start")
        starts = starts if isinstance(starts, list) else [starts] * len(answers["text"])
        return list(zip(answers["text"], starts, strict=False))
    if isinstance(answers, list):
        pairs = []
        for a in answers:
            if isinstance(a, dict):
                pairs.append((a.get("text"), a.get("answer_start")))
            else:
                pairs.append((a, None))
        return pairs
    return None


def _from_record(record: dict[str, Any], source: str, title: Any) -> QaRow | RowError:
    context, question = record.get("context"), record.get("question")
    if not isinstance(context, str) or not isinstance(question, str):
        return row_error("missing_field", source, "expected string fields `context` and `question`")
    if not context.strip() or not question.strip():
        return row_error("empty_text", source, "empty context or question")
    pairs = _answer_list(record)
    if not pairs:
        return row_error("missing_field", source, "no reference answers")
    answers, starts = [], []
    for text, start in pairs:
        if not isinstance(text, str) or not text.strip():
            return row_error("missing_field", source, f"answer is not a non-empty string: {text!r}")
        if text not in context:
            return row_error("answer_not_in_context", source, f"{text!r} does not occur in the context")
        if not (isinstance(start, int) and context[start : start + len(text)] == text):
            start = context.find(text)
        answers.append(text)
        starts.append(start)
    return QaRow(row_id(record, source), source, context, question, answers, starts, str(title or ""))


# ---- prompting -----------------------------------------------------------------------------------------


def to_messages(row: QaRow, spec: TaskConfig) -> Conversation:
    input_text = f"Context: {row.context}\nQuestion: {row.question}"
    instruction = spec.instruction or DEFAULT_INSTRUCTION
    return conversation(instruction, input_text, row.answers[0], row, {"reference": row.answers})


def output_constraint(spec: TaskConfig) -> dict[str, Any] | None:
    return None


def row_constraint(row: QaRow, spec: TaskConfig) -> dict[str, Any]:
    """Decoding that can only copy a span of the row's context (word edges at both ends)."""
    return {"type": "copy_span", "text": row.context}


def parse(output: str, row: QaRow | None, spec: TaskConfig) -> str | None:
    """The first non-empty line, without an `Answer:` prefix or surrounding quotes; None when empty."""
    lines = [line.strip() for line in output.replace("```", "\n").splitlines() if line.strip()]
    if not lines:
        return None
    answer = re.sub(r"^(answer|答案)\s*[:：]\s*", "", lines[0], flags=re.IGNORECASE)
    answer = answer.strip().strip("\"'“”‘’「」")
    return answer or None


# ---- scoring -------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """SQuAD v1.1: lower case, drop punctuation, articles (a, an, the) and extra whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _cjk_tokens(text: str) -> list[str]:
    """Lower-cased characters without punctuation or spaces; Latin letter and digit runs kept as one token."""
    kept = "".join(" " if unicodedata.category(ch).startswith(("P", "S", "Z")) else ch for ch in text.lower())
    return re.findall(r"[a-z0-9]+|\S", kept)


def tokens(text: str, cjk: bool) -> list[str]:
    return _cjk_tokens(text) if cjk else normalize_answer(text).split()


def f1(prediction: str, reference: str, cjk: bool = False) -> float:
    predicted, gold = tokens(prediction, cjk), tokens(reference, cjk)
    same = sum((Counter(predicted) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str, cjk: bool = False) -> float:
    if cjk:
        return float(_cjk_tokens(prediction) == _cjk_tokens(reference))
    return float(normalize_answer(prediction) == normalize_answer(reference))


def _is_cjk(row: QaRow, spec: TaskConfig) -> bool:
    return is_cjk_language(spec.language) if spec.language else any(has_cjk(a) for a in row.answers)


def score(predictions: list[str | None], rows: list[QaRow], spec: TaskConfig) -> dict[str, Any]:
    """Exact match and F1 (fractions, max over references), `not_span_rate` (parsed answers that are not a
    substring of the context) and, when both occur, a breakdown into Latin-script and CJK rows.

    An unparsed output (None) scores 0.
    """
    if len(predictions) != len(rows):
        raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows")
    groups: dict[str, list[tuple[float, float]]] = {}
    parsed = not_span = 0
    for prediction, row in zip(predictions, rows, strict=True):
        cjk = _is_cjk(row, spec)
        if prediction is None:
            em = best_f1 = 0.0
        else:
            parsed += 1
            not_span += prediction not in row.context
            em = max(exact_match(prediction, ref, cjk) for ref in row.answers)
            best_f1 = max(f1(prediction, ref, cjk) for ref in row.answers)
        groups.setdefault("cjk" if cjk else "latin", []).append((em, best_f1))

    def summary(pairs: list[tuple[float, float]]) -> dict[str, Any]:
        return {
            "n": len(pairs),
            "exact_match": ratio(sum(p[0] for p in pairs), len(pairs)),
            "f1": ratio(sum(p[1] for p in pairs), len(pairs)),
        }

    result = {
        **summary([pair for pairs in groups.values() for pair in pairs]),
        "parse_failure_rate": ratio(len(rows) - parsed, len(rows)),
        "parse_failures": len(rows) - parsed,
        "not_span_rate": ratio(not_span, parsed),
    }
    if len(groups) > 1:
        result["by_script"] = {key: summary(pairs) for key, pairs in sorted(groups.items())}
    return result
