"""GGUF export for llama.cpp / Ollama, done by llama.cpp's own converter run as a subprocess.

`make gguf-tools` (part of `make setup`) extracts `convert_hf_to_gguf.py`, its `conversion/` package and the
`gguf-py` it was written against from the llama-cpp-python sdist into `<venv>/share/tasktune/llama.cpp/`:
no compiling. f16 and q8_0 need only that. q4_k_m is a k-quant that only llama.cpp's compiled quantizer
writes: `llama-quantize` on PATH, or the `llama_cpp` bindings (`pip install 'tasktune[gguf-run]'`, which
compiles llama.cpp, about 7 minutes on 2 cores).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

GGUF_TYPES = ("f16", "q8_0", "q4_k_m")
"""What `--gguf` accepts: f16 and q8_0 straight from the converter, q4_k_m through llama.cpp's quantizer."""
CONVERTER = "convert_hf_to_gguf.py"
TOOLS_HINT = "run `make gguf-tools` (it extracts llama.cpp's converter from the llama-cpp-python sdist, ~5 s)"


class GGUFToolsMissingError(FileNotFoundError):
    """llama.cpp's converter or quantizer is not installed."""


def tools_dir() -> Path:
    """Where `make gguf-tools` puts llama.cpp's converter: `<sys.prefix>/share/tasktune/llama.cpp`."""
    return Path(sys.prefix) / "share" / "tasktune" / "llama.cpp"


def find_converter(folder: Path | None = None) -> Path:
    """llama.cpp's `convert_hf_to_gguf.py`, or GGUFToolsMissingError saying how to get it."""
    script = (folder or tools_dir()) / CONVERTER
    if not script.is_file():
        raise GGUFToolsMissingError(f"GGUF export needs llama.cpp's converter, not found at {script}: {TOOLS_HINT}")
    return script


def _run(command: list[str], what: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{tail}")


def convert_to_gguf(model_dir: Path, out_file: Path, outtype: str = "f16", folder: Path | None = None,
                    name: str | None = None) -> Path:
    """Convert a Hugging Face model directory to one GGUF file (`outtype`: f32 | f16 | bf16 | q8_0).

    name: `general.name` in the metadata (default: the converter's guess from the directory name).
    """
    script = find_converter(folder)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(script), str(model_dir), "--outfile", str(out_file), "--outtype", outtype]
    _run(command + (["--model-name", name] if name else []), f"llama.cpp {CONVERTER} --outtype {outtype}")
    return out_file


def find_quantizer() -> list[str] | None:
    """The command prefix that runs llama.cpp's quantizer (`IN OUT TYPE` follow), or None when absent."""
    binary = shutil.which("llama-quantize")
    if binary:
        return [binary]
    if importlib.util.find_spec("llama_cpp") is not None:
        return [sys.executable, "-c", _BINDINGS_QUANTIZE]
    return None


_BINDINGS_QUANTIZE = """
import ctypes, sys, llama_cpp
ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3].upper())
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = ftype
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))
"""


def require_quantizer(qtype: str) -> list[str]:
    """`find_quantizer()`, or GGUFToolsMissingError saying how to get one."""
    command = find_quantizer()
    if command is None:
        raise GGUFToolsMissingError(
            f"--gguf {qtype} needs llama.cpp's compiled quantizer: put `llama-quantize` on PATH or "
            "`pip install 'tasktune[gguf-run]'` (compiles llama.cpp, ~7 min); f16 and q8_0 need neither"
        )
    return command


def quantize_gguf(src: Path, out_file: Path, qtype: str) -> Path:
    """Re-quantize a GGUF file with llama.cpp's compiled quantizer (e.g. qtype q4_k_m)."""
    _run([*require_quantizer(qtype), str(src), str(out_file), qtype.upper()], f"llama.cpp quantize to {qtype}")
    return out_file


def export_gguf(model_dir: Path, out_file: Path, gguf_type: str, folder: Path | None = None,
                name: str | None = None) -> Path:
    """Write `model_dir` (a float Hugging Face directory) as `out_file` in `gguf_type` (one of GGUF_TYPES)."""
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"gguf type {gguf_type!r}: use one of {', '.join(GGUF_TYPES)}")
    if gguf_type != "q4_k_m":
        return convert_to_gguf(model_dir, out_file, gguf_type, folder, name)
    require_quantizer(gguf_type)  # fail before the conversion, not after it
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_file.parent) as tmp:
        f16 = convert_to_gguf(model_dir, Path(tmp) / "f16.gguf", "f16", folder, name)
        return quantize_gguf(f16, out_file, gguf_type)
