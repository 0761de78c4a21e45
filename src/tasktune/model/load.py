"""Find a model by registry name or path, and load its tokenizer and causal LM (offline, safetensors only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasktune.config.errors import UserError
from tasktune.config.schema import ModelConfig
from tasktune.model.adapters import AdapterMismatchError, check_adapter_base
from tasktune.model.convert import ensure_converted, package_dir
from tasktune.registry.lookup import did_you_mean, load_registry, pick


class ModelNotFoundError(FileNotFoundError):
    """Neither a registry name nor an existing local model directory."""


class ModelError(UserError, ValueError):
    """A model directory tasktune refuses or cannot use (no tokenizer, pickled weights, remote code)."""


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def _remote_code_error(source: Path, err: Exception) -> ModelError:
    return ModelError(f"{source} ships its own Python code (auto_map in its config) and model.trust_remote_code "
                      "is off: tasktune does not run it; set model.trust_remote_code=true only for a source you "
                      f"trust ({str(err).splitlines()[0][:200]})")


def check_model_dir(path: Path) -> None:
    """Refuse a directory without config.json, or with only pickled PyTorch weights (a .bin file can run code
    when loaded)."""
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelError(f"{path}: no config.json; expected a Hugging Face model directory")
    if not path.is_dir() or any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json")):
        return
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickled:
        raise ModelError(f"{path} has only pickled weights ({', '.join(pickled[:3])}), which can run code when "
                         "loaded: tasktune loads safetensors only. Convert them once where you trust the file "
                         "(transformers: model.save_pretrained(dir, safe_serialization=True))")


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
    if source.is_dir() and not any((source / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(f"{source}: no tokenizer ({' / '.join(TOKENIZER_FILES[:2])}); copy the tokenizer files of "
                         "the model it was made from into this folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, trust_remote_code=cfg.trust_remote_code, local_files_only=True
        )
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise _remote_code_error(source, err) from err
        raise ModelError(f"{source}: the tokenizer cannot be loaded ({str(err).splitlines()[0][:300]})") from err
    except OSError as err:
        raise ModelError(f"{source}: the tokenizer cannot be loaded ({str(err).splitlines()[0][:300]})") from err
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{source}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    if cfg.template:
        tokenizer.chat_template = load_template(cfg.template)
    return tokenizer


END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
"""End-of-turn tokens of common chat templates, added to the stop ids when the vocabulary has them."""


def end_of_turn_ids(tokenizer) -> list[int]:
    """The ids of the `END_OF_TURN` tokens the tokenizer has, in that order, looked up one by one (`get_vocab()`
    builds a dict of the whole vocabulary: 17 ms a call for SmolLM2)."""
    ids = []
    for token in END_OF_TURN:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and tokenizer.convert_ids_to_tokens(token_id) == token:  # not the unknown id
            ids.append(token_id)
    return ids


def weight_dtype(cfg: ModelConfig):
    """The torch dtype `cfg.dtype` names; `auto` is float32 (the safe choice when the caller does not know)."""
    import torch

    return torch.float32 if cfg.dtype == "auto" else getattr(torch, cfg.dtype)


def load_model(cfg: ModelConfig, torch_dtype: Any = None):
    """The causal LM of `cfg` (with `cfg.adapter` loaded on top as a PeftModel), in eval mode.

    torch_dtype: a torch dtype overriding `cfg.dtype` (whose `auto` means float32 here: callers that know
    better, training an adapter or generating, pass their dtype).
    """
    from transformers import AutoModelForCausalLM

    cfg.check()
    if model_kind(cfg.name_or_path) != "causal-lm":
        raise ValueError(f"model {cfg.name_or_path!r} is an encoder, not a causal LM: it cannot generate")
    model_dir = resolve_model_dir(cfg.name_or_path)
    check_model_dir(model_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir,
            dtype=torch_dtype or weight_dtype(cfg),
            use_safetensors=True,
            trust_remote_code=cfg.trust_remote_code,
            attn_implementation=cfg.attn_implementation,
            local_files_only=True,
        )
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise _remote_code_error(model_dir, err) from err
        raise
    if cfg.adapter:
        from peft import PeftModel

        adapter = Path(cfg.adapter)
        if not (adapter / "adapter_config.json").is_file():
            raise FileNotFoundError(f"model.adapter={cfg.adapter!r}: no adapter_config.json in that folder")
        check_adapter_base(adapter, [cfg.name_or_path, str(model_dir)])
        try:
            model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
        except RuntimeError as err:
            if "size mismatch" not in str(err):
                raise
            first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), "")
            raise AdapterMismatchError(f"adapter {adapter} does not fit {cfg.name_or_path}: it was trained on a "
                                       f"base with other shapes ({first[:240]})") from err
    return model.eval()


def load_for_inference(cfg: ModelConfig, gpu: bool = False) -> tuple[Any, str | None]:
    """(model, how its adapter was folded in or None) for read-only generation: in bf16 where the hardware runs
    it (`cfg.dtype` auto), the adapter folded in (model/fold.py: merged in float32, kept as low-rank factors in
    bf16, where a merge would round most of it away), on the GPU with `gpu`, and on the CPU with the decoder's
    lean forward where the model has one (model/lean.py)."""
    from tasktune.model.fold import fold_adapter
    from tasktune.model.lean import prepare_lean
    from tasktune.runtime import inference_dtype

    model = load_model(cfg, inference_dtype(cfg.dtype))
    how = None
    if hasattr(model, "merge_and_unload"):  # one adapter, read-only here: no peft layers per token
        model, how = fold_adapter(model)
    if gpu:
        model = model.to("cuda")
    prepare_lean(model)
    return model, how
