"""Post-training weight quantization of a float model directory into a variant directory.

torchao (int8 weight-only, int8 dynamic activation + int8 weight, int4 weight-only) and bitsandbytes (nf4) save
through transformers, so each variant reloads with `AutoModelForCausalLM.from_pretrained(dir)` where the library
is installed. GGUF files come from the export path (llama.cpp's converter); scoring them needs llama.cpp's runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasktune.compress.variant import Variant
from tasktune.evaluate import gguf as gguf_eval
from tasktune.export.gguf import export_gguf
from tasktune.export.quantize import quantize_int8, torchao_version

INT4_CPU_NOTE = ("torchao's packed int4 kernels need CUDA (tile-packed) or mslk (plain) here; fell back to "
                 "IntxWeightOnlyConfig(int4, group {group}), which stores each int4 value unpacked in an int8: "
                 "int4 quality, int8 size")


def _save_quantized(float_dir: Path, out_dir: Path, quantization_config: Any, dtype: Any = "auto") -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(float_dir, dtype=dtype, quantization_config=quantization_config,
                                                 local_files_only=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(float_dir, local_files_only=True).save_pretrained(out_dir)
    return out_dir


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def int8_dynamic(float_dir: Path, out_dir: Path) -> Variant:
    torchao_version()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig
    from transformers import TorchAoConfig

    _save_quantized(float_dir, out_dir, TorchAoConfig(Int8DynamicActivationInt8WeightConfig()))
    return Variant("int8-dynamic", out_dir, details={
        "scheme": "torchao Int8DynamicActivationInt8WeightConfig: int8 weights per row, activations quantized "
                  "per token at run time"})


def int4(float_dir: Path, out_dir: Path, group_size: int) -> Variant:
    """torchao int4 weight-only (packed) where it runs, else int4 values in int8 storage (IntxWeightOnly)."""
    import torch

    torchao_version()
    from torchao.quantization import Int4WeightOnlyConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup
    from transformers import TorchAoConfig

    if torch.cuda.is_available():
        try:
            _save_quantized(float_dir, out_dir, TorchAoConfig(Int4WeightOnlyConfig(group_size=group_size)),
                            dtype=torch.bfloat16)
            return Variant("int4", out_dir, details={"scheme": f"torchao Int4WeightOnlyConfig(group {group_size})"})
        except Exception as exc:  # noqa: BLE001 - any failure of the packed kernels falls back below
            note = f"packed int4 failed ({_first_line(exc)}); " + INT4_CPU_NOTE.format(group=group_size)
    else:
        note = INT4_CPU_NOTE.format(group=group_size)
    config = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    _save_quantized(float_dir, out_dir, TorchAoConfig(config))
    return Variant("int4", out_dir, notes=[note],
                   details={"scheme": f"torchao IntxWeightOnlyConfig(int4, PerGroup({group_size}))"})


def nf4(float_dir: Path, out_dir: Path) -> Variant:
    import torch
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                                bnb_4bit_use_double_quant=False)
    _save_quantized(float_dir, out_dir, config)
    return Variant("nf4", out_dir, details={"scheme": "bitsandbytes 4-bit nf4 (blocks of 64), fp32 compute"})


def gguf(float_dir: Path, out_dir: Path, gguf_type: str) -> Variant:
    """The GGUF file (llama.cpp's converter); scored (through llama.cpp) where llama-cpp-python is installed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = export_gguf(float_dir, out_dir / f"model-{gguf_type}.gguf", gguf_type, name=out_dir.name)
    variant = Variant(f"gguf-{gguf_type}", out_dir, kind="gguf", details={"file": target.name})
    if not gguf_eval.llama_cpp_installed():
        variant.notes.append("not scored: llama-cpp-python is not installed (`make llamacpp`); size only")
    else:
        variant.notes.append("scored through llama.cpp: one row at a time, decoding unconstrained")
    return variant


def quantize_variant(method: str, float_dir: Path, out_dir: Path, group_size: int = 32) -> Variant:
    """The variant `method` (int8 | int8-dynamic | int4 | nf4 | gguf-q8_0 | gguf-q4_k_m) of `float_dir`."""
    if method == "int8":
        quantize_int8(float_dir, out_dir)
        return Variant("int8", out_dir, details={
            "scheme": "torchao Int8WeightOnlyConfig: per-row int8 weights (as `tasktune export --int8`)"})
    if method == "int8-dynamic":
        return int8_dynamic(float_dir, out_dir)
    if method == "int4":
        return int4(float_dir, out_dir, group_size)
    if method == "nf4":
        return nf4(float_dir, out_dir)
    if method.startswith("gguf-"):
        return gguf(float_dir, out_dir, method.removeprefix("gguf-"))
    raise ValueError(f"not a quantization method: {method}")
