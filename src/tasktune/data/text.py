"""The one reader of text data files (training data and task files).

UTF-8 by default, a leading byte-order mark stripped; a file in another encoding is refused as a whole,
with the offset of the first byte that is not UTF-8 and a hint, unless `data.encoding` names its encoding.
Lines are split on "\\n" only (a trailing "\\r" is dropped): U+2028, U+0085 or a form feed inside a JSON
string is text, never a line end (`str.splitlines()` would cut such rows apart).
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from tasktune.data.report import DataError

_ENCODING: ContextVar[str | None] = ContextVar("tasktune_data_encoding", default=None)
HINT = ("convert it to UTF-8 (e.g. `iconv -f cp1252 -t utf-8 in > out`) or set data.encoding to the file's "
        "encoding (e.g. data.encoding=latin-1, cp1252, gb18030, utf-16)")


@contextmanager
def data_encoding(encoding: str | None) -> Iterator[None]:
    """Read data files in `encoding` (None: UTF-8) inside this block; set from `data.encoding` by the CLI."""
    token = _ENCODING.set(encoding)
    try:
        yield
    finally:
        _ENCODING.reset(token)


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


def decode(data: bytes, where: str | Path, encoding: str | None = None) -> str:
    """`data` as text: UTF-8 (BOM stripped) unless `encoding` (or data.encoding) says otherwise."""
    encoding = encoding or _ENCODING.get() or "utf-8"
    try:
        utf8 = _is_utf8(encoding)
    except LookupError:
        raise DataError(f"{where}: unknown encoding {encoding!r} (data.encoding)") from None
    skip = len(codecs.BOM_UTF8) if utf8 and data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[skip:].decode("utf-8" if utf8 else encoding)
    except UnicodeDecodeError as err:
        offset = skip + err.start
        line = data.count(b"\n", 0, offset) + 1
        if utf8:
            raise DataError(f"{where}: not UTF-8: byte 0x{data[offset]:02x} at byte offset {offset} (line {line}); "
                            f"{HINT}") from None
        raise DataError(f"{where}: not valid {encoding} (data.encoding) at byte offset {offset} "
                        f"(line {line})") from None
    return text.removeprefix("\ufeff")


def read_text(path: str | Path, encoding: str | None = None) -> str:
    """The whole file as text (see `decode`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None
    return decode(data, path, encoding)


def split_lines(text: str) -> list[str]:
    """Physical lines: split on "\\n" only, a trailing "\\r" removed, no empty last line after a final "\\n"."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_lines(path: str | Path, encoding: str | None = None) -> list[str]:
    return split_lines(read_text(path, encoding))


def csv_rows(text: str, delimiter: str = ",") -> Iterator[tuple[int, int, dict[str, str | None] | str]]:
    """(first line, last line, row) for each record of CSV text under its header line; a record the csv
    module cannot parse comes with an error message instead of the row. Quoted cells may span lines."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    start = 2
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield start, reader.line_num, f"unreadable CSV record: {err}"
            start = reader.line_num + 1
            continue
        record.pop(None, None)  # type: ignore[call-overload]  # cells beyond the header
        yield start, reader.line_num, dict(record)
        start = reader.line_num + 1
