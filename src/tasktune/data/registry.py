"""Read a LLaMA-Factory style `dataset_info.json` and resolve `data.datasets` entries to local files.

Every entry loads; one that tasktune cannot use (hub, script, cloud, preference or multimodal data,
absent file) fails only when it is selected, with the reason. Entries may also be direct file paths.
"""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasktune.data.report import DataError, RejectReport
from tasktune.data.sources import READERS, read_rows
from tasktune.data.text import read_text

logger = logging.getLogger(__name__)

INFO_FILE = "dataset_info.json"
DEFAULT_COLUMNS: dict[str, dict[str, str]] = {
    "alpaca": {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "history": "history",
        "system": "system",
        "tools": "tools",
    },
    "sharegpt": {"messages": "conversations", "system": "system", "tools": "tools"},
    "openai": {"messages": "messages", "system": "system", "tools": "tools"},
}
DEFAULT_TAGS: dict[str, dict[str, str]] = {
    "sharegpt": {
        "role_tag": "from",
        "content_tag": "value",
        "user_tag": "human",
        "assistant_tag": "gpt",
        "observation_tag": "observation",
        "function_tag": "function_call",
        "system_tag": "system",
    },
    "openai": {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "observation_tag": "tool",
        "function_tag": "function_call",
        "system_tag": "system",
    },
}
UNSUPPORTED_COLUMNS = {
    "images": "images (multimodal)",
    "videos": "videos (multimodal)",
    "audios": "audios (multimodal)",
    "chosen": "chosen (preference pairs)",
    "rejected": "rejected (preference pairs)",
    "kto_tag": "kto_tag (KTO preference labels)",
}
PREFERENCE_COLUMNS = ("chosen", "rejected", "kto_tag")
"""Columns read by the preference stages (data/preference.py)."""
REMOTE_FIELDS = {
    "hf_hub_url": "on the hub",
    "ms_hub_url": "on the hub",
    "om_hub_url": "on the hub",
    "script_url": "built by a loading script",
    "cloud_file_name": "in cloud storage",
}


