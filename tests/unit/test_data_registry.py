"""Registry: LLaMA-Factory's dataset_info.json loads unchanged; unusable entries fail when selected."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import SHARED_DATA, needs_shared

from tasktune.data.pipeline import read_conversations
from tasktune.data.registry import load_registry, resolve_dataset
from tasktune.data.report import DataError, RejectReport

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "data"
LF_DEMO = SHARED_DATA / "instruct" / "llamafactory_demo"
PROJECT_DATA = Path(__file__).resolve().parents[2] / "data"


def conversations(name: str, dataset_dir: Path, max_samples: int | None = None):
    report = RejectReport()
    convs = read_conversations(resolve_dataset(name, dataset_dir), report, max_samples, seed=0)
    return convs, report


@needs_shared("instruct/llamafactory_demo")
def test_llamafactory_dataset_info_loads_unchanged_and_local_entries_work():
    raw = json.loads((LF_DEMO / "dataset_info.json").read_text())
    registry = load_registry(LF_DEMO)
    assert list(registry) == list(raw)
    assert registry["glaive_toolcall_en_demo"].column("messages") == "conversations"
    assert registry["ultrachat_200k"].tag("user_tag") == "user"

    convs, report = conversations("alpaca_en_demo", LF_DEMO, max_samples=50)
    assert len(convs) == 50 and len(report) == 0
    assert [m.role for m in convs[0].messages] == ["user", "assistant"]
    assert convs[0].source.endswith("alpaca_en_demo.json:#0")

    convs, report = conversations("identity", LF_DEMO)
    assert len(convs) == 91 and len(report) == 0
    assert convs[0].messages[0].content == "hi"

    convs, report = conversations("glaive_toolcall_en_demo", LF_DEMO, max_samples=40)
    assert len(convs) == 40 and len(report) == 0
    with_tools = [c for c in convs if c.tools]
    assert with_tools and all(isinstance(t, dict) and "name" in t for t in with_tools[0].tools)
    assert any(m.role == "tool" for c in convs for m in c.messages)


@needs_shared("instruct/llamafactory_demo")
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("alpaca_en", r"is on the hub \(hf_hub_url=llamafactory/alpaca_en\); tasktune never downloads"),
        ("dpo_en_demo", "ranking"),
        ("rlhf_v", "ranking"),
        ("mllm_demo", r"images \(multimodal\)"),
        ("kto_en_demo", "kto_tag"),
        ("c4_demo", "pretraining"),
        ("glaive_toolcall_zh_demo", r"glaive_toolcall_zh_demo\.json does not exist"),
        ("alpaca_enn", "did you mean 'alpaca_en'"),
    ],
)
def test_llamafactory_unusable_entries_fail_when_selected(name, message):
    with pytest.raises(DataError, match=message):
        resolve_dataset(name, LF_DEMO)


def test_asset_registry_formats_and_reasons():
    assert len(conversations("tiny_alpaca", ASSETS)[0]) == 4
    csv_convs, _ = conversations("tiny_alpaca_csv", ASSETS)
    assert csv_convs[1].messages[0].content == 'Spell "cat" backwards.'
    assert csv_convs[1].source.endswith("alpaca_tiny.csv:3")
    share, _ = conversations("tiny_sharegpt", ASSETS)
    assert [m.role for m in share[0].messages] == ["user", "assistant", "tool", "assistant"]
    assert share[0].tools[0]["name"] == "get_weather"
    assert len(conversations("tiny_openai", ASSETS)[0]) == 3
    with pytest.raises(DataError, match=r"'tiny_on_hub' is on the hub \(hf_hub_url=someone/tiny\)"):
        resolve_dataset("tiny_on_hub", ASSETS)
    with pytest.raises(DataError, match="'tiny_prefs' is ranking"):
        resolve_dataset("tiny_prefs", ASSETS)
    with pytest.raises(DataError, match="not_here.json does not exist"):
        resolve_dataset("tiny_missing", ASSETS)
    with pytest.raises(DataError, match="did you mean 'tiny_openai'"):
        resolve_dataset("tiny_opnai", ASSETS)


def test_direct_paths_detect_the_format(tmp_path):
    assert resolve_dataset(str(ASSETS / "openai_tiny.jsonl"), tmp_path).formatting == "openai"
    spec = resolve_dataset(str(ASSETS / "sharegpt_tiny.json"), tmp_path)
    assert (spec.formatting, spec.column("messages")) == ("sharegpt", "conversations")
    assert resolve_dataset(str(ASSETS / "alpaca_tiny.jsonl"), tmp_path).formatting == "alpaca"
    shutil.copy(ASSETS / "openai_tiny.jsonl", tmp_path / "mine.jsonl")
    assert resolve_dataset("mine.jsonl", tmp_path).path == tmp_path / "mine.jsonl"  # relative to dataset_dir
    (tmp_path / "odd.jsonl").write_text('{"text": "plain"}\n')
    with pytest.raises(DataError, match="cannot tell the format"):
        resolve_dataset(str(tmp_path / "odd.jsonl"), tmp_path)
    with pytest.raises(DataError, match="no such file"):
        resolve_dataset("nowhere/data.jsonl", tmp_path)


def test_project_registry_has_the_demo_entry():
    spec = load_registry(PROJECT_DATA)["demo_ner_instruct"]
    assert (spec.file_name, spec.formatting) == ("demo/ner_instruct.json", "alpaca")
