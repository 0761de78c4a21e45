"""train.report_to: wandb and mlflow through accelerate's trackers, offline, next to train_log.jsonl."""

from __future__ import annotations

import json

import pytest

from tasktune.config import ConfigError, load_config
from tasktune.train.loop import train


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "rows.json"
    path.write_text(json.dumps([{"instruction": f"Say {i}.", "input": "", "output": f"{i}."} for i in range(8)]))
    return path


def _cfg(model_dir, data, out, report_to):
    return load_config(None, [f"model.name_or_path={model_dir}", f"data.datasets={data}", f"output.dir={out}",
                              "data.cutoff_len=64", "train.batch_size=4", "train.max_steps=2", "lora.r=4",
                              "train.logging_steps=1", "train.mixed_precision=no", f"train.report_to={report_to}"])


def test_mlflow_and_wandb_record_offline(tiny_llama_dir, rows, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train(_cfg(tiny_llama_dir, rows, out, "jsonl,mlflow,wandb"))
    import mlflow

    mlflow.set_tracking_uri((out / "mlruns").resolve().as_uri())
    runs = mlflow.search_runs(experiment_names=["tasktune"])
    assert len(runs) == 1 and "metrics.loss" in runs.columns and runs["params.train.max_steps"][0] == "2"
    offline = list((out / "wandb").glob("offline-run-*"))
    assert offline and any(offline[0].rglob("*.wandb"))
    assert len([x for x in (out / "train_log.jsonl").read_text().splitlines() if '"loss"' in x]) == 2


def test_none_and_unknown_trackers(tiny_llama_dir, rows, tmp_path):
    out = tmp_path / "none"
    train(_cfg(tiny_llama_dir, rows, out, "none"))
    assert (out / "train_log.jsonl").is_file() and not (out / "mlruns").exists()
    with pytest.raises(ConfigError, match="unknown logger"):
        load_config(None, ["train.report_to=comet"]).train.check()
