"""Build a `Config` from YAML plus `section.key=value` overrides; save it; describe it for `--help`."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tasktune.config.schema import Config, ConfigError


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(choices))})"


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Turn a YAML/CLI value into the field's declared type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            return None
        return _coerce(value, args[0], where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if value is None:
            return []
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            value = [value]
        return [_coerce(v, item, where) for v in value]
    if dataclasses.is_dataclass(tp):  # an item of a list of sections (`tasks:`)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of keys, got {type(value).__name__}")
        section = tp()
        _apply(section, value, f"{where}.")
        return section
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{where}={value!r}: expected true or false")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}={value!r}: expected a number")
        try:
            number = float(value) if tp is float else int(float(value))
        except (TypeError, ValueError):
            raise ConfigError(f"{where}={value!r}: expected {tp.__name__}") from None
        if tp is int and float(value) != number:
            raise ConfigError(f"{where}={value!r}: expected an integer")
        return number
    if tp is str:
        if isinstance(value, bool):  # YAML 1.1 reads `no`/`off`/`yes` as booleans
            return "yes" if value else "no"
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__}")
        return str(value)
    return value


def _apply(obj: Any, values: dict[str, Any], prefix: str) -> None:
    names = [f.name for f in dataclasses.fields(obj)]
    hints = _field_types(type(obj))
    for key, value in values.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown key {where!r}{_did_you_mean(key, names)}")
        current = getattr(obj, key)
        if _is_section_list(current, hints[key]) and isinstance(value, dict):  # `tasks.1.weight=2`
            _apply_items(current, value, where)
        elif dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where} is a section: give it a mapping of keys")
            _apply(current, value, f"{where}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], where))


def _is_section_list(current: Any, tp: Any) -> bool:
    args = typing.get_args(tp)
    return isinstance(current, list) and typing.get_origin(tp) is list and dataclasses.is_dataclass(args[0])


def _apply_items(items: list[Any], values: dict[Any, Any], where: str) -> None:
    """`{index: {key: value}}` applied to the sections of a list (an override like `tasks.0.weight=2`)."""
    for index, value in values.items():
        try:
            item = items[int(index)]
        except (ValueError, IndexError):
            raise ConfigError(f"{where}.{index}: expected an index below {len(items)}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{where}.{index} is a section: give it a mapping of keys")
        _apply(item, value, f"{where}.{index}.")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.max_steps=10` -> (["train", "max_steps"], 10); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] = (), cls: type = Config) -> Any:
    """Defaults, then the YAML file, then each `key=value` override, in that order."""
    cfg = cls()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        _apply(cfg, data, "")
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        _apply(cfg, nested, "")
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the fully resolved config as YAML (reloadable with `load_config`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal right under a field) of a dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every field, for `--help`."""
    rows: list[tuple[str, str, str]] = []
    obj = cls()
    docs = field_docs(cls)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(describe(type(value), f"{prefix}{f.name}."))
        else:
            rows.append((f"{prefix}{f.name}", repr(value), docs.get(f.name, "")))
    return rows


def help_text(cls: type = Config) -> str:
    lines = ["configuration keys (YAML sections, or key=value overrides):"]
    for key, default, doc in describe(cls):
        lines.append(f"  {key} (default {default})")
        if doc:
            lines.extend(textwrap.wrap(doc, 96, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)
