"""What the UI knows about run directories: which exist, their status, metrics, adapters and evaluations.

Everything is read from disk (run directories under --runs-dir and the job store), never kept in a page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasktune.ui.curves import run_curves, run_status
from tasktune.ui.jobs import STATE_DIR, Job, JobStore, Runner

RUN_MARKS = ("train_log.jsonl", "adapter", "model", "checkpoints")
HEADLINE_KEYS = ("f1", "precision", "recall", "accuracy", "macro_f1", "exact_match", "bleu", "chrf", "ter")


@dataclass
class UIContext:
    """The server's state: the runs directory, the job store and the runner that starts jobs."""

    runs_dir: Path
    store: JobStore
    runner: Runner | None = None
    examples_dir: Path = Path("examples")

    @classmethod
    def create(cls, runs_dir: str | Path, start_runner: bool = True) -> UIContext:
        runs = Path(runs_dir).resolve()
        runs.mkdir(parents=True, exist_ok=True)
        store = JobStore(runs)
        runner = Runner(store, cwd=Path.cwd()).start() if start_runner else None
        return cls(runs, store, runner)

    def examples(self) -> list[str]:
        return sorted(str(p) for p in self.examples_dir.glob("*.yaml")) if self.examples_dir.is_dir() else []

    def run_dirs(self) -> list[Path]:
        """Run directories under runs_dir (two levels deep) and those of train jobs, newest first."""
        found: set[Path] = set()
        for pattern in ("*/config.yaml", "*/*/config.yaml"):
            for cfg in self.runs_dir.glob(pattern):
                if STATE_DIR not in cfg.parts and any((cfg.parent / m).exists() for m in RUN_MARKS):
                    found.add(cfg.parent.resolve())
        found.update(Path(j.output_dir) for j in self.store.all() if j.kind == "train")
        return sorted(found, key=lambda p: _mtime(p), reverse=True)

    def eval_dirs(self) -> list[Path]:
        """Evaluation outputs (a metrics.json) under runs_dir, newest first."""
        found = {p.parent.resolve() for pattern in ("*/metrics.json", "*/*/metrics.json", "*/*/*/metrics.json")
                 for p in self.runs_dir.glob(pattern) if STATE_DIR not in p.parts}
        for job in self.store.all():
            if job.kind == "eval" and (Path(job.output_dir) / "metrics.json").is_file():
                found.add(Path(job.output_dir))
        return sorted(found, key=lambda p: _mtime(p / "metrics.json"), reverse=True)

    def label(self, path: Path) -> str:
        """A path as shown in pickers: relative to runs_dir when inside it."""
        try:
            return str(path.resolve().relative_to(self.runs_dir))
        except ValueError:
            return str(path)

    def resolve(self, label: str | None) -> Path | None:
        if not label:
            return None
        path = Path(label)
        return (path if path.is_absolute() else self.runs_dir / path).resolve()

    def last_job(self, kind: str) -> Job | None:
        jobs = [j for j in self.store.all() if j.kind == kind]
        running = [j for j in jobs if j.status == "running"]
        return (running or jobs or [None])[-1]

    def job_status(self, run_dir: Path) -> str | None:
        jobs = [j for j in self.store.for_output(run_dir) if j.kind == "train"]
        return jobs[-1].status if jobs else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def run_config(run_dir: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def headline(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return ""
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in HEADLINE_KEYS if isinstance(metrics.get(k), (int, float)))


def adapters(run_dir: Path) -> dict[str, Path]:
    """The trained outputs of a run: final and best, adapter or full model."""
    found = {}
    for name, sub in (("final", ""), ("best", "best")):
        for kind in ("adapter", "model"):
            path = run_dir / sub / kind
            if path.is_dir():
                found[name] = path
                break
    return found


def run_row(ctx: UIContext, run_dir: Path) -> list[Any]:
    """One line of the Runs table."""
    cfg = run_config(run_dir)
    curves = run_curves(run_dir)
    last_loss = curves.train_loss[-1][1] if curves.train_loss else None
    best = f"{curves.main_metric} {curves.best_metric:.3f} @ {curves.best_step}" if curves.best_metric is not None \
        else ""
    evals = sorted(run_dir.glob("eval*/metrics.json"))
    final = headline(read_json(evals[0])) if evals else ""
    task = (cfg.get("task") or {}).get("name") or "sft"
    return [ctx.label(run_dir), run_status(run_dir, ctx.job_status(run_dir)), task,
            (cfg.get("model") or {}).get("name_or_path", ""), curves.last_step,
            round(last_loss, 4) if last_loss is not None else None, best, final]


RUN_COLUMNS = ["run", "status", "task", "model", "step", "last loss", "best (dev sample)", "evaluation"]
