"""llama.cpp as the decoder of one chat stream (`tasktune chat --backend llama.cpp`).

One token at a time, PyTorch's eager forward pass of a 135M model is mostly per-operator overhead; llama.cpp
decodes the same model about 5x faster on this CPU (`bench/eval_speed.py`, single-stream rows). This backend
exports the model, with its adapter merged, once to GGUF through tasktune's own export path (cached under
`$TASKTUNE_HOME/gguf/`, keyed by the model, the adapter's weights and the GGUF type), and runs it with
llama-cpp-python (`pip install -e '.[gguf-run]'` or `make llamacpp`, which compiles llama.cpp, ~7 minutes
on 2 cores). Prompts are rendered with tasktune's tokenizer and chat template and passed as token ids, so
both backends see the same tokens. The torch engine stays the backend of batched evaluation and of the API
(continuous batching, per-request adapters, constrained decoding).
"""

from __future__ import annotations

import hashlib
import importlib.util
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasktune.config.schema import ConfigError, ModelConfig
from tasktune.model.convert import tasktune_home
from tasktune.model.load import load_tokenizer, resolve_model_dir

BACKENDS = ("torch", "llama.cpp")
GGUF_TYPE = "q8_0"
"""Weights of the cached GGUF: 8-bit, written by the converter alone (no compiled quantizer needed)."""


def available() -> bool:
    """Whether llama-cpp-python is installed."""
    return importlib.util.find_spec("llama_cpp") is not None


def _fingerprint(model_dir: Path, adapter: str | None, gguf_type: str) -> str:
    digest = hashlib.sha256(f"{model_dir.resolve()}|{gguf_type}".encode())
    for folder in [model_dir] + ([Path(adapter)] if adapter else []):
        for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.json")):
            stat = path.stat()
            digest.update(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def cached_gguf(model: str, adapter: str | None = None, gguf_type: str = GGUF_TYPE,
                template: str | None = None) -> Path:
    """The GGUF of `model` (+ `adapter` merged), exported on first use and reused while neither changes."""
    from tasktune.export.gguf import export_gguf
    from tasktune.export.merge import load_merged, save_model_dir

    model_dir = resolve_model_dir(model)
    out = tasktune_home() / "gguf" / f"{model_dir.name}-{_fingerprint(model_dir, adapter, gguf_type)}.{gguf_type}.gguf"
    if out.is_file():
        return out
    print(f"exporting {model}{f' + {adapter}' if adapter else ''} to GGUF {gguf_type} once: {out}", flush=True)
    with tempfile.TemporaryDirectory(dir=tasktune_home()) as tmp:
        merged, tokenizer = load_merged(model, adapter, template)
        folder = save_model_dir(merged, tokenizer, Path(tmp) / "merged", dtype="float32")
        export_gguf(folder, out, gguf_type, name=model_dir.name)
    return out


class LlamaCppChat:
    """`stream_chat` of one model (+ one adapter) through llama.cpp; the torch Engine's chat interface."""

    def __init__(self, model: str, adapter: str | None = None, threads: int | None = None,
                 context: int = 4096, template: str | None = None):
        if not available():
            raise ConfigError("--backend llama.cpp needs llama-cpp-python: `make llamacpp` (or pip install -e "
                              "'.[gguf-run]'; it compiles llama.cpp, about 7 minutes on 2 cores)")
        from llama_cpp import Llama

        from tasktune.runtime import configure_threads

        self.base_model = model
        self.models = [model]
        cfg = ModelConfig(name_or_path=model, adapter=adapter, template=template)
        self.tokenizer = load_tokenizer(cfg)
        self.path = cached_gguf(model, adapter, template=template)
        self.llm: Any = Llama(str(self.path), n_threads=threads or configure_threads(), n_ctx=context,
                              verbose=False)

    def resolve(self, name: str | None) -> str:
        from tasktune.serve.engine import UnknownModelError

        if name not in (None, "base", self.base_model):
            raise UnknownModelError("the llama.cpp backend serves one model (its adapter merged); use "
                                    "--backend torch to switch adapters")
        return self.base_model

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def stream_chat(self, messages: list[dict], model: str | None = None, max_new_tokens: int = 256,
                    temperature: float = 0.0, **_: Any) -> Iterator[str]:
        """The reply to `messages`, piece by piece (greedy when temperature is 0)."""
        self.resolve(model)
        stream = self.llm.create_completion(self.prompt_ids(messages), max_tokens=max_new_tokens,
                                            temperature=temperature, top_k=0 if temperature > 0 else 1,
                                            stream=True)
        for chunk in stream:
            text = chunk["choices"][0]["text"]
            if text:
                yield text

    def close(self) -> None:
        """Free llama.cpp's model and context now (not at garbage collection)."""
        if hasattr(self.llm, "close"):
            self.llm.close()
