"""Read rows from json / jsonl / csv / parquet files or folders of them, each with where it came from.

Sources are `file:line` for JSON lines and csv (1-based physical line) and `file:#index` (0-based) for
JSON lists and parquet. A line that is not valid JSON, or a row that is not an object, goes to the report.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tasktune.data.report import DataError, RejectReport

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
        except json.JSONDecodeError as err:
            report.reject(f"{file}:{number}", "invalid_json", str(err), line)


def read_jsonl(file: Path, report: RejectReport) -> Iterator[Row]:
    with file.open(encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    yield from _objects(_json_lines(file, lines, report), report)


def read_json(file: Path, report: RejectReport) -> Iterator[Row]:
    """A JSON list of objects, or JSON lines under a .json name."""
    text = file.read_text(encoding="utf-8-sig")
    if not text.lstrip().startswith("["):
        yield from _objects(_json_lines(file, text.splitlines(), report), report)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{file}: not valid JSON ({err}); expected a list of objects or JSON lines") from None
    yield from _objects(((row, f"{file}:#{i}") for i, row in enumerate(data)), report)


def read_csv(file: Path, report: RejectReport) -> Iterator[Row]:
    with file.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            row.pop(None, None)  # cells beyond the header
            yield row, f"{file}:{reader.line_num}"  # the line the record ends on (header: line 1)


def read_parquet(file: Path, report: RejectReport) -> Iterator[Row]:
    import pyarrow.parquet as pq

    for i, row in enumerate(pq.read_table(file).to_pylist()):
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
