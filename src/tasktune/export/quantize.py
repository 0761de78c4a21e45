"""int8 weight-only quantization with torchao, saved in transformers' torchao safetensors format.

Every nn.Linear but the output head gets per-row symmetric int8 weights (`Int8WeightOnlyConfig`, torchao's
`Int8Tensor`); activations stay in the model's dtype. The directory reloads with plain transformers where
torchao is installed, the quantization config being in config.json:

    AutoModelForCausalLM.from_pretrained(out_dir)   # weights come back as torchao Int8Tensor

(`torch.ao` dynamic int8 is deprecated and raised SmolLM2's perplexity from 8.4 to 37: not used.)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

INSTALL_HINT = "int8 export needs torchao: pip install 'tasktune[quantize]' (make setup installs it)"
SCHEME = "torchao Int8WeightOnlyConfig: per-row symmetric int8 weights of every Linear but lm_head"


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Raise `loggers` to ERROR for a while (torchao warns about its CUDA-only kernels on CPU at import)."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def torchao_version() -> str:
    """The installed torchao version (imported quietly), or ImportError with the install hint."""
    try:
        with _quiet("torchao", "torch.utils._pytree"):
            import torchao
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return torchao.__version__


def int8_config() -> Any:
    """transformers' `TorchAoConfig` for int8 weight-only quantization."""
    torchao_version()
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    return TorchAoConfig(Int8WeightOnlyConfig())


def quantize_int8(src_dir: Path, out_dir: Path, max_shard_size: str | int = "2GB") -> Path:
    """Load the Hugging Face directory `src_dir` quantized to int8 and save it (with its tokenizer) to `out_dir`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src_dir, dtype="auto", quantization_config=int8_config(),
                                                 local_files_only=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size=max_shard_size)
    AutoTokenizer.from_pretrained(src_dir, local_files_only=True).save_pretrained(out_dir)
    return out_dir
