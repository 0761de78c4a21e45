"""One compressed variant: where it was written, what kind of model it is, what the report should say about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Variant:
    name: str
    """Row name: the method (`wanda`, `int8`, ...), `<method>+heal` for a healed one, `uncompressed` first."""
    path: Path | None
    """Its directory under OUTPUT_DIR/compress/ (None when it could not be made)."""
    kind: str = "llm"
    """llm (a causal-LM directory) | head (a task-head directory, tasktune predict) | gguf (a llama.cpp file)."""
    notes: list[str] = field(default_factory=list)
    """What a reader must know about this row (skipped, fallbacks, saves disk but not time, ...)."""
    details: dict[str, Any] = field(default_factory=dict)
    """Method-specific facts: the scheme, dropped layers, sparsity reached, training steps."""
    skipped: bool = False
    """True when the method could not run here (the reason is in notes)."""
