"""`tasktune chat --backend llama.cpp`: the real SmolLM2 (+ an adapter) exported once to GGUF and decoded by
llama-cpp-python answers like the torch engine. Skipped where llama-cpp-python is not installed
(`make llamacpp`)."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def home(tmp_path_factory, monkeypatch_module):
    path = tmp_path_factory.mktemp("tasktune_home")
    monkeypatch_module.setenv("TASKTUNE_HOME", str(path))
    return path


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_gguf_backend_answers_like_the_torch_engine_and_exports_once(home, smollm2_dir):
    from tasktune.config.schema import ModelConfig
    from tasktune.model.generate import chat_once
    from tasktune.model.load import load_model, load_tokenizer
    from tasktune.serve.llamacpp import LlamaCppChat, cached_gguf

    backend = LlamaCppChat(str(smollm2_dir))
    assert backend.path.parent == home / "gguf" and backend.path.is_file()
    stamp = backend.path.stat().st_mtime_ns
    reply = "".join(backend.stream_chat(QUESTION, max_new_tokens=16))
    cfg = ModelConfig(name_or_path=str(smollm2_dir), dtype="float32")
    torch_reply = chat_once(load_model(cfg), load_tokenizer(cfg), QUESTION, max_new_tokens=16)
    assert "Paris" in reply and "Paris" in torch_reply
    # the same tokens in, greedy: the first words agree despite 8-bit weights
    assert reply.split()[:1] == torch_reply.split()[:1]
    assert cached_gguf(str(smollm2_dir)) == backend.path and backend.path.stat().st_mtime_ns == stamp


def test_chat_cli_runs_on_the_backend(home, smollm2_dir):
    from tasktune.serve.chat import run_chat

    out = io.StringIO()
    assert run_chat(str(smollm2_dir), None, QUESTION[0]["content"], max_new_tokens=12, output=out,
                    backend="llama.cpp") == 0
    assert "Paris" in out.getvalue()