@dataclass
class DatasetSpec:
    """One dataset_info.json entry (LLaMA-Factory field names), or a direct file path."""

    name: str
    file_name: str | None = None
    formatting: str = "alpaca"
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    split: str = "train"
    num_samples: int | None = None
    ranking: bool = False
    hf_hub_url: str | None = None
    ms_hub_url: str | None = None
    om_hub_url: str | None = None
    script_url: str | None = None
    cloud_file_name: str | None = None
    subset: str | None = None
    folder: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys tasktune does not know, kept and ignored."""
    path: Path | None = None
    """The local file or folder, once resolved."""
    invalid: list[str] = field(default_factory=list)
    """Field-by-field problems of a malformed entry."""

    def column(self, key: str) -> str | None:
        return self.columns.get(key, DEFAULT_COLUMNS.get(self.formatting, {}).get(key))

    def tag(self, key: str) -> str:
        return self.tags.get(key, DEFAULT_TAGS.get(self.formatting, DEFAULT_TAGS["sharegpt"])[key])

    def problem(self, preference: bool = False) -> str | None:
        """Why this entry cannot be trained on, or None. preference: for a preference stage (train.stage=dpo...),
        which reads ranking entries (chosen/rejected) and KTO entries (kto_tag) instead of conversations."""
        if self.invalid:
            return f"in {INFO_FILE} is malformed: {'; '.join(self.invalid)}"
        if self.formatting not in DEFAULT_COLUMNS:
            return f"has formatting={self.formatting!r}; tasktune reads {', '.join(DEFAULT_COLUMNS)}"
        is_preference = self.ranking or "kto_tag" in self.columns
        if self.ranking and not preference:
            return "is ranking (preference) data: train it with train.stage=dpo | orpo | simpo | rm"
        if is_preference and not preference:
            return "has a kto_tag column (KTO preference labels): train it with train.stage=kto"
        if preference and not is_preference:
            return "is not preference data: set \"ranking\": true (chosen/rejected) or a kto_tag column"
        unsupported = sorted({UNSUPPORTED_COLUMNS[c] for c in self.columns if c in UNSUPPORTED_COLUMNS
                              and not (preference and c in PREFERENCE_COLUMNS)})
        if unsupported:
            return f"has columns tasktune does not train on: {', '.join(unsupported)}"
        if (not preference and self.formatting == "alpaca" and "prompt" in self.columns
                and "response" not in self.columns):
            return "is plain text for pretraining (columns.prompt only); tasktune trains on conversations"
        if self.path is None or not self.path.exists():
            remote = [(k, getattr(self, k)) for k in REMOTE_FIELDS if getattr(self, k)]
            if remote:
                key, value = remote[0]
                return (
                    f"is {REMOTE_FIELDS[key]} ({key}={value}); tasktune never downloads: "
                    "save it locally and set file_name"
                )
            if self.file_name is None:
                return "has no file_name"
            return f"has file_name={self.file_name!r} but {self.path} does not exist"
        return None


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3)
    if close:
        return f"did you mean {', '.join(map(repr, close))}?"
    return f"known: {', '.join(sorted(choices)[:20])}{' ...' if len(choices) > 20 else ''}"


FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "file_name": (str,), "formatting": (str,), "columns": (dict,), "tags": (dict,), "split": (str,),
    "num_samples": (int,), "ranking": (bool,), "hf_hub_url": (str,), "ms_hub_url": (str,), "om_hub_url": (str,),
    "script_url": (str,), "cloud_file_name": (str,), "subset": (str,), "folder": (str,),
}
"""What each known dataset_info.json field must hold (null is allowed for all of them)."""
KNOWN_COLUMNS = sorted({c for cols in DEFAULT_COLUMNS.values() for c in cols} | set(UNSUPPORTED_COLUMNS)
                       | {"prompt", "query", "response", "history"})
KNOWN_TAGS = sorted(DEFAULT_TAGS["sharegpt"])


def _type_name(types: tuple[type, ...]) -> str:
    return {str: "a string", dict: "an object", int: "an integer", bool: "true or false"}[types[0]]


def _close(key: str, known: list[str]) -> str | None:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    return close[0] if close else None


def entry_problems(entry: Any) -> list[str]:
    """Field-by-field problems of one dataset_info.json entry (empty when it is well formed)."""
    if not isinstance(entry, dict):
        return [f"is {type(entry).__name__}, expected an object of fields"]
    problems = []
    for key, value in entry.items():
        if key not in FIELD_TYPES:
            close = _close(str(key), list(FIELD_TYPES))
            if close:
                problems.append(f"has an unknown field {key!r} (did you mean {close!r}?)")
            continue
        types = FIELD_TYPES[key]
        bad_int = isinstance(value, bool) and bool not in types
        if value is not None and (not isinstance(value, types) or bad_int):
            problems.append(f"field {key!r} must be {_type_name(types)}, got {type(value).__name__} {value!r:.60}")
            continue
        if key in ("columns", "tags") and isinstance(value, dict):
            known = KNOWN_COLUMNS if key == "columns" else KNOWN_TAGS
            for sub, name in value.items():
                if not isinstance(name, str):
                    problems.append(f"{key}.{sub} must be a string, got {type(name).__name__}")
                elif sub not in known:
                    close = _close(sub, known)
                    hint = f"did you mean {close!r}?" if close else f"known: {', '.join(known)}"
                    problems.append(f"has an unknown {key} key {sub!r} ({hint})")
    return problems


def parse_entry(name: str, entry: Any, dataset_dir: Path) -> DatasetSpec:
    """The spec of one entry; a malformed one keeps its problems (reported when it is selected)."""
    problems = entry_problems(entry)
    if problems:
        return DatasetSpec(name=name, invalid=problems)
    spec = DatasetSpec(
        name=name,
        **{k: v for k, v in entry.items() if k in FIELD_TYPES and v is not None},
        extra={k: v for k, v in entry.items() if k not in FIELD_TYPES},
    )
    if spec.file_name:
        spec.path = dataset_dir / spec.file_name
    return spec


def load_registry(dataset_dir: str | Path) -> dict[str, DatasetSpec]:
    """All entries of `dataset_dir`/dataset_info.json (none when the file is absent). Every entry loads;
    a malformed one carries its problems, raised only when it is selected."""
    dataset_dir = Path(dataset_dir)
    info = dataset_dir / INFO_FILE
    if not info.is_file():
        return {}
    try:
        data = json.loads(read_text(info))
    except (json.JSONDecodeError, RecursionError) as err:
        raise DataError(f"{info}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{info}: expected an object of name -> entry, got {type(data).__name__}")
    return {name: parse_entry(name, entry, dataset_dir) for name, entry in data.items()}


def detect_format(path: Path) -> DatasetSpec:
    """A spec for a direct file path, its format told by the first row's keys."""
    report = RejectReport()
    rows = read_rows(path, report)
    first = next(rows, None)
    if first is None:
        if report.rejects:
            raise DataError(f"{path}: no usable rows, every row was rejected\n{report.summary()}")
        raise DataError(f"{path}: no rows")
    row = first[0]
    for column in ("messages", "conversations"):
        if column in row:
            turns = row[column]
            item = turns[0] if isinstance(turns, list) and turns and isinstance(turns[0], dict) else {}
            formatting = "sharegpt" if "from" in item else "openai"
            return DatasetSpec(
                name=str(path),
                file_name=str(path),
                formatting=formatting,
                columns={"messages": column},
                path=path,
            )
    if "instruction" in row:
        return DatasetSpec(name=str(path), file_name=str(path), path=path)
    raise DataError(
        f"{path}: cannot tell the format from the columns {sorted(row)}; expected messages (openai), "
        "conversations (sharegpt) or instruction (alpaca), or register it in dataset_info.json"
    )


def _looks_like_path(name: str) -> bool:
    return Path(name).suffix in READERS or "/" in name or "\\" in name


def resolve_dataset(name: str, dataset_dir: str | Path, preference: bool = False) -> DatasetSpec:
    """The usable spec for a `data.datasets` entry, or DataError saying why it cannot be used.
    preference: for a preference stage (see `DatasetSpec.problem`); file paths are then detected by the caller."""
    dataset_dir = Path(dataset_dir)
    registry = load_registry(dataset_dir)
    if name in registry:
        spec = registry[name]
        problem = spec.problem(preference)
        if problem:
            raise DataError(f"dataset {name!r} {problem}")
        if spec.split != "train":
            logger.warning(
                "dataset %r: split=%r applies to hub data; the local file is read whole", name, spec.split
            )
        return spec
    for candidate in (Path(name), dataset_dir / name):
        if candidate.exists():
            return detect_format(candidate)
    if _looks_like_path(name):
        raise DataError(f"dataset {name!r}: no such file (nor {dataset_dir / name})")
    where = dataset_dir / INFO_FILE
    if not registry:
        raise DataError(f"dataset {name!r} is not a file, and {where} does not exist or is empty")
    raise DataError(f"dataset {name!r} is not in {where}; {did_you_mean(name, list(registry))}")
