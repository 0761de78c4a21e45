"""Read a LLaMA-Factory style `dataset_info.json` and resolve `data.datasets` entries to local files.

Every entry loads; one that tasktune cannot use (hub, script, cloud, preference or multimodal data,
absent file) fails only when it is selected, with the reason. Entries may also be direct file paths.
"""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tasktune.data.report import DataError, RejectReport
from tasktune.data.sources import READERS, read_rows

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

    def column(self, key: str) -> str | None:
        return self.columns.get(key, DEFAULT_COLUMNS.get(self.formatting, {}).get(key))

    def tag(self, key: str) -> str:
        return self.tags.get(key, DEFAULT_TAGS.get(self.formatting, DEFAULT_TAGS["sharegpt"])[key])

    def problem(self) -> str | None:
        """Why this entry cannot be trained on, or None."""
        if self.formatting not in DEFAULT_COLUMNS:
            return f"has formatting={self.formatting!r}; tasktune reads {', '.join(DEFAULT_COLUMNS)}"
        if self.ranking:
            return "is ranking (preference) data; tasktune trains on conversations only"
        unsupported = sorted({UNSUPPORTED_COLUMNS[c] for c in self.columns if c in UNSUPPORTED_COLUMNS})
        if unsupported:
            return f"has columns tasktune does not train on: {', '.join(unsupported)}"
        if self.formatting == "alpaca" and "prompt" in self.columns and "response" not in self.columns:
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


def parse_entry(name: str, entry: dict[str, Any], dataset_dir: Path) -> DatasetSpec:
    known = {f.name for f in fields(DatasetSpec)} - {"name", "extra", "path"}
    spec = DatasetSpec(
        name=name,
        **{k: v for k, v in entry.items() if k in known},
        extra={k: v for k, v in entry.items() if k not in known},
    )
    if spec.file_name:
        spec.path = dataset_dir / spec.file_name
    return spec


def load_registry(dataset_dir: str | Path) -> dict[str, DatasetSpec]:
    """All entries of `dataset_dir`/dataset_info.json (none when the file is absent); nothing is checked."""
    dataset_dir = Path(dataset_dir)
    info = dataset_dir / INFO_FILE
    if not info.is_file():
        return {}
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{info}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{info}: expected an object of name -> entry")
    bad = [name for name, entry in data.items() if not isinstance(entry, dict)]
    if bad:
        raise DataError(f"{info}: entries {bad} are not objects")
    return {name: parse_entry(name, entry, dataset_dir) for name, entry in data.items()}


def detect_format(path: Path) -> DatasetSpec:
    """A spec for a direct file path, its format told by the first row's keys."""
    rows = read_rows(path, RejectReport())
    first = next(rows, None)
    if first is None:
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


def resolve_dataset(name: str, dataset_dir: str | Path) -> DatasetSpec:
    """The usable spec for a `data.datasets` entry, or DataError saying why it cannot be used."""
    dataset_dir = Path(dataset_dir)
    registry = load_registry(dataset_dir)
    if name in registry:
        spec = registry[name]
        problem = spec.problem()
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
