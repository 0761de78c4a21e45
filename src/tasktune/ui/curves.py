"""`train_log.jsonl` -> curves (train loss, eval loss, the task metric), the best checkpoint, progress and status.

Pure functions over files in a run directory; `plot_curves` draws them with matplotlib for the browser.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SKIPPED_EVAL_KEYS = {"eval_loss", "eval_parse_failure_rate", "eval_examples_per_s"}
"""eval_* keys of the log that are not task metrics."""
PREFERRED_METRIC = ("eval_f1", "eval_macro_f1", "eval_accuracy", "eval_exact_match", "eval_bleu", "eval_chrf")
"""Which task metric is drawn first when several are logged."""


@dataclass
class Curves:
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    eval_loss: list[tuple[int, float]] = field(default_factory=list)
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    """Task metrics by name without the `eval_` prefix (f1, accuracy, bleu, ...)."""
    best_step: int | None = None
    best_metric: float | None = None
    last_step: int = 0
    stopped_at: int | None = None
    """The step of a graceful stop (a `stopped` record in the log)."""

    @property
    def main_metric(self) -> str | None:
        for key in PREFERRED_METRIC:
            if key.removeprefix("eval_") in self.metrics:
                return key.removeprefix("eval_")
        return next(iter(self.metrics), None)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The JSON lines of a log; a half-written last line (the run is writing) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def curves_from_records(records: list[dict[str, Any]], best: dict[str, Any] | None = None) -> Curves:
    """Series from log records; the best step comes from `best` (best/best.json) or the highest metric."""
    curves = Curves()
    for record in records:
        step = record["step"]
        curves.last_step = max(curves.last_step, step)
        if record.get("stopped"):
            curves.stopped_at = step
        if isinstance(record.get("loss"), (int, float)):
            curves.train_loss.append((step, float(record["loss"])))
        if isinstance(record.get("eval_loss"), (int, float)):
            curves.eval_loss.append((step, float(record["eval_loss"])))
        for key, value in record.items():
            if key.startswith("eval_") and key not in SKIPPED_EVAL_KEYS and isinstance(value, (int, float)):
                curves.metrics.setdefault(key.removeprefix("eval_"), []).append((step, float(value)))
    if best and isinstance(best.get("step"), int):
        curves.best_step = best["step"]
        main = curves.main_metric
        value = best.get(f"eval_{main}") if main else None
        curves.best_metric = float(value) if isinstance(value, (int, float)) else None
    elif curves.main_metric:
        step, value = max(curves.metrics[curves.main_metric], key=lambda sv: (sv[1], -sv[0]))
        curves.best_step, curves.best_metric = step, value
    return curves


def run_curves(run_dir: str | Path) -> Curves:
    run_dir = Path(run_dir)
    best_file = run_dir / "best" / "best.json"
    best = None
    if best_file.is_file():
        try:
            best = json.loads(best_file.read_text())
        except json.JSONDecodeError:
            best = None
    return curves_from_records(read_records(run_dir / "train_log.jsonl"), best)


_TQDM = re.compile(r"train:\s*(\d+)%\|[^|]*\|\s*(\d+)/(\d+)\s*\[([0-9:]+)<([0-9:?]+)")


def progress_from_log(text: str) -> dict[str, Any] | None:
    """The last tqdm state of a training log: step, total, percent, elapsed and ETA (as tqdm prints them)."""
    found = _TQDM.findall(text or "")
    if not found:
        return None
    percent, step, total, elapsed, eta = found[-1]
    return {"step": int(step), "total": int(total), "percent": int(percent), "elapsed": elapsed, "eta": eta}


def run_status(run_dir: str | Path, job_status: str | None = None) -> str:
    """running | queued (from the job store) | stopped | finished | failed | incomplete (from the files)."""
    run_dir = Path(run_dir)
    if job_status in ("running", "queued"):
        return job_status
    curves_stopped = any(r.get("stopped") for r in read_records(run_dir / "train_log.jsonl")[-3:])
    if (run_dir / "adapter").is_dir() or (run_dir / "model").is_dir():
        return "finished"
    if curves_stopped or job_status == "stopped":
        return "stopped"
    if job_status == "failed":
        return "failed"
    return "incomplete"


def plot_curves(curves: Curves, title: str = ""):
    """A matplotlib figure: losses on the left, the task metric(s) on the right, the best step marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=90)
    if curves.train_loss:
        left.plot(*zip(*curves.train_loss, strict=True), label="train loss", color="tab:blue")
    if curves.eval_loss:
        left.plot(*zip(*curves.eval_loss, strict=True), "o-", label="eval loss", color="tab:orange")
    left.set_xlabel("optimizer step")
    left.set_ylabel("loss per target token")
    left.set_title("loss")
    for name, series in curves.metrics.items():
        right.plot(*zip(*series, strict=True), "o-", label=name, linewidth=2.5 if name == curves.main_metric else 1)
    if curves.best_step is not None and curves.metrics:
        right.axvline(curves.best_step, color="tab:green", linestyle="--", alpha=0.7)
        if curves.best_metric is not None:
            right.annotate(f"best: step {curves.best_step}\n{curves.main_metric} {curves.best_metric:.3f}",
                           (curves.best_step, curves.best_metric), textcoords="offset points", xytext=(6, -24),
                           fontsize=8, color="tab:green")
    right.set_xlabel("optimizer step")
    right.set_title("task metric (dev sample)" if curves.metrics else "task metric: set train.eval_steps and a task")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig
