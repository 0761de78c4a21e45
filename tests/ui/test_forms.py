"""The Train form: every shipped example YAML survives config -> form values -> config unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasktune.config.load import load_config
from tasktune.config.schema import Config, ConfigError
from tasktune.ui.forms import command_line, config_fields, config_to_values, parse_extra, values_to_config

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_examples_are_found():
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_round_trip(path):
    cfg = load_config(path)
    values = config_to_values(cfg)
    assert values_to_config(values) == cfg


def test_every_field_has_help_and_a_default_that_round_trips():
    specs = config_fields(Config)
    assert all(spec.help for spec in specs), [s.key for s in specs if not s.help]
    assert values_to_config({s.key: s.default for s in specs}) == Config()
    kinds = {s.key: s.kind for s in specs}
    assert kinds["train.max_steps"] == "int" and kinds["output.overwrite"] == "bool"
    assert kinds["task.labels"] == "yaml" and kinds["model.adapter"] == "str"
    choices = {s.key: s.choices for s in specs}
    assert "cosine" in choices["train.lr_scheduler"]


def test_form_text_is_typed_and_checked():
    values = config_to_values(Config())
    values.update({"task.name": "ner", "task.labels": "[PER, LOC]", "model.adapter": "",
                   "task.instruction": "Entity types: PER. List them: [x]", "train.max_steps": 3})
    cfg = values_to_config(values, parse_extra("train.eval_steps=1\n# a comment\n\neval.limit=4"))
    assert cfg.task.labels == ["PER", "LOC"] and cfg.model.adapter is None
    assert cfg.task.instruction == "Entity types: PER. List them: [x]"
    assert (cfg.train.max_steps, cfg.train.eval_steps, cfg.eval.limit) == (3, 1, 4)
    with pytest.raises(ConfigError, match="lr_scheduler"):
        values_to_config({**values, "train.lr_scheduler": "cosyne"})
    with pytest.raises(ConfigError, match="max_steps"):
        values_to_config({**values, "train.max_steps": "ten"})


def test_command_line_is_quoted():
    assert command_line("train", Path("/tmp/a b.yaml"), ["x=1"]) == "tasktune train '/tmp/a b.yaml' x=1"
