"""Resumable checkpoints without pickle, written so that a half-written one never looks complete.

`step-N/` holds the trainable weights (`model.safetensors`), the optimizer (`optimizer.safetensors` +
`optimizer.json`), the schedule (`scheduler.json`), each process's generator states (`rng_state_R.json`)
and, written last, `trainer_state.json`: counters, the data position, the fingerprint of the settings a
resume must share (base model, adapter shape, data order) and the size and SHA-256 of every other file.
Loading checks the manifest first, so a truncated or replaced file is named before anything is read, and
nothing is ever unpickled (FSDP / DeepSpeed shards go through accelerate with `weights_only=True`).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from tasktune.train.state_io import (
    CheckpointError,
    file_digest,
    fingerprint_differences,
    load_optimizer,
    load_scheduler,
    load_trainable,
    read_json,
    rng_state,
    save_optimizer,
    set_rng_state,
    trainable_tensors,
    write_json,
)

__all__ = ["DONE_MARK", "CheckpointError", "TrainerState", "checkpoints", "load_checkpoint", "resolve_resume",
           "save_checkpoint", "verify_checkpoint"]

STEP_PREFIX = "step-"
DONE_MARK = "trainer_state.json"
FORMAT = 2
MODEL_FILE, OPTIMIZER_FILE, OPTIMIZER_META, SCHEDULER_FILE = (
    "model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json")
SHARDED = "accelerate_sharded"
"""Subfolder for FSDP / DeepSpeed state, written by accelerate (loaded with weights_only=True)."""


class TrainerState:
    """Counters saved with every checkpoint."""

    def __init__(self) -> None:
        self.global_step = 0
        self.best_metric: float | None = None
        self.best_step: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"global_step": self.global_step, "best_metric": self.best_metric, "best_step": self.best_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_step = int(state["global_step"])
        self.best_metric = None if state.get("best_metric") is None else float(state["best_metric"])
        self.best_step = None if state.get("best_step") is None else int(state["best_step"])


def _step_of(path: Path) -> int | None:
    digits = path.name.removeprefix(STEP_PREFIX)
    return int(digits) if path.name.startswith(STEP_PREFIX) and digits.isdigit() else None


def checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Checkpoints under `root` marked complete, oldest first (their files are checked by `verify_checkpoint`)."""
    if not root.is_dir():
        return []
    found = [(_step_of(p), p) for p in root.iterdir() if _step_of(p) is not None and (p / DONE_MARK).is_file()]
    return sorted(found)  # type: ignore[arg-type]


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """The manifest of a complete checkpoint whose files all have their recorded size and SHA-256;
    CheckpointError naming the file otherwise."""
    if not (path / DONE_MARK).is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {DONE_MARK})")
    manifest = read_json(path / DONE_MARK)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        legacy = next((p.name for p in sorted(path.glob("*.pkl"))), None)
        why = f"it holds pickle files ({legacy}), which tasktune never loads" if legacy else "unknown format"
        raise CheckpointError(f"{path}: made by an older tasktune or another tool: {why}; start a new run "
                              "(the adapter it was training can still be loaded)")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"{path / DONE_MARK}: lists no files; the checkpoint is damaged")
    for name, expected in sorted(files.items()):
        file = path / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not isinstance(expected, dict):
            raise CheckpointError(f"{path / DONE_MARK}: bad file entry {name!r}")
        if not file.is_file():
            raise CheckpointError(f"{file}: missing from a checkpoint marked complete")
        actual = file_digest(file)
        if actual["bytes"] != expected.get("bytes"):
            raise CheckpointError(f"{file}: truncated or changed ({actual['bytes']} bytes, the checkpoint recorded "
                                  f"{expected.get('bytes')})")
        if actual["sha256"] != expected.get("sha256"):
            raise CheckpointError(f"{file}: its content changed since it was saved (SHA-256 differs)")
    return manifest


def resolve_resume(setting: str | None, root: Path, announce: bool = True) -> Path | None:
    """`latest` -> the newest checkpoint that verifies (a damaged newer one is skipped with a warning;
    None, said aloud, when there is none); a path -> itself, verified."""
    if not setting:
        return None
    if setting != "latest":
        verify_checkpoint(Path(setting))
        return Path(setting)
    found = checkpoints(root)
    problems = []
    for step, path in reversed(found):
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            problems.append(str(err))
            if announce:
                print(f"warning: skipping damaged checkpoint step {step}: {err}", file=sys.stderr, flush=True)
            continue
        if problems and announce:
            print(f"warning: resuming from the previous complete checkpoint {path}", file=sys.stderr, flush=True)
        return path
    if problems:
        raise CheckpointError(f"train.resume_from_checkpoint=latest: every checkpoint under {root} is damaged "
                              f"({problems[0]}); delete them or set train.resume_from_checkpoint=null")
    if announce:
        print(f"train.resume_from_checkpoint=latest: no checkpoint under {root} yet; starting from step 0",
              flush=True)
    return None


