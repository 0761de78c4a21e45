"""train_log.jsonl -> curves, best step, tqdm progress and run status."""

from __future__ import annotations

import json

from tasktune.ui.curves import curves_from_records, plot_curves, progress_from_log, read_records, run_curves, run_status


def write_log(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


RECORDS = [
    {"step": 0, "eval_loss": 2.5},
    {"step": 1, "loss": 2.0, "lr": 1e-3, "tokens_per_s": 10.0},
    {"step": 2, "loss": 1.5, "lr": 1e-3, "tokens_per_s": 10.0},
    {"step": 2, "eval_loss": 1.4, "eval_f1": 0.2, "eval_precision": 0.3, "eval_parse_failure_rate": 0.5},
    {"step": 4, "loss": 1.0},
    {"step": 4, "eval_loss": 1.2, "eval_f1": 0.5, "eval_precision": 0.4, "eval_examples_per_s": 3.0},
    {"step": 6, "eval_f1": 0.4},
]


def test_series_and_best_step(tmp_path):
    write_log(tmp_path / "train_log.jsonl", RECORDS, tail='{"step": 7, "lo')  # a line being written
    curves = run_curves(tmp_path)
    assert curves.train_loss == [(1, 2.0), (2, 1.5), (4, 1.0)]
    assert curves.eval_loss == [(0, 2.5), (2, 1.4), (4, 1.2)]
    assert set(curves.metrics) == {"f1", "precision"} and curves.main_metric == "f1"
    assert (curves.best_step, curves.best_metric, curves.last_step) == (4, 0.5, 6)
    assert plot_curves(curves) is not None


def test_best_json_wins_and_stop_is_seen(tmp_path):
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "best.json").write_text(json.dumps({"step": 2, "eval_f1": 0.2}))
    write_log(tmp_path / "train_log.jsonl", [*RECORDS, {"step": 6, "stopped": True, "checkpoint": "x"}])
    curves = run_curves(tmp_path)
    assert (curves.best_step, curves.best_metric, curves.stopped_at) == (2, 0.2, 6)
    assert run_status(tmp_path) == "stopped"
    assert run_status(tmp_path, "running") == "running"
    (tmp_path / "adapter").mkdir()
    assert run_status(tmp_path) == "finished"


def test_status_without_outputs(tmp_path):
    assert read_records(tmp_path / "nothing.jsonl") == []
    assert run_status(tmp_path) == "incomplete" and run_status(tmp_path, "failed") == "failed"
    assert curves_from_records([]).main_metric is None


def test_progress_from_tqdm():
    text = "train:   0%|          | 0/6 [00:00<?, ?step/s]\rtrain:  33%|███▎      | 2/6 [00:04<00:08,  2.0s/step]"
    assert progress_from_log(text) == {"step": 2, "total": 6, "percent": 33, "elapsed": "00:04", "eta": "00:08"}
    assert progress_from_log("no bar here") is None
