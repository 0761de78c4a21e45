"""NER tag schemes (IOB1, IOB2, BIOES): decode tags to spans, encode spans to tags, read CoNLL files.

One decoder serves all three schemes: B- and S- start an entity, I- and E- continue one of the same type
(or start one when there is none to continue, as IOB1 and seqeval's default mode do), E- and S- end it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tasktune.data.messages import RowError
from tasktune.data.text import read_lines
from tasktune.tasks.base import row_error

Span = tuple[str, int, int]
"""(type, first token, last token + 1)"""

PREFIXES = {"iob1": "BI", "iob2": "BI", "bioes": "BIES", "auto": "BIES"}


def split_tag(tag: str) -> tuple[str, str]:
    """("B", "PER") for "B-PER", ("O", "") for "O"; ValueError for anything else."""
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in ("B", "I", "E", "S") or not kind:
        raise ValueError(f"invalid tag {tag!r}")
    return prefix, kind


def detect_scheme(tags: list[str]) -> str:
    """bioes when E-/S- occur, iob1 when an I- starts an entity, else iob2."""
    prefixes = [split_tag(t)[0] for t in tags]
    if "E" in prefixes or "S" in prefixes:
        return "bioes"
    previous = ("O", "")
    for tag in tags:
        prefix, kind = split_tag(tag)
        if prefix == "I" and previous[1] != kind:
            return "iob1"
        previous = (prefix, kind)
    return "iob2"


def decode(tags: list[str], scheme: str = "auto") -> list[Span]:
    """Entity spans of a tag sequence. A strict scheme (iob2, bioes) rejects sequences it does not allow."""
    spans: list[Span] = []
    open_kind, open_start = "", -1
    allowed = PREFIXES[scheme]

    def close(end: int) -> None:
        nonlocal open_kind
        if open_kind:
            spans.append((open_kind, open_start, end))
        open_kind = ""

    for i, tag in enumerate(tags):
        prefix, kind = split_tag(tag)
        if prefix != "O" and prefix not in allowed:
            raise ValueError(f"tag {tag!r} is not allowed in {scheme.upper()}")
        continues = prefix in ("I", "E") and open_kind == kind
        if prefix in ("I", "E") and not continues and scheme in ("iob2", "bioes"):
            raise ValueError(f"{tag!r} at token {i + 1} does not continue an entity ({scheme.upper()})")
        if prefix == "O" or not continues:
            close(i)
        if prefix in ("B", "S") or (prefix in ("I", "E") and not continues):
            open_kind, open_start = kind, i
        if prefix in ("E", "S"):
            close(i + 1)
    close(len(tags))
    return spans


def encode(spans: list[Span], length: int) -> list[str]:
    """IOB2 tags for non-overlapping spans."""
    tags = ["O"] * length
    for kind, start, end in spans:
        if any(t != "O" for t in tags[start:end]):
            raise ValueError(f"span {(kind, start, end)} overlaps another")
        tags[start:end] = [f"B-{kind}"] + [f"I-{kind}"] * (end - start - 1)
    return tags


def read_conll(path: str | Path) -> Iterator[tuple[str, list[str], list[str]] | RowError]:
    """(`file:line` of the first token, tokens, tags) per sentence of a whitespace-column file.

    The token is the first column and the tag the last; blank lines end sentences; -DOCSTART- is skipped.
    A sentence with a line of fewer than two columns becomes RowError("missing_field").
    """
    path = Path(path)
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    bad: RowError | None = None

    def flush() -> Iterator[tuple[str, list[str], list[str]] | RowError]:
        if bad is not None:
            yield bad
        elif tokens:
            yield f"{path}:{start}", list(tokens), list(tags)

    for number, line in enumerate(read_lines(path), start=1):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            yield from flush()
            tokens, tags, bad = [], [], None
            continue
        if not tokens and bad is None:
            start = number
        if len(columns) < 2:
            bad = bad or row_error(
                "missing_field", f"{path}:{number}", f"expected token and tag: {line!r}"
            )
            continue
        tokens.append(columns[0])
        tags.append(columns[-1])
    yield from flush()
