"""Resumable checkpoints through accelerate state, written so that a half-written one never looks complete."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

STEP_DIR = re.compile(r"^step-(\d+)$")
DONE_MARK = "trainer_state.json"


class TrainerState:
    """Counters saved with every checkpoint (registered with accelerate as a custom object)."""

    def __init__(self) -> None:
        self.global_step = 0
        self.best_metric: float | None = None
        self.best_step: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def trainable_only_hook(models: list[torch.nn.Module], weights: list[dict], _out: str) -> None:
    """accelerate save pre-hook: keep only trainable tensors (a LoRA checkpoint holds no frozen base)."""
    for model, state in zip(models, weights, strict=True):
        names = {name for name, p in model.named_parameters() if p.requires_grad}
        for key in [k for k in state if k not in names]:
            del state[key]


def checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_DIR.match(path.name)
        if match and (path / DONE_MARK).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_resume(setting: str | None, root: Path) -> Path | None:
    """`latest` -> the newest complete checkpoint (None when there is none); a path -> itself, checked."""
    if not setting:
        return None
    if setting == "latest":
        found = checkpoints(root)
        return found[-1][1] if found else None
    path = Path(setting)
    if not (path / DONE_MARK).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {DONE_MARK})")
    return path


def save_checkpoint(accelerator, root: Path, state: TrainerState, keep: int) -> Path:
    """Write into `step-N.tmp`, mark it complete, rename it to `step-N`, keep the newest `keep` (<= 0: all)."""
    final = root / f"step-{state.global_step}"
    tmp = root / f"step-{state.global_step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / DONE_MARK).write_text(json.dumps(state.state_dict(), indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        complete = checkpoints(root)
        if keep > 0:
            for _, old in complete[: max(0, len(complete) - keep)]:
                shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob("step-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
