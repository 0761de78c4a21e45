"""Find a model by registry name or path, and load its tokenizer and causal LM (offline, safetensors only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasktune.config.schema import ModelConfig
from tasktune.model.convert import ensure_converted, package_dir
from tasktune.registry.lookup import did_you_mean, load_registry, pick


class ModelNotFoundError(FileNotFoundError):
    """Neither a registry name nor an existing local model directory."""


def model_registry() -> dict[str, Any]:
    """registry/models.yaml: name -> entry (kind, description, source)."""
    return load_registry("models")


def model_entry(name: str) -> dict[str, Any]:
    """The registry entry for `name`, with `name` added; UnknownEntryError with a did-you-mean otherwise."""
    return {"name": name, **pick(model_registry(), name, "model")}


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A registry name -> its converted (GGUF) or packaged directory; a local directory -> itself."""
    registry = model_registry()
    key = str(name_or_path)
    if key in registry:
        entry = model_entry(key)
        source = entry["source"]
        if source["type"] == "gguf":
            return ensure_converted(entry)
        if source["type"] == "package_dir":
            return package_dir(source["package"]) / source.get("subdir", "")
        raise ValueError(f"registry/models.yaml: {key}: unknown source.type {source['type']!r}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        problem = f"{key} is a file, not a model directory"
    else:
        close = did_you_mean(key, registry)
        problem = f"unknown model {key!r}{close if 'did you mean' in close else ''} and no such directory"
    raise ModelNotFoundError(
        f"{problem}. Registry models: {', '.join(sorted(registry))}; "
        "a local Hugging Face model directory (config.json + safetensors) works too."
    )


def model_kind(name_or_path: str | Path) -> str:
    """`kind` from the registry (causal-lm | encoder); local directories are assumed causal-lm."""
    entry = model_registry().get(str(name_or_path))
    return entry.get("kind", "causal-lm") if entry else "causal-lm"


def load_tokenizer(cfg: ModelConfig, padding_side: str = "right"):
    """The model's tokenizer (the adapter's own copy when it saved one), pad token set, template applied.

    padding_side: "right" for training, "left" for batched generation.
    """
    from transformers import AutoTokenizer

    from tasktune.data.tokenize import load_template

    source = resolve_model_dir(cfg.name_or_path)
    if cfg.adapter and (Path(cfg.adapter) / "tokenizer_config.json").is_file():
        source = Path(cfg.adapter)
    tokenizer = AutoTokenizer.from_pretrained(
        source, trust_remote_code=cfg.trust_remote_code, local_files_only=True
    )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{source}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    if cfg.template:
        tokenizer.chat_template = load_template(cfg.template)
    return tokenizer


def load_model(cfg: ModelConfig, torch_dtype: Any = None):
    """The causal LM of `cfg` (with `cfg.adapter` loaded on top as a PeftModel), in eval mode.

    torch_dtype: a torch dtype overriding `cfg.dtype`.
    """
    import torch
    from transformers import AutoModelForCausalLM

    cfg.check()
    if model_kind(cfg.name_or_path) != "causal-lm":
        raise ValueError(f"model {cfg.name_or_path!r} is an encoder, not a causal LM: it cannot generate")
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_dir(cfg.name_or_path),
        dtype=torch_dtype or getattr(torch, cfg.dtype),
        use_safetensors=True,
        trust_remote_code=cfg.trust_remote_code,
        attn_implementation=cfg.attn_implementation,
        local_files_only=True,
    )
    if cfg.adapter:
        from peft import PeftModel

        adapter = Path(cfg.adapter)
        if not (adapter / "adapter_config.json").is_file():
            raise FileNotFoundError(f"model.adapter={cfg.adapter!r}: no adapter_config.json in that folder")
        model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
    return model.eval()
