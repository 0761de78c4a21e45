"""QLoRA's base: the causal LM loaded quantized by bitsandbytes (nf4 / fp4 / int8), ready for adapters."""

from __future__ import annotations

from functools import cache
from typing import Any

from torch import nn

from tasktune.config.schema import ModelConfig


class KbitUnavailableError(RuntimeError):
    """bitsandbytes is missing or cannot run on this machine."""


@cache
def kbit_problem() -> str | None:
    """Why bitsandbytes cannot quantize here (None when a tiny 4-bit layer runs a forward pass)."""
    try:
        import bitsandbytes as bnb
        import torch
    except Exception as err:  # an ImportError, or a broken native library raising anything
        return f"bitsandbytes is not importable ({type(err).__name__}: {err}); pip install bitsandbytes"
    try:
        layer = bnb.nn.Linear4bit(16, 16, compute_dtype=torch.float32, quant_type="nf4")
        layer.load_state_dict(nn.Linear(16, 16).state_dict())
        device = "cuda" if torch.cuda.is_available() else "cpu"
        layer.to(device)(torch.randn(2, 16, device=device))
    except Exception as err:
        return f"bitsandbytes {bnb.__version__} cannot run a 4-bit layer here ({type(err).__name__}: {err})"
    return None


def quantization_config(cfg: ModelConfig, compute_dtype: Any):
    """transformers' BitsAndBytesConfig for model.quantization (double quantization for 4-bit, as QLoRA)."""
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.quantization,
                              bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_use_double_quant=True)


def load_quantized(cfg: ModelConfig, compute_dtype: Any = None, gradient_checkpointing: bool = False) -> nn.Module:
    """The causal LM of `cfg` with its linear layers quantized (model.quantization), prepared for k-bit training
    (peft's prepare_model_for_kbit_training: norms in fp32, input grads on); KbitUnavailableError when
    bitsandbytes cannot run here. compute_dtype: the matmul dtype (default bf16 where the device runs it)."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    from tasktune.model.load import resolve_model_dir

    cfg.check()
    problem = kbit_problem()
    if problem:
        raise KbitUnavailableError(f"train.finetuning=qlora needs bitsandbytes: {problem}. "
                                   "Use train.finetuning=lora on this machine.")
    if cfg.adapter:
        raise ValueError("train.finetuning=qlora starts a new adapter; model.adapter cannot be continued in 4-bit")
    if compute_dtype is None:
        bf16 = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else (
            torch.ops.mkldnn._is_mkldnn_bf16_supported())
        compute_dtype = torch.bfloat16 if bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_dir(cfg.name_or_path),
        dtype=compute_dtype,
        quantization_config=quantization_config(cfg, compute_dtype),
        device_map={"": torch.cuda.current_device() if torch.cuda.is_available() else "cpu"},  # this rank's GPU
        use_safetensors=True,
        trust_remote_code=cfg.trust_remote_code,
        attn_implementation=cfg.attn_implementation,
        local_files_only=True,
    )
    keep_trainable_layout(model)
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False})


def keep_trainable_layout(model: nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel. On AVX512-BF16 CPUs its first
    eval-mode forward (a training-time evaluation) packs them, and the packed matmul has no backward: every
    later training step would send no gradient through the base layers (measured: the demo's QLoRA nf4 run
    ended at loss 1.20 and entity F1 0.005, against 0.012 and 0.99 with int8)."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
