"""Experiment trackers for `train.report_to` (wandb, mlflow) through accelerate's tracker classes, offline by default.

train_log.jsonl is always written and TensorBoard is mirrored by `RunLogger`; `TrackedLogger` sends the same
records to the trackers. wandb runs in offline mode (files under OUTPUT_DIR/wandb) unless WANDB_MODE says
otherwise; mlflow writes to OUTPUT_DIR/mlruns unless MLFLOW_TRACKING_URI points elsewhere. Nothing needs network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TRACKERS = ("wandb", "mlflow")


class TrackerUnavailableError(RuntimeError):
    """A tracker named in train.report_to whose package is not installed."""


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config sections as flat `section.key` values (lists as text), as trackers store hyperparameters."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, int | float | str | bool) or value is None else str(value)
    return flat


def open_trackers(report_to: list[str], out: Path, config: dict[str, Any]) -> list[Any]:
    """Started accelerate trackers for the names in report_to (call on the main process only)."""
    trackers = []
    run_name = out.name or "tasktune"
    for name in (n for n in report_to if n in TRACKERS):
        try:
            if name == "wandb":
                import wandb  # noqa: F401
                from accelerate.tracking import WandBTracker

                tracker = WandBTracker(run_name, mode=os.environ.get("WANDB_MODE", "offline"), dir=str(out),
                                       name=run_name)
            else:
                import mlflow
                from accelerate.tracking import MLflowTracker

                if not os.environ.get("MLFLOW_TRACKING_URI"):  # a local folder: mlflow-skinny has no sqlite store
                    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                    mlflow.set_tracking_uri((out / "mlruns").resolve().as_uri())
                tracker = MLflowTracker(experiment_name="tasktune", run_name=run_name)
        except ImportError as err:
            raise TrackerUnavailableError(
                f"train.report_to={name}: {err.name or name} is not installed (pip install {name}), "
                "or drop it from train.report_to") from None
        tracker.start()
        tracker.store_init_configuration(_flat(config))
        trackers.append(tracker)
    return trackers


class TrackedLogger:
    """A RunLogger (jsonl, TensorBoard) whose records also go to accelerate trackers."""

    def __init__(self, logger: Any, trackers: list[Any]):
        self.logger, self.trackers = logger, trackers

    def log(self, record: dict[str, Any]) -> None:
        self.logger.log(record)
        values = {k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)
                  and k != "step"}
        for tracker in self.trackers:
            tracker.log(values, step=record.get("step"))

    def close(self) -> None:
        self.logger.close()
        for tracker in self.trackers:
            tracker.finish()
