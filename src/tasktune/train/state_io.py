"""Checkpoint state as JSON and safetensors, never pickle: loading a checkpoint runs no code.

Every reader here raises CheckpointError naming the file when it is not what it should be (a planted
pickle, a truncated or edited file), so a damaged checkpoint is a clear error, not a traceback.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tasktune.config.errors import UserError


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed: damaged, from an older format, or made by another config."""


def file_digest(path: Path) -> dict[str, Any]:
    """{"bytes", "sha256"} of a file, recorded in the checkpoint's manifest."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1), encoding="utf-8")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path}: not a JSON file as tasktune writes it ({type(err).__name__}); "
                              "the checkpoint is damaged or was not made by tasktune") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror or err})") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a safetensors file ({err}); the checkpoint is damaged or was "
                              "not made by tasktune") from None


# ---- weights ----------------------------------------------------------------------------------------------


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, path: Path) -> None:
    """Copy the saved trainable tensors into `model`; every trainable tensor must be there, same shape."""
    saved = read_tensors(path)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(saved))
    unexpected = sorted(set(saved) - set(params))
    if missing or unexpected:
        raise CheckpointError(f"{path}: holds other trainable tensors than this model ({len(missing)} missing, e.g. "
                              f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    with torch.no_grad():
        for name, param in params.items():
            if tuple(saved[name].shape) != tuple(param.shape):
                raise CheckpointError(f"{path}: {name} has shape {list(saved[name].shape)}, this model "
                                      f"{list(param.shape)}")
            param.copy_(saved[name].to(param.device, param.dtype))


# ---- optimizer and scheduler ----------------------------------------------------------------------------


def save_optimizer(optimizer: torch.optim.Optimizer, tensors_path: Path, json_path: Path) -> None:
    """Per-parameter tensors (exp_avg, step, ...) to safetensors; param groups and scalars to JSON."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}/{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{pid}/{key}"] = value
    save_file(tensors, str(tensors_path))
    write_json(json_path, {"param_groups": state["param_groups"], "scalars": scalars})


def load_optimizer(optimizer: torch.optim.Optimizer, tensors_path: Path, json_path: Path) -> None:
    meta = read_json(json_path)
    tensors = read_tensors(tensors_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("param_groups"), list):
        raise CheckpointError(f"{json_path}: no param_groups; the checkpoint is damaged")
    state: dict[int, dict[str, Any]] = {}
    try:
        for key, value in [*tensors.items(), *dict(meta.get("scalars") or {}).items()]:
            pid, _, name = key.partition("/")
            state.setdefault(int(pid), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{tensors_path}: does not fit this run's optimizer ({err})") from None


def load_scheduler(scheduler: Any, path: Path) -> None:
    state = read_json(path)
    try:
        scheduler.load_state_dict(state)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: not a learning-rate schedule state ({err})") from None


# ---- random number generators ---------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states as plain JSON values."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {"python": [version, list(words), gauss], "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Any, path: Path) -> None:
    """Restore what `rng_state` saved; anything else is a CheckpointError (the RNG is never skipped)."""
    try:
        version, words, gauss = state["python"]
        random.setstate((int(version), tuple(int(w) for w in words), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((str(kind), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a random-generator state ({type(err).__name__}: {err}); exact resume "
                              "needs it, so the checkpoint is refused") from None


# ---- what the checkpoint was made with ------------------------------------------------------------------


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Readable lines for each setting that differs between a checkpoint and this run."""
    lines = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if old == new:
            continue
        if key == "trainable_shapes" and isinstance(old, dict) and isinstance(new, dict):
            changed = [n for n in set(old) & set(new) if old[n] != new[n]]
            detail = f"{len(set(old) - set(new))} missing, {len(set(new) - set(old))} new, {len(changed)} reshaped"
            if changed:
                name = sorted(changed)[0]
                detail += f" (e.g. {name}: {old[name]} -> {new[name]})"
            lines.append(f"trainable parameters: {detail}")
        elif isinstance(old, dict) and isinstance(new, dict):
            for sub in sorted(set(old) | set(new)):
                if old.get(sub) != new.get(sub):
                    lines.append(f"{key}.{sub}: checkpoint {old.get(sub)!r}, this run {new.get(sub)!r}")
        else:
            lines.append(f"{key}: checkpoint {old!r}, this run {new!r}")
    return lines
