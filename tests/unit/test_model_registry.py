"""Model registry lookup, model directory resolution and the once-only, atomic GGUF conversion cache."""

from __future__ import annotations

import json

import pytest

from tasktune.model import convert
from tasktune.model.load import ModelNotFoundError, model_entry, model_registry, resolve_model_dir
from tasktune.registry.lookup import UnknownEntryError, load_registry, pick


def test_models_registry_has_both_entries():
    registry = model_registry()
    assert registry["smollm2-135m-instruct"]["kind"] == "causal-lm"
    assert registry["smollm2-135m-instruct"]["source"]["type"] == "gguf"
    assert registry["minilm-l6"]["kind"] == "encoder"


def test_pick_suggests_close_names():
    with pytest.raises(UnknownEntryError, match=r"model 'smollm2'.*did you mean 'smollm2-135m"):
        pick(model_registry(), "smollm2", "model")
    with pytest.raises(KeyError, match=r"known: a, b"):
        pick({"a": 1, "b": 2}, "zzzzzz", "thing")


def test_load_registry_reads_json_path(tmp_path):
    path = tmp_path / "things.json"
    path.write_text(json.dumps({"one": {"x": 1}}))
    assert pick(load_registry(path), "one", "thing") == {"x": 1}
    with pytest.raises(FileNotFoundError, match="models"):
        load_registry("no-such-registry")


def test_unknown_model_error_names_registry_entries_and_local_paths(tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model_dir(tmp_path / "missing")
    message = str(err.value)
    assert "smollm2-135m-instruct" in message and "minilm-l6" in message
    assert "local" in message


def test_local_directory_resolves_to_itself(tiny_llama_dir):
    assert resolve_model_dir(str(tiny_llama_dir)) == tiny_llama_dir


def test_packaged_encoder_resolves_in_place():
    path = resolve_model_dir("minilm-l6")
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _fake_converter(calls: list, fail: bool = False):
    def converter(folder, gguf_file, out_dir):
        calls.append(gguf_file)
        (out_dir / "model.safetensors").write_bytes(b"weights")
        if fail:
            raise RuntimeError("crash mid-conversion")

    return converter


def test_conversion_runs_once_and_is_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKTUNE_HOME", str(tmp_path))
    entry = model_entry("smollm2-135m-instruct")
    calls: list = []
    with pytest.raises(RuntimeError, match="crash"):
        convert.ensure_converted(entry, _fake_converter(calls, fail=True))
    models = tmp_path / "models"
    assert not (models / entry["name"]).exists()
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []  # no temp left behind
    assert convert.cached_dir(entry) is None

    out = convert.ensure_converted(entry, _fake_converter(calls))
    assert out == models / entry["name"] and (out / "model.safetensors").is_file()
    assert convert.ensure_converted(entry, _fake_converter(calls)) == out
    assert convert.cached_dir(entry) == out
    assert len(calls) == 2  # the crashed run and the first successful one; the third call was a no-op


def test_stale_conversion_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKTUNE_HOME", str(tmp_path))
    entry = model_entry("smollm2-135m-instruct")
    calls: list = []
    out = convert.ensure_converted(entry, _fake_converter(calls))
    monkeypatch.setattr(convert, "FORMAT_VERSION", convert.FORMAT_VERSION + 1)
    assert convert.ensure_converted(entry, _fake_converter(calls)) == out
    assert len(calls) == 2
    assert json.loads((out / convert.MARKER).read_text())["format"] == convert.FORMAT_VERSION
