"""Read the registry data files (YAML or JSON) and pick entries with "did you mean" errors."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import yaml

REGISTRY_DIR = Path(__file__).resolve().parent
SUFFIXES = (".yaml", ".yml", ".json")


class UnknownEntryError(KeyError):
    """A name that is not in a registry; the message lists the close matches or the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def registry_path(name: str | Path) -> Path:
    """`models` -> registry/models.yaml (or .yml/.json); an existing file path is returned as is."""
    path = Path(name)
    if path.is_file():
        return path
    for suffix in SUFFIXES:
        candidate = REGISTRY_DIR / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in REGISTRY_DIR.iterdir() if p.suffix in SUFFIXES)
    raise FileNotFoundError(f"no registry file {name!r}: known registries are {', '.join(known)}")


def load_registry(name: str | Path) -> dict[str, Any]:
    """The registry as a mapping name -> entry, from a registry name or a .yaml/.yml/.json path."""
    path = registry_path(name)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of name -> entry, got {type(data).__name__}")
    return data


def did_you_mean(key: str, choices: list[str] | tuple[str, ...] | Any) -> str:
    """` (did you mean 'x'?)` for a close match, else ` (known: a, b, c)`."""
    names = sorted(str(c) for c in choices)
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    if close:
        return f" (did you mean {' or '.join(map(repr, close))}?)"
    return f" (known: {', '.join(names)})" if names else " (the registry is empty)"


def pick(registry: dict[str, Any], key: str, what: str = "entry") -> Any:
    """`registry[key]`, or UnknownEntryError naming the unknown `what` (e.g. "model") and close names."""
    try:
        return registry[key]
    except KeyError:
        raise UnknownEntryError(f"unknown {what} {key!r}{did_you_mean(key, registry)}") from None
