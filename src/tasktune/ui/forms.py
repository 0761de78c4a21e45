"""The Train form: one input per config field (its docstring as help), and the way back to a `Config`.

Form values are plain Python values keyed by the dotted field name (`train.max_steps`): bools and numbers
as they are, strings as text, and everything else (lists, maps, optional numbers) as one line of YAML.
`values_to_config` goes through `load_config` with `key=value` overrides, so the form is checked exactly
like the command line.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasktune.config.load import field_docs, load_config
from tasktune.config.schema import Config, ConfigError

BASIC_FIELDS = {
    "model": ("name_or_path", "adapter"),
    "task": ("name", "train_file", "eval_file", "labels"),
    "data": ("datasets", "dataset_dir", "cutoff_len", "val_size"),
    "lora": ("r", "alpha"),
    "train": ("finetuning", "learning_rate", "num_epochs", "max_steps", "batch_size", "eval_steps", "save_steps"),
    "eval": ("limit", "max_new_tokens", "during_training_limit"),
    "output": ("dir", "overwrite"),
}
"""Fields shown unfolded; every other field of a section sits in its folded "advanced" group."""


@dataclass(frozen=True)
class FieldSpec:
    key: str
    """Dotted name, e.g. `train.max_steps`."""
    section: str
    name: str
    kind: str
    """bool | int | float | str (plain text; empty = None when optional) | yaml (one line of YAML)."""
    default: Any
    """The default as the form shows it."""
    help: str
    optional: bool
    basic: bool
    choices: tuple[str, ...] = ()


def _kind(tp: Any) -> tuple[str, bool]:
    origin = typing.get_origin(tp)
    optional = False
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) != 1:
            return "yaml", optional
        tp = args[0]
    if tp is bool:
        return ("yaml" if optional else "bool"), optional
    if tp in (int, float):
        return ("yaml" if optional else tp.__name__), optional
    if tp is str:
        return "str", optional
    return "yaml", optional


def _choices(help_text: str) -> tuple[str, ...]:
    """`a | b | c` at the start of a docstring (after an optional colon) lists the accepted values."""
    head = help_text.split(".")[0].split(":")[-1]
    parts = [p.strip().split(" ")[0] for p in head.split("|")]
    return tuple(parts) if len(parts) > 1 and all(p.isidentifier() for p in parts) else ()


def config_fields(cls: type = Config) -> list[FieldSpec]:
    """Every field of every section, in declaration order; top-level fields that are not sections (a list of
    sections such as `tasks`) form the section "" and are edited as YAML."""
    specs = []
    root = cls()
    root_hints = typing.get_type_hints(cls)
    for section in dataclasses.fields(root):
        sub = getattr(root, section.name)
        if not dataclasses.is_dataclass(sub):
            kind, optional = _kind(root_hints[section.name])
            specs.append(FieldSpec(key=section.name, section="", name=section.name, kind=kind,
                                   default=to_form_value(sub, kind), help=field_docs(cls).get(section.name, ""),
                                   optional=optional, basic=False))
            continue
        hints = typing.get_type_hints(type(sub))
        docs = field_docs(type(sub))
        for f in dataclasses.fields(sub):
            kind, optional = _kind(hints[f.name])
            doc = docs.get(f.name, "")
            specs.append(FieldSpec(
                key=f"{section.name}.{f.name}", section=section.name, name=f.name, kind=kind,
                default=to_form_value(getattr(sub, f.name), kind), help=doc, optional=optional,
                basic=f.name in BASIC_FIELDS.get(section.name, ()), choices=_choices(doc) if kind == "str" else (),
            ))
    return specs


def _plain(value: Any) -> Any:
    """Sections inside lists or maps as plain mappings (for YAML)."""
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _get(cfg: Any, spec: FieldSpec) -> Any:
    return getattr(cfg, spec.name) if not spec.section else getattr(getattr(cfg, spec.section), spec.name)


def to_form_value(value: Any, kind: str) -> Any:
    if kind == "yaml":
        return "" if value is None else yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000,
                                                       allow_unicode=True).strip().removesuffix("...").strip()
    if kind == "str":
        return "" if value is None else str(value)
    return value


def from_form_value(text: Any, spec: FieldSpec) -> Any:
    """A form value as the config value it stands for (types are checked later by `load_config`)."""
    if spec.kind == "str":
        text = "" if text is None else str(text)
        return None if spec.optional and not text.strip() else text
    if spec.kind == "yaml":
        text = "" if text is None else str(text)
        if not text.strip():
            return None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{spec.key}: not valid YAML: {exc}") from None
    if spec.kind in ("int", "float") and (text is None or text == ""):
        raise ConfigError(f"{spec.key}: a number is required")
    return text


def config_to_values(cfg: Config) -> dict[str, Any]:
    """Form values of every field of `cfg`."""
    values = {}
    for spec in config_fields(type(cfg)):
        values[spec.key] = to_form_value(_get(cfg, spec), spec.kind)
    return values


def values_to_overrides(values: dict[str, Any], cls: type = Config) -> list[str]:
    """`key=value` overrides (values as JSON, which YAML reads back exactly) for the fields in `values`."""
    by_key = {spec.key: spec for spec in config_fields(cls)}
    overrides = []
    for key, text in values.items():
        if key not in by_key:
            raise ConfigError(f"unknown form field {key!r}")
        overrides.append(f"{key}={json.dumps(from_form_value(text, by_key[key]), ensure_ascii=False)}")
    return overrides


def values_to_config(values: dict[str, Any], extra: list[str] = (), cls: type = Config) -> Config:
    """The config the form describes, then the `extra` key=value overrides; ConfigError when invalid."""
    cfg = load_config(None, [*values_to_overrides(values, cls), *extra], cls=cls)
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if dataclasses.is_dataclass(section) and hasattr(section, "check"):
            section.check()
    return cfg


def parse_extra(text: str) -> list[str]:
    """Extra `key=value` overrides typed one per line (blank lines and `#` comments skipped)."""
    lines = [line.strip() for line in (text or "").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def command_line(subcommand: str, config_path: Path, args: list[str] = ()) -> str:
    """The `tasktune ...` line a job runs, quoted for a POSIX shell (shown to the user, never executed)."""
    return shlex.join(["tasktune", subcommand, str(config_path), *args])
