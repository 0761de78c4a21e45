"""Read rows from json / jsonl / csv / parquet files or folders of them, each with where it came from.

Text files are read by data/text.py (UTF-8, lines split on "\\n" only). Sources are `file:line` for JSON
lines and csv (1-based physical line; where a csv record ends) and `file:#index` (0-based) for
JSON lists and parquet. A line that is not valid JSON, or a row that is not an object, goes to the report.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tasktune.data.report import DataError, RejectReport
from tasktune.data.text import csv_rows, read_lines, read_text, split_lines

Row = tuple[dict[str, Any], str]


def _objects(rows: Iterator[tuple[Any, str]], report: RejectReport) -> Iterator[Row]:
    for row, where in rows:
        if isinstance(row, dict):
            yield row, where
        else:
            report.reject(where, "wrong_type", f"row is {type(row).__name__}, expected an object", row)


def _json_lines(file: Path, lines: list[str], report: RejectReport) -> Iterator[tuple[Any, str]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line), f"{file}:{number}"
        except (json.JSONDecodeError, RecursionError) as err:
            report.reject(f"{file}:{number}", "invalid_json", str(err), line)


def read_jsonl(file: Path, report: RejectReport) -> Iterator[Row]:
    yield from _objects(_json_lines(file, read_lines(file), report), report)


def read_json(file: Path, report: RejectReport) -> Iterator[Row]:
    """A JSON list of objects, or JSON lines under a .json name."""
    text = read_text(file)
    if not text.lstrip().startswith("["):
        yield from _objects(_json_lines(file, split_lines(text), report), report)
        return
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise DataError(f"{file}: not valid JSON ({err}); expected a list of objects or JSON lines") from None
    yield from _objects(((row, f"{file}:#{i}") for i, row in enumerate(data)), report)


def read_csv(file: Path, report: RejectReport) -> Iterator[Row]:
    """Rows under the header line; `file:line` is the line a record ends on (header: line 1)."""
    for _, line, row in csv_rows(read_text(file)):
        if isinstance(row, str):
            report.reject(f"{file}:{line}", "invalid_csv", row)
        else:
            yield row, f"{file}:{line}"


def read_parquet(file: Path, report: RejectReport) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except Exception as err:  # pyarrow raises its own error types for files that are not parquet
        raise DataError(f"{file}: not a readable parquet file ({err})") from None
    for i, row in enumerate(table.to_pylist()):
        yield row, f"{file}:#{i}"


READERS: dict[str, Callable[[Path, RejectReport], Iterator[Row]]] = {
    ".json": read_json,
    ".jsonl": read_jsonl,
    ".csv": read_csv,
    ".parquet": read_parquet,
}


def data_files(path: str | Path) -> list[Path]:
    """The file itself, or the readable files directly inside a folder (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in READERS and not p.name.startswith("."))
        if not files:
            raise DataError(f"{path}: no {'/'.join(READERS)} files in this folder")
        return files
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    if path.suffix not in READERS:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(READERS)}")
    return [path]


def read_rows(path: str | Path, report: RejectReport) -> Iterator[Row]:
    """(row, source) for every object row of a file or folder; unreadable rows go to `report`."""
    for file in data_files(path):
        yield from READERS[file.suffix](file, report)