def _sharded(accelerator) -> bool:
    from accelerate import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def write_state(accelerator, out: Path, model: torch.nn.Module, optimizer, scheduler) -> None:
    """Every file but the manifest, into `out` (each process writes its own generator state)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"rng_state_{accelerator.process_index}.json", rng_state())
    if _sharded(accelerator):
        accelerator.save_state(str(out / SHARDED))  # sharded weights and optimizer: accelerate's own files
    elif accelerator.is_main_process:
        from safetensors.torch import save_file

        save_file(trainable_tensors(accelerator.unwrap_model(model)), str(out / MODEL_FILE))
        save_optimizer(optimizer, out / OPTIMIZER_FILE, out / OPTIMIZER_META)
    if accelerator.is_main_process:
        write_json(out / SCHEDULER_FILE, scheduler.state_dict())


def save_checkpoint(accelerator, root: Path, state: TrainerState, keep: int, model: torch.nn.Module, optimizer,
                    scheduler, fingerprint: dict[str, Any], position: dict[str, Any] | None = None) -> Path:
    """Write into `step-N.tmp`, add the manifest, rename it to `step-N`, keep the newest `keep` (<= 0: all)."""
    final = root / f"{STEP_PREFIX}{state.global_step}"
    tmp = root / f"{STEP_PREFIX}{state.global_step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    write_state(accelerator, tmp, model, optimizer, scheduler)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {p.relative_to(tmp).as_posix(): file_digest(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        write_json(tmp / DONE_MARK, {"format": FORMAT, **state.state_dict(), "data_position": position or {},
                                     "world_size": accelerator.num_processes, "fingerprint": fingerprint,
                                     "files": files})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        complete = checkpoints(root)
        if keep > 0:
            for _, old in complete[: max(0, len(complete) - keep)]:
                shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(f"{STEP_PREFIX}*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path, state: TrainerState, model: torch.nn.Module, optimizer, scheduler,
                    fingerprint: dict[str, Any]) -> None:
    """Restore a verified checkpoint; CheckpointError saying what differs when this run's settings do not match."""
    manifest = verify_checkpoint(path)
    differences = fingerprint_differences(manifest.get("fingerprint") or {}, fingerprint)
    if differences:
        raise CheckpointError(f"{path} was made with other settings, so it cannot be resumed exactly: "
                              + "; ".join(differences))
    rng_file = path / f"rng_state_{accelerator.process_index}.json"
    if _sharded(accelerator):
        accelerator.load_state(str(path / SHARDED))  # torch.load(weights_only=True) inside accelerate
    else:
        load_trainable(accelerator.unwrap_model(model), path / MODEL_FILE)
        load_optimizer(optimizer, path / OPTIMIZER_FILE, path / OPTIMIZER_META)
    load_scheduler(scheduler, path / SCHEDULER_FILE)
    try:
        state.load_state_dict(manifest)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path / DONE_MARK}: bad counters ({err})") from None
    set_rng_state(read_json(rng_file), rng_file)


def run_fingerprint(cfg, model: torch.nn.Module, plan) -> dict[str, Any]:
    """What a resume must share with the run that saved the checkpoint: base model, what is trained and its
    shapes, and the data order (seed, batch shape, processes, the units and their lengths)."""
    import hashlib
    import json

    tc = cfg.train
    fingerprint: dict[str, Any] = {
        "base_model": cfg.model.name_or_path,
        "start_adapter": cfg.model.adapter,
        "finetuning": tc.finetuning,
        "data_order": {"seed": plan.seed, "batch_size": plan.batch_size, "grad_accum": plan.grad_accum,
                       "world_size": plan.world_size, "units": len(plan.lengths),
                       "lengths_sha256": hashlib.sha256(json.dumps(list(plan.lengths)).encode()).hexdigest()[:16]},
        "trainable_shapes": {n: list(p.shape) for n, p in model.named_parameters() if p.requires_grad},
    }
    if tc.finetuning in ("lora", "qlora"):
        lora = cfg.lora
        fingerprint["lora"] = {"r": lora.r, "alpha": lora.alpha, "target_modules": list(lora.target_modules),
                               "modules_to_save": lora.modules_to_save,
                               **{k: getattr(lora, k) for k in ("variant", "layers_to_transform") if hasattr(lora, k)}}
    if tc.finetuning == "freeze":
        fingerprint["freeze_trainable_layers"] = tc.freeze_trainable_layers
    if cfg.task.name:
        fingerprint["task"] = f"{cfg.task.name}/{cfg.task.method}"
    if cfg.tasks:  # a multi-task run: which tasks, in which mixture
        fingerprint["tasks"] = [f"{t.name}/{t.method}*{t.weight}" for t in cfg.tasks]
    return fingerprint
