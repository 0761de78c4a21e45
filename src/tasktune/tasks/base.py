"""The shape every task shares (a Protocol, no base class) and the small helpers task modules use."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from tasktune.config.task import TaskConfig
from tasktune.data.messages import Conversation, Message, RowError
from tasktune.data.text import csv_rows, read_text, split_lines


class TaskRow(Protocol):
    """One example of a task: every task's row dataclass has these two fields."""

    id: str
    source: str
    """Where the row came from, as `file:line`."""


class Task(Protocol):
    """What a task module provides: read rows, turn them into conversations, parse and score outputs."""

    name: str

    def read(self, path: str | Path, spec: TaskConfig) -> Iterator[TaskRow | RowError]: ...

    def to_messages(self, row: Any, spec: TaskConfig) -> Conversation: ...

    def parse(self, output: str, row: Any, spec: TaskConfig) -> Any | None: ...

    def score(self, predictions: list[Any], rows: list[Any], spec: TaskConfig) -> dict[str, Any]: ...

    def output_constraint(self, spec: TaskConfig) -> dict[str, Any] | None: ...


def row_error(reason: str, source: str, detail: str) -> RowError:
    """A rejected row that knows its `file:line`."""
    return RowError(reason, detail, source)


def conversation(
    instruction: str, input_text: str, target: str, row: Any, meta: dict[str, Any]
) -> Conversation:
    """User message = instruction, newline, input (as LLaMA-Factory joins alpaca rows); assistant = target."""
    return Conversation(
        messages=[Message("user", f"{instruction}\n{input_text}"), Message("assistant", target)],
        source=row.source,
        meta={"id": row.id, **meta},
    )


def iter_records(path: str | Path) -> Iterator[tuple[str, dict[str, Any] | RowError]]:
    """(`file:line`, record) for each row of a .jsonl, .json (list of objects) or .csv/.tsv file.

    Read by data/text.py (UTF-8, BOM stripped, lines split on "\\n" only). Blank lines are skipped; a line
    that is not a JSON object becomes RowError("invalid_json"), a broken CSV record RowError("invalid_csv").
    """
    path = Path(path)
    suffix = path.suffix.lower()
    text = read_text(path)
    if suffix in (".csv", ".tsv"):
        for start, _, record in csv_rows(text, delimiter="\t" if suffix == ".tsv" else ","):
            source = f"{path}:{start}"
            yield source, row_error("invalid_csv", source, record) if isinstance(record, str) else record
        return
    if suffix == ".json" and text.lstrip().startswith("["):
        yield from _json_array_records(path, text)
        return
    for number, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        source = f"{path}:{number}"
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            yield source, row_error("invalid_json", source, str(e))
            continue
        if not isinstance(record, dict):
            yield (
                source,
                row_error("invalid_json", source, f"expected an object, got {type(record).__name__}"),
            )
            continue
        yield source, record


def _json_array_records(path: Path, text: str) -> Iterator[tuple[str, dict[str, Any] | RowError]]:
    """Objects of a JSON array, each with the line its text starts on."""
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        yield f"{path}:{e.lineno}", row_error("invalid_json", f"{path}:{e.lineno}", str(e))
        return
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    for record in records:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        line = text.count("\n", 0, position) + 1
        _, position = decoder.raw_decode(text, position)
        source = f"{path}:{line}"
        if isinstance(record, dict):
            yield source, record
        else:
            yield (
                source,
                row_error("invalid_json", source, f"expected an object, got {type(record).__name__}"),
            )


def row_id(record: dict[str, Any], source: str) -> str:
    """The record's own `id`, else its `file:line` without the directory."""
    if record.get("id") is not None:
        return str(record["id"])
    return Path(source).name


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def has_cjk(text: str) -> bool:
    """Whether the text holds Chinese, Japanese or Korean characters."""
    return bool(_CJK.search(text))


def is_cjk_language(language: str | None) -> bool:
    return (language or "").lower().split("-")[0] in ("zh", "ja", "ko")
