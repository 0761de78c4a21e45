"""Run logging: a JSONL line per logging step, optional TensorBoard, and the loss plot at the end."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


class RunLogger:
    """Appends records to `train_log.jsonl` (kept across resumes) and mirrors scalars to TensorBoard."""

    def __init__(self, out_dir: Path, report_to: list[str], enabled: bool = True):
        self.enabled = enabled
        self.path = out_dir / "train_log.jsonl"
        self.tb = None
        if enabled and "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a train_log.jsonl; a torn line (a run killed mid-write) is skipped with a warning."""
    if not path.is_file():
        return []
    records, torn = [], 0
    for line in path.read_bytes().decode("utf-8", errors="replace").split("\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            torn += 1
    if torn:
        print(f"warning: {path}: skipped {torn} unreadable line(s) (a run stopped mid-write?)", file=sys.stderr)
    return records


def trim_log(path: Path, step: int) -> None:
    """Keep only the records up to `step` (a resumed run logs the later steps again) and drop torn lines."""
    if not path.is_file():
        return
    kept = [r for r in read_log(path) if not isinstance(r.get("step"), (int, float)) or r["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
    os.replace(tmp, path)


def plot_loss(records: list[dict[str, Any]], path: Path) -> Path | None:
    """Training (and eval) loss against the optimizer step, as a PNG."""
    train = [(r["step"], r["loss"]) for r in records if _numbers(r, "loss")]
    evals = [(r["step"], r["eval_loss"]) for r in records if _numbers(r, "eval_loss")]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per target token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _numbers(record: dict[str, Any], key: str) -> bool:
    return all(isinstance(record.get(k), (int, float)) for k in ("step", key))
