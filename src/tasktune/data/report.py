"""The validation report: every rejected row with its `file:line` and reason, plus truncation warnings."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasktune.config.errors import UserError
from tasktune.data.messages import RowError

EXCERPT_CHARS = 300
SHOWN_PER_REASON = 3


class DataError(UserError, ValueError):
    """Data that cannot be used as a whole (unknown dataset, unreadable file, too many rejected rows)."""


@dataclass
class Reject:
    source: str
    """`file:line` (or `file:#index` for JSON lists and parquet)."""
    reason: str
    detail: str
    row: str
    """The start of the row as text."""


def excerpt(row: Any, limit: int = EXCERPT_CHARS) -> str:
    text = row if isinstance(row, str) else json.dumps(row, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


class RejectReport:
    """Collects rejected rows and truncated examples; nothing is dropped without an entry here."""

    def __init__(self) -> None:
        self.rejects: list[Reject] = []
        self.truncated: list[tuple[str, int, int]] = []
        """(source, tokens before, tokens kept) for each example cut to cutoff_len."""
        self.path: Path | None = None
        """Where `write` last wrote rejected.jsonl."""

    def __len__(self) -> int:
        return len(self.rejects)

    def reject(self, source: str, reason: str, detail: str = "", row: Any = None) -> None:
        self.rejects.append(Reject(source, reason, detail, "" if row is None else excerpt(row)))

    def add(self, source: str, error: RowError, row: Any = None) -> None:
        self.reject(source, error.reason, error.detail, row)

    def add_truncated(self, source: str, length: int, kept: int) -> None:
        self.truncated.append((source, length, kept))

    def counts(self) -> dict[str, int]:
        """Rejected rows per reason, most frequent first."""
        return dict(Counter(r.reason for r in self.rejects).most_common())

    def summary(self, total: int | None = None) -> str:
        """Counts per reason with the first rows of each, and the truncation count."""
        of = f" of {total}" if total is not None else ""
        share = f" ({len(self) / total:.1%})" if total else ""
        lines = [f"data: {len(self)}{of} rows rejected{share}, {len(self.truncated)} truncated"]
        for reason, count in self.counts().items():
            first = [r for r in self.rejects if r.reason == reason][:SHOWN_PER_REASON]
            shown = "; ".join(f"{r.source} {r.detail}".strip() for r in first)
            lines.append(f"  {reason}: {count}  e.g. {shown}")
        if self.truncated:
            shown = ", ".join(f"{s} ({n}->{k})" for s, n, k in self.truncated[:SHOWN_PER_REASON])
            lines.append(f"  truncated to cutoff_len: {len(self.truncated)}  e.g. {shown}")
        if self.path is not None and self.rejects:
            lines.append(f"  every rejected row: {self.path}")
        return "\n".join(lines)

    def write(self, path: str | Path) -> Path:
        """Write one JSON object per rejected row (an empty file when none)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for r in self.rejects:
                f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
        self.path = path
        return path

    def check(self, max_share: float, total: int) -> None:
        """Raise DataError when more than `max_share` of `total` rows were rejected."""
        if not self.rejects:
            return
        share = len(self) / total if total else 1.0
        if share > max_share:
            where = f"; every rejected row is in {self.path}" if self.path else ""
            counts = ", ".join(f"{k}={v}" for k, v in self.counts().items())
            raise DataError(
                f"{len(self)} of {total} rows rejected ({share:.1%}) > data.max_rejected_share="
                f"{max_share}: {counts}{where}"
            )
