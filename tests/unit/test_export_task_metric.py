"""`tasktune export CONFIG` re-runs the config's task metric on what it exported."""

import json

import yaml

from tasktune.cli import main


def test_export_with_a_task_config_scores_the_exported_model(tiny_llama_dir, tiny_adapter_dir, tmp_path):
    rows = [{"text": f"review number {i} was {'great' if i % 2 else 'awful'}", "label": i % 2} for i in range(6)]
    data = tmp_path / "dev.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_llama_dir), "adapter": str(tiny_adapter_dir)},
        "task": {"name": "classify", "eval_file": str(data), "labels": ["negative", "positive"]},
        "eval": {"batch_size": 3},
        "output": {"dir": str(tmp_path / "run")},
    }))
    out = tmp_path / "export"
    assert main(["export", str(config), "--out", str(out)]) == 0
    report = json.loads((out / "export_report.json").read_text())
    scores = report["metrics"]["float"]
    assert 0.0 <= scores["accuracy"] <= 1.0 and "macro_f1" in scores
    assert scores["parse_failure_rate"] == 0.0  # classify decoding is constrained to the labels by default
    predictions = (tmp_path / "eval-export" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 6
