"""The task registry, the shared protocol, TaskConfig checks and label inference."""

from __future__ import annotations

import json

import pytest

from tasktune.config.schema import ConfigError
from tasktune.tasks import TASKS, TaskConfig, get_task, resolve_labels

PROTOCOL = ("name", "read", "to_messages", "parse", "score", "output_constraint")


def test_every_task_has_the_protocol_members_and_its_own_name():
    assert sorted(TASKS) == ["classify", "mt", "ner", "qa"]
    for key, task in TASKS.items():
        assert all(callable(getattr(task, m)) for m in PROTOCOL[1:]), key
        assert task.name == key


def test_get_task_suggests_the_closest_name():
    assert get_task("qa") is TASKS["qa"]
    with pytest.raises(ConfigError, match="did you mean 'classify'"):
        get_task("clasify")
    with pytest.raises(ConfigError, match="known: ner, classify, qa, mt"):
        get_task("summarise")


def test_task_config_check():
    TaskConfig(name="ner", labels=["PER"], label_descriptions={"PER": "person"}).check()
    with pytest.raises(ConfigError, match="did you mean 'ner'"):
        TaskConfig(name="nerr").check()
    with pytest.raises(ConfigError, match="ner_output_format"):
        TaskConfig(name="ner", ner_output_format="xml").check()
    with pytest.raises(ConfigError, match="duplicates"):
        TaskConfig(labels=["a", "a"]).check()
    with pytest.raises(ConfigError, match="not in task.labels"):
        TaskConfig(labels=["a"], label_descriptions={"b": "?"}).check()
    with pytest.raises(ConfigError, match="tag_scheme"):
        TaskConfig(tag_scheme="bilou").check()
    with pytest.raises(ConfigError, match="together"):
        TaskConfig(name="mt", source_lang="zh").check()


def test_resolve_labels_infers_from_train_file_and_reports(tmp_path):
    train = tmp_path / "train.jsonl"
    rows = [{"text": "a", "label": 1, "label_text": "pos"}, {"text": "b", "label": 0, "label_text": "neg"}]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:1]))
    spec, report = resolve_labels(TaskConfig(name="classify", train_file=str(train)))
    assert spec.labels == ["neg", "pos"]  # id order, names from label_text
    assert report.endswith("0=neg (1), 1=pos (2)")
    same, nothing = resolve_labels(spec)
    assert same is spec and nothing is None
    with pytest.raises(ConfigError, match="no train_file"):
        resolve_labels(TaskConfig(name="ner"))
