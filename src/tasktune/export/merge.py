"""Merge a LoRA adapter into its base model and save a plain Hugging Face model directory.

The directory needs nothing of tasktune: safetensors shards (+ index when there are several), config.json,
generation_config.json whose eos includes the chat template's end-of-turn token, and the tokenizer with its
chat template, so `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained(dir)` load it anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasktune.config.schema import ModelConfig
from tasktune.model.load import end_of_turn_ids, load_model, load_tokenizer

if TYPE_CHECKING:
    from torch import nn


def load_unmerged(model: str, adapter: str | None = None, template: str | None = None) -> tuple[nn.Module, Any]:
    """(model, tokenizer): `model` in float32 with `adapter` loaded on top (a PeftModel), not merged yet."""
    cfg = ModelConfig(name_or_path=model, adapter=adapter, template=template, dtype="float32")
    return load_model(cfg), load_tokenizer(cfg)


def load_merged(model: str, adapter: str | None = None, template: str | None = None) -> tuple[nn.Module, Any]:
    """(model, tokenizer): `model` in float32 with `adapter` merged into its weights (peft merge_and_unload).

    Merging happens in float32 so a later cast to bf16/fp16 rounds the merged weights once.
    """
    loaded, tokenizer = load_unmerged(model, adapter, template)
    return merge(loaded), tokenizer


def merge(loaded: nn.Module) -> nn.Module:
    """A `load_unmerged` model with its adapter (if any) merged into the weights, in eval mode."""
    return (loaded.merge_and_unload() if hasattr(loaded, "merge_and_unload") else loaded).eval()


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The tokenizer's eos id followed by any other end-of-turn token ids it has (deduplicated)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids += end_of_turn_ids(tokenizer)
    return list(dict.fromkeys(ids))


def save_model_dir(model: nn.Module, tokenizer: Any, out_dir: Path, dtype: str = "float32",
                   max_shard_size: str | int = "2GB") -> Path:
    """Cast `model` to `dtype` and save it with `tokenizer` into `out_dir` as safetensors shards."""
    import torch

    model.to(getattr(torch, dtype))
    eos = stop_token_ids(tokenizer)
    if eos:
        model.generation_config.eos_token_id = eos[0] if len(eos) == 1 else eos
        model.config.eos_token_id = eos[0]
    if tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if not tokenizer.chat_template:
        print(f"warning: the tokenizer has no chat template; {out_dir} will only work for plain text", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out_dir)
    return out_dir
